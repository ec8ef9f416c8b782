"""Durable file writes: the bottom layer every module that writes files uses.

``atomic_write_bytes`` writes a file so that readers see the old or the new content, never half
of it (temporary name in the same folder, fsync, rename, fsync of the folder). ``fsync_dir``
makes a rename inside a folder durable. ``import_file`` imports a user's ``.py`` file (envs to
register, an encoder to register) under its stem, once per file.

Imports: the standard library only; nothing of the package.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def import_file(path: Path | str) -> None:
    """Import the Python file ``path`` as the module named by its stem (once per file; a failed
    import leaves nothing in ``sys.modules``). Raises ImportError if it is not a loadable file."""
    path = Path(path).expanduser().resolve()
    existing = sys.modules.get(path.stem)
    if existing is not None and getattr(existing, "__file__", None) == str(path):
        return
    if not path.is_file():
        raise ImportError(f"no file {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a Python module")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = loaded
    try:
        spec.loader.exec_module(loaded)
    except BaseException:
        del sys.modules[path.stem]
        raise
