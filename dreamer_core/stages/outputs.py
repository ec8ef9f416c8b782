"""Output paths, checked before a stage writes anything (part of the stage kit).

- ``check_run_dir``: a run directory a stage may write into: one that does not exist yet, is
  empty, or already looks like a run (then the stage's resume logic decides). A file, a
  dataset directory or an unrelated non-empty directory is refused.
- ``check_folder``: a folder a stage creates or adds to (e.g. ``RUN/eval``): not a file.
- ``check_output_file``: a file a stage writes (replacing it if it exists): the right suffix,
  not a directory.
- ``check_writable``: the path can be created and written (a read-only disk, a folder without
  permission, ``/proc``): probed by creating it, or a temporary file in it, and removing what
  the probe made, so a refused command leaves no trace.

Every refusal is a DreamerError naming the path and what to do instead; nothing is changed.

Imports: runs (artifact names), data.store (what a dataset directory is), errors.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dreamer_core import runs
from dreamer_core.data.store import is_dataset_dir
from dreamer_core.errors import DreamerError

# What marks a directory as a run: its config file (or those of dreamer-core 0.3.0 and earlier),
# metrics, checkpoints, artifacts, identity file.
RUN_MARKERS = (
    runs.WORLD_MODEL, runs.BEHAVIOR, *dict.fromkeys((runs.CONFIG, *runs.LEGACY_CONFIGS.values())),
    runs.METRICS, runs.BEHAVIOR_METRICS, runs.WORLD_MODEL_LATEST.parts[0], "run.json",
)


def looks_like_run(path: Path) -> bool:
    """``path`` holds something only a run writes (see ``RUN_MARKERS``)."""
    return any((Path(path) / name).exists() for name in RUN_MARKERS)


def visible_entries(path: Path) -> list[str]:
    """Names in a directory, hidden ones (``.lock``, ``.DS_Store``) left out."""
    return sorted(p.name for p in Path(path).iterdir() if not p.name.startswith("."))


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + ("..." if len(names) > 5 else "")


def check_run_dir(path: Path | str, flag: str = "--out") -> Path:
    """Refuse a run directory that is a file, a dataset or an unrelated non-empty directory,
    or that cannot be written; return it as a Path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DreamerError(
            f"{flag} {path} is a file, not a run directory. Choose a new directory for {flag} "
            "(e.g. runs/NAME); nothing was changed."
        )
    if is_dataset_dir(path):
        raise DreamerError(
            f"{flag} {path} is a dataset directory, not a run directory: a run written there would mix its "
            f"checkpoints with the data. Pass the dataset as input and choose a new directory for {flag} "
            "(e.g. runs/NAME); nothing was changed."
        )
    if path.is_dir():
        entries = visible_entries(path)
        if entries and not looks_like_run(path):
            raise DreamerError(
                f"{flag} {path} exists and is not a run directory (it holds {_listing(entries)}). Choose a new "
                f"or empty directory for {flag}, or an existing run; nothing was changed."
            )
    check_writable(path, f"{flag} {path}")
    return path


def check_folder(path: Path | str, what: str) -> Path:
    """Refuse a folder a stage creates or adds to (``what`` names it) when it is a file or
    cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DreamerError(
            f"{what} {path} is a file, but it must be a folder. Move or rename the file, then run the "
            "command again; nothing was changed."
        )
    check_writable(path, f"{what} {path}")
    return path


def check_output_file(path: Path | str, suffixes: tuple[str, ...], flag: str = "--out") -> Path:
    """Refuse an output file with another suffix, one that is an existing directory, or one
    whose folder cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise DreamerError(
            f"{flag} must end in {' or '.join(suffixes)} (got {path.name!r}): the suffix picks the file format. "
            f"Use e.g. {flag} {path.with_suffix(suffixes[0])}."
        )
    if path.is_dir():
        raise DreamerError(
            f"{flag} {path} is an existing directory, so no file can be written there. Choose a file name "
            "that is not taken by a directory; nothing was changed."
        )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise DreamerError(
            f"{flag} {path} cannot be written: {parent} is a file, not a folder. Choose another path; "
            "nothing was changed."
        )
    check_writable(parent, f"The folder of {flag} {path}")
    return path


def check_writable(path: Path | str, what: str) -> None:
    """Refuse ``path`` (a directory, existing or not) when it cannot be created or written.

    An existing directory is probed with a temporary file, a missing one by creating it (and
    its missing parents); the probe removes everything it made."""
    path = Path(path)
    missing = []
    existing = path
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise DreamerError(
            f"{what} cannot be created: {existing} is a file, not a folder. Choose another path; "
            "nothing was changed."
        )
    try:
        if missing:
            for folder in reversed(missing):
                folder.mkdir()
            for folder in missing:
                folder.rmdir()
        else:
            fd, tmp = tempfile.mkstemp(prefix=".dreamer-write-test-", suffix=".tmp", dir=path)
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        for folder in missing:  # the probe's own folders (deepest first), if it made them
            try:
                folder.rmdir()
            except OSError:
                pass
        reason = exc.strerror or str(exc)
        raise DreamerError(
            f"{what} cannot be written ({reason}). Choose a path on a writable disk where you have "
            "permission (or fix the folder's permissions); nothing was changed."
        ) from None
