"""Dataset directories: shard discovery, shard headers, the manifest, atomic files.

A dataset is a directory of closed shards (``shard-*.h5``) plus ``dataset.json``, a
manifest that caches each shard's header and per-episode summary. The manifest is derived
data: any shard it does not know (or whose size or mtime changed) is scanned again, so a
crash between renaming a shard and updating the manifest loses nothing. Each entry carries a
SHA-256 ``digest`` of its own fields; an entry whose digest does not match (the file was
edited by hand or by another tool) or that has none is not trusted either: the shard is
scanned again. That costs one hash of a few kilobytes of JSON per shard on open, instead of
opening every shard to cross-check its episode index. After such a rescan the manifest is
rewritten where the directory is writable, so an old manifest (entries without digests) gets
its digests on the first open and later opens read no shard.

Several writers may share a dataset directory. The manifest is never the list of shards (the
shard files are): each writer rewrites it atomically with :func:`merge_manifest`, its own
shards plus the entries of the current manifest for shards it does not know, so a writer
does not drop the others' entries. Two writers racing on it (read, read, write, write) can
still drop the first one's new entry; readers then rescan that shard, and lose nothing.

A manifest entry also holds the shard's per-episode agent checkpoints (``policy_updates``,
``policy_world_model_updates``, ``policy_digests``; None for a shard without those optional
columns). An entry without these keys, written before they existed, is rescanned once like
an entry without a digest.

Also here: :func:`disk_errno`, the one test for "the disk refused the write" (full, quota,
read-only, permission) that the writer and the Minari export share.

Both the writer and the reader build on this module. Imports: h5py, numpy, schema, errors,
files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dreamer_core.data import schema
from dreamer_core.errors import DatasetError
from dreamer_core.files import atomic_write_bytes


@dataclass
class ShardInfo:
    """Header and per-episode summary of one closed shard."""

    name: str
    size: int
    mtime_ns: int
    schema_version: int
    env_id: str
    env_config: dict[str, Any]
    observation_space: dict[str, Any]
    action_space: dict[str, Any]
    policy: str
    seed: int | None
    created: str
    dreamer_core_version: str
    starts: list[int] = field(default_factory=list)  # first row of each episode in steps/
    rows: list[int] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    # The agent checkpoint of each episode (schema.POLICY_COLUMNS); None: the shard has none.
    policy_updates: list[int] | None = None
    policy_world_model_updates: list[int] | None = None
    policy_digests: list[str] | None = None

    @property
    def num_episodes(self) -> int:
        return len(self.rows)

    @property
    def num_rows(self) -> int:
        return int(sum(self.rows))

    @property
    def num_steps(self) -> int:
        return self.num_rows - self.num_episodes

    def policies(self) -> list[schema.PolicyVersion | None]:
        """The agent checkpoint each episode was collected with (None: none recorded)."""
        if self.policy_updates is None or self.policy_world_model_updates is None or self.policy_digests is None:
            return [None] * self.num_episodes
        return [schema.PolicyVersion.from_columns(u, w, d) for u, w, d in
                zip(self.policy_updates, self.policy_world_model_updates, self.policy_digests, strict=True)]


def shard_paths(root: Path) -> list[Path]:
    """Closed shards of a dataset, in name order (names start with a UTC timestamp)."""
    return sorted(p for p in Path(root).glob(f"{schema.SHARD_PREFIX}*{schema.SHARD_SUFFIX}") if p.is_file())


def partial_paths(root: Path) -> list[Path]:
    """Shards left unfinished by a collector that was killed (never read)."""
    return sorted(Path(root).glob(f".{schema.SHARD_PREFIX}*{schema.PARTIAL_SUFFIX}"))


def is_dataset_dir(root: Path) -> bool:
    root = Path(root)
    return root.is_dir() and ((root / schema.MANIFEST_NAME).exists() or bool(shard_paths(root)))


def read_shard_info(path: Path) -> ShardInfo:
    """Read a shard's header and episode summaries; raise DatasetError when it is unreadable.

    The schema version is checked first, so a shard from another version says so instead of
    failing on a missing column.
    """
    path = Path(path)
    stat = path.stat()
    try:
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            if attrs.get("format") != schema.FORMAT:
                raise DatasetError(
                    f"{path} is not a dreamer-core shard (its 'format' attribute is "
                    f"{attrs.get('format')!r}). Move it out of the dataset directory, or use "
                    "`dreamer data import-minari` if it is a Minari dataset."
                )
            version = int(attrs["schema_version"])
            if version != schema.SCHEMA_VERSION:
                raise DatasetError(
                    f"{path} was written with dataset schema version {version} by dreamer-core "
                    f"{attrs.get('dreamer_core_version', '?')}, but this dreamer-core reads version "
                    f"{schema.SCHEMA_VERSION}. Read it with the dreamer-core version that wrote it "
                    "and convert it (e.g. `dreamer data export-minari` there, then `dreamer data "
                    "import-minari` here), or collect the data again."
                )
            info = ShardInfo(
                name=path.name,
                size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
                schema_version=version,
                env_id=str(attrs["env_id"]),
                env_config=json.loads(attrs["env_config"]),
                observation_space=json.loads(attrs["observation_space"]),
                action_space=json.loads(attrs["action_space"]),
                policy=str(attrs["policy"]),
                seed=None if int(attrs["seed"]) < 0 else int(attrs["seed"]),
                created=str(attrs["created"]),
                dreamer_core_version=str(attrs["dreamer_core_version"]),
            )
            index = f[schema.EPISODES_GROUP]
            info.starts = [int(x) for x in index["start"][()]]
            info.rows = [int(x) for x in index["rows"][()]]
            info.returns = [float(x) for x in index["return"][()]]
            info.terminated = [bool(x) for x in index["terminated"][()]]
            if schema.POLICY_UPDATE in index:
                info.policy_updates = [int(x) for x in index[schema.POLICY_UPDATE][()]]
                info.policy_world_model_updates = [int(x) for x in index[schema.POLICY_WORLD_MODEL_UPDATE][()]]
                info.policy_digests = [bytes(x).decode() for x in index[schema.POLICY_DIGEST][()]]
            _check_columns(f, info)
    except DatasetError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError on damaged files
        raise DatasetError(
            f"Shard {path} is corrupt or truncated and cannot be read ({type(exc).__name__}: "
            f"{exc}). Move the file out of the dataset directory (or restore it from a copy); "
            "`dreamer data info`, `dreamer train-world-model` and `dreamer train-behavior` read "
            "the rest of the dataset without it when given --skip-corrupt."
        ) from None
    return info


# What to do about a shard whose data fails when read (every command that reads data).
DAMAGED_SHARD_FIX = (
    "move the shard out of the dataset directory (or restore it from a copy) and run the command "
    "again; the other shards are not affected."
)


def damaged_column_message(shard: Path, column: str, lo: int, hi: int, exc: BaseException) -> str:
    """The message for a column of ``shard`` whose rows ``lo:hi`` cannot be read."""
    text = str(exc)
    if "filter returned failure" in text:  # Fletcher-32 checksum (or decompression) failed
        why = ("a chunk fails its checksum or cannot be decompressed: the file changed on disk "
               "after it was written, e.g. a disk or copy error")
    else:
        why = f"{type(exc).__name__}: {text}"
    return (
        f"Shard {shard} is damaged: its column steps/{column} cannot be read at rows {lo}:{hi} "
        f"({why}). To go on, {DAMAGED_SHARD_FIX}"
    )


def _check_columns(f: h5py.File, info: ShardInfo) -> None:
    """The episode index must tile the stored rows exactly, and every column be that long."""
    starts, rows = np.asarray(info.starts, np.int64), np.asarray(info.rows, np.int64)
    total = int(rows.sum())
    if len(starts) != len(rows) or np.any(rows < 1) or not np.array_equal(starts, np.cumsum(rows) - rows):
        raise ValueError("the episode index does not tile the stored rows")
    for name, values in ((schema.POLICY_UPDATE, info.policy_updates),
                         (schema.POLICY_WORLD_MODEL_UPDATE, info.policy_world_model_updates),
                         (schema.POLICY_DIGEST, info.policy_digests)):
        if values is not None and len(values) != len(rows):
            raise ValueError(f"episodes/{name} has {len(values)} entries for {len(rows)} episodes")
    steps = f[schema.STEPS_GROUP]
    columns = {name: steps[name] for name in schema.COLUMNS}
    columns.update({f"obs/{k}": v for k, v in steps[schema.OBS_GROUP].items()})
    for name, column in columns.items():
        if column.shape[0] != total:
            raise ValueError(f"column {name} has {column.shape[0]} rows, the episode index {total}")


def read_manifest(root: Path) -> dict[str, Any]:
    """The cached manifest, or an empty one when absent or unreadable (it is derived data)."""
    path = Path(root) / schema.MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"shards": {}}
    if not isinstance(data, dict) or not isinstance(data.get("shards"), dict):
        return {"shards": {}}
    return data


def write_manifest(root: Path, shards: list[ShardInfo]) -> None:
    """Atomically rewrite the manifest for the given shards (each entry with its digest)."""
    first = shards[0] if shards else None
    data = {
        "format": schema.FORMAT,
        "schema_version": schema.SCHEMA_VERSION,
        "env_ids": sorted({s.env_id for s in shards}),
        "observation_space": first.observation_space if first else None,
        "action_space": first.action_space if first else None,
        "shards": {s.name: {**vars(s), "digest": entry_digest(vars(s))} for s in shards},
    }
    atomic_write_bytes(Path(root) / schema.MANIFEST_NAME, json.dumps(data, indent=1).encode())


def merge_manifest(root: Path, shards: list[ShardInfo]) -> None:
    """Rewrite the manifest with ``shards`` (a writer's own, up to date) plus the current
    entries of the other shards in ``root`` (closed by other writers), atomically.

    Shards no longer on disk are left out; a shard neither in ``shards`` nor in the
    manifest is left for readers to rescan (the manifest is derived data, see the module
    docstring)."""
    root = Path(root)
    known = {s.name for s in shards}
    cached = read_manifest(root).get("shards", {})
    on_disk = shard_paths(root)
    names = {path.name for path in on_disk}
    merged = [s for s in shards if s.name in names]
    for path in on_disk:
        if path.name in known:
            continue
        try:
            info = _cached_info(cached.get(path.name), path, path.stat())
        except OSError:  # moved away meanwhile
            continue
        if info is not None:
            merged.append(info)
    write_manifest(root, sorted(merged, key=lambda s: s.name))


def entry_digest(fields: dict[str, Any]) -> str:
    """SHA-256 of a manifest entry's fields (everything but the digest itself)."""
    fields = {k: v for k, v in fields.items() if k != "digest"}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _cached_info(entry: Any, path: Path, stat: Any) -> ShardInfo | None:
    """The manifest's ShardInfo for ``path`` when the entry is current and untouched, else None."""
    if not isinstance(entry, dict) or entry.get("name") != path.name:
        return None
    if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
        return None  # the shard changed (or was replaced) since the entry was written
    if entry.get("digest") != entry_digest(entry):
        return None  # edited, or written before entries had digests: rescan the shard
    if "policy_updates" not in entry:
        return None  # written before entries held the agent checkpoints: rescan the shard
    try:
        return ShardInfo(**{k: v for k, v in entry.items() if k != "digest"})
    except TypeError:
        return None  # written by another layout


def scan(root: Path, skip_corrupt: bool = False) -> tuple[list[ShardInfo], list[tuple[Path, str]]]:
    """Headers of every closed shard, from the manifest where it is current.

    Returns:
        (shards in name order, skipped corrupt shards as (path, reason)). Without
        ``skip_corrupt`` the first corrupt shard raises :class:`DatasetError`.
    """
    cached = read_manifest(root).get("shards", {})
    shards: list[ShardInfo] = []
    skipped: list[tuple[Path, str]] = []
    rescanned = False
    for path in shard_paths(root):
        info = _cached_info(cached.get(path.name), path, path.stat())
        if info is not None:
            shards.append(info)
            continue
        try:
            shards.append(read_shard_info(path))
            rescanned = True
        except DatasetError as exc:
            if not skip_corrupt or "schema version" in str(exc):
                raise
            skipped.append((path, str(exc)))
    if rescanned:
        _refresh_manifest(Path(root), shards)
    return shards, skipped


def _refresh_manifest(root: Path, shards: list[ShardInfo]) -> None:
    """Rewrite the manifest (atomically) after shards had to be read because their entries were
    missing, stale or without a digest (as older versions wrote them), so the next open reads
    none of them. Left as it is where the directory cannot be written: a read-only dataset
    opens all the same, rescanning as before (the manifest is derived data)."""
    if not os.access(root, os.W_OK):
        return
    try:
        write_manifest(root, shards)
    except OSError:
        pass


def dir_size(root: Path) -> int:
    return int(sum(p.stat().st_size for p in Path(root).iterdir() if p.is_file()))


# --- disk errors ------------------------------------------------------------------------------

# What the disk answers when a write cannot happen: full, over quota, read-only, not allowed.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


class WriteRefusedError(DatasetError):
    """The disk refused to store a shard or the manifest (full, quota, read-only, permission).

    ``state`` is the message up to its advice (what happened, what is kept) and ``code`` the
    errno, so that a command that is continued differently (``dreamer train --resume``) can give
    its own advice."""

    def __init__(self, state: str, code: int, advice: str):
        super().__init__(f"{state} {advice}")
        self.state, self.code = state, code


def disk_errno(exc: BaseException) -> int | None:
    """The errno of ``exc`` when the disk refused a write (one of ``DISK_ERRNOS``), else None.

    Python raises ``OSError`` with ``errno`` set. h5py raises ``OSError`` for some calls and
    ``RuntimeError`` (flush, close) or ``ValueError`` (creating a group) for others, and HDF5
    puts the system's errno only into the message, as
    ``errno = 28, error message = 'No space left on device'``.
    """
    if not isinstance(exc, Exception):
        return None
    text = str(exc)
    codes = [exc.errno] if isinstance(exc, OSError) and exc.errno is not None else []
    codes += [int(code) for code in _ERRNO_IN_TEXT.findall(text)]
    if "No space left on device" in text:
        codes.append(errno.ENOSPC)
    return next((code for code in codes if code in DISK_ERRNOS), None)


def describe_disk_error(code: int, path: Path) -> str:
    """What went wrong, for a message: the disk's free space for ENOSPC, else the errno's meaning."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(path)
        where = "" if free is None else f" ({format_bytes(free)} free there)"
        what = "No space left on device" if code == errno.ENOSPC else "Disk quota exceeded"
        return f"{what} while writing to {path}{where}"
    if code == errno.EROFS:
        return f"The file system of {path} is read-only"
    return f"Permission denied while writing to {path}"


def disk_error_fix(code: int) -> str:
    """How to get past the disk error ``code`` (a sentence)."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "Free disk space, or choose a directory on another disk"
    if code == errno.EROFS:
        return "Choose a directory on a writable disk"
    return "Choose a directory you may write to, or fix its permissions"


def discard_h5_file(f: h5py.File, path: Path | None, handles: dict[str, Any] | None = None) -> None:
    """Close an HDF5 file open for writing whose content is thrown away; nothing it writes can fail.

    Closing flushes HDF5's caches to the file. After a full disk failed a write, that flush
    fails too, and HDF5 keeps a half-closed file that crashes the interpreter at exit. So the
    file's descriptor is first pointed at an anonymous in-memory file (Linux), where the last
    writes land and vanish; elsewhere the file is truncated, which gives its space back for
    them. Then the file is flushed once: a write that failed inside a flush (``Dataset.flush``
    in particular) leaves HDF5's metadata cache mid-flush, and closing it from that state
    crashes (SIGSEGV or SIGBUS); a flush that can write completes it. ``handles`` (open
    datasets of the file, held by the caller) are dropped after that, then the file is closed.
    The caller removes ``path``.
    """
    try:
        if f.id.valid and not _redirect_to_memory(f) and path is not None:
            os.truncate(path, 0)
    except Exception:
        pass
    try:
        if f.id.valid:
            f.flush()  # may report the interrupted flush; what matters is the state it leaves
    except Exception:
        pass
    if handles is not None:
        handles.clear()  # their last references go here; their cached chunks go nowhere now
    try:
        if f.id.valid:
            f.close()
    except Exception:
        pass


def _redirect_to_memory(f: h5py.File) -> bool:
    """Point the file's descriptor at an anonymous memory file; False where that is not possible."""
    if not hasattr(os, "memfd_create") or f.driver != "sec2":
        return False
    handle = f.id.get_vfd_handle()
    if not isinstance(handle, int) or handle < 0:
        return False
    scratch = os.memfd_create("dreamer-discarded-h5")
    try:
        os.dup2(scratch, handle)
    finally:
        os.close(scratch)
    return True


def format_bytes(n: int) -> str:
    """``n`` bytes for a message: MiB from 1 MiB up, else KiB."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _free_bytes(path: Path) -> int | None:
    path = Path(path)
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None
