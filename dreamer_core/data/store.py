"""Dataset directories: shard discovery, shard headers, the manifest, atomic files.

A dataset is a directory of closed shards (``shard-*.h5``) plus ``dataset.json``, a
manifest that caches each shard's header and per-episode summary. The manifest is derived
data: any shard it does not know (or whose size or mtime changed) is scanned again, so a
crash between renaming a shard and updating the manifest loses nothing.

Both the writer and the reader build on this module. Imports: h5py, numpy, schema, io.
"""

from __future__ import annotations

import json
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

    @property
    def num_episodes(self) -> int:
        return len(self.rows)

    @property
    def num_rows(self) -> int:
        return int(sum(self.rows))

    @property
    def num_steps(self) -> int:
        return self.num_rows - self.num_episodes


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
            _check_columns(f, info)
    except DatasetError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError on damaged files
        raise DatasetError(
            f"Shard {path} is corrupt or truncated and cannot be read ({type(exc).__name__}: "
            f"{exc}). Pass --skip-corrupt to read the rest of the dataset without it, or move "
            "the file out of the dataset directory."
        ) from None
    return info


def _check_columns(f: h5py.File, info: ShardInfo) -> None:
    """The episode index must tile the stored rows exactly, and every column be that long."""
    starts, rows = np.asarray(info.starts, np.int64), np.asarray(info.rows, np.int64)
    total = int(rows.sum())
    if len(starts) != len(rows) or np.any(rows < 1) or not np.array_equal(starts, np.cumsum(rows) - rows):
        raise ValueError("the episode index does not tile the stored rows")
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
    """Atomically rewrite the manifest for the given shards."""
    first = shards[0] if shards else None
    data = {
        "format": schema.FORMAT,
        "schema_version": schema.SCHEMA_VERSION,
        "env_ids": sorted({s.env_id for s in shards}),
        "observation_space": first.observation_space if first else None,
        "action_space": first.action_space if first else None,
        "shards": {s.name: vars(s) for s in shards},
    }
    atomic_write_bytes(Path(root) / schema.MANIFEST_NAME, json.dumps(data, indent=1).encode())


def scan(root: Path, skip_corrupt: bool = False) -> tuple[list[ShardInfo], list[tuple[Path, str]]]:
    """Headers of every closed shard, from the manifest where it is current.

    Returns:
        (shards in name order, skipped corrupt shards as (path, reason)). Without
        ``skip_corrupt`` the first corrupt shard raises :class:`DatasetError`.
    """
    cached = read_manifest(root).get("shards", {})
    shards: list[ShardInfo] = []
    skipped: list[tuple[Path, str]] = []
    for path in shard_paths(root):
        entry = cached.get(path.name)
        stat = path.stat()
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            try:
                shards.append(ShardInfo(**entry))
                continue
            except TypeError:
                pass  # manifest written by another layout: rescan the shard
        try:
            shards.append(read_shard_info(path))
        except DatasetError as exc:
            if not skip_corrupt or "schema version" in str(exc):
                raise
            skipped.append((path, str(exc)))
    return shards, skipped


def dir_size(root: Path) -> int:
    return int(sum(p.stat().st_size for p in Path(root).iterdir() if p.is_file()))
