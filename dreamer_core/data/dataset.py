"""Reading datasets: a read-only index over the closed shards of a dataset directory.

A shard whose data cannot be read (a chunk failing its checksum, a damaged file) raises a
:class:`DatasetError` naming the shard and the column. The message names ``--skip-corrupt``
only where it helps: that flag skips shards whose header cannot be read when the dataset is
opened, and shards whose columns fail when the replay loads them
(:meth:`ColumnStore.from_datasets <dreamer_core.data.storage.ColumnStore.from_datasets>`).

Imports: h5py, numpy, gymnasium, data.schema, data.store, errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from dreamer_core.data import schema, store
from dreamer_core.errors import DatasetError, SpacesMismatchError


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode lives: rows ``start : start + rows`` of ``shard``'s ``steps/`` columns.

    ``policy``: the agent checkpoint that collected it (``dreamer collect --policy RUN``,
    ``--follow``), or None (a random policy, or a shard that records none).
    """

    shard: Path
    start: int
    rows: int
    ret: float
    terminated: bool
    policy: schema.PolicyVersion | None = None

    @property
    def steps(self) -> int:
        return self.rows - 1


class Dataset:
    """A dataset directory opened for reading.

    Args:
        path: the dataset directory written by ``dreamer collect`` (or an import).
        skip_corrupt: skip unreadable shards (listed in ``skipped``) instead of raising; the
            replay loader (``ColumnStore.from_datasets``) also leaves out shards whose columns
            turn out damaged or invalid when it reads them (see :meth:`leave_out`).

    Raises:
        DatasetError: missing directory, no closed shards, a corrupt shard (without
            ``skip_corrupt``), another schema version, or shards with different spaces.
    """

    def __init__(self, path: Path | str, skip_corrupt: bool = False):
        self.path = Path(path)
        self.skip_corrupt = skip_corrupt
        if not self.path.exists():
            raise DatasetError(
                f"No dataset at {self.path}: the path does not exist. Create one with "
                f"`dreamer collect --env ENV_ID --out {self.path}` or check the path."
            )
        if not self.path.is_dir():
            raise DatasetError(
                f"{self.path} is a file, but a dataset is a directory of shard-*.h5 files written "
                "by `dreamer collect`. Pass the dataset directory instead."
            )
        self.shards, self.skipped = store.scan(self.path, skip_corrupt=skip_corrupt)
        self.partial = store.partial_paths(self.path)
        if not self.shards:
            extra = (
                f" It holds {len(self.partial)} unfinished shard(s) left by a collector that was "
                "stopped before closing them; their episodes are lost."
                if self.partial
                else ""
            )
            raise DatasetError(
                f"The dataset {self.path} has no readable shards.{extra} Collect data into it with "
                f"`dreamer collect --env ENV_ID --out {self.path}`."
            )
        first = self.shards[0]
        self.observation_space: gym.spaces.Dict = schema.space_from_json(first.observation_space)
        self.action_space: gym.Space = schema.space_from_json(first.action_space)
        for shard in self.shards[1:]:
            if shard.observation_space != first.observation_space or shard.action_space != first.action_space:
                raise SpacesMismatchError(
                    f"Shards {first.name} and {shard.name} in {self.path} have different spaces "
                    "(they were collected with different env options). Move one of them to another "
                    "dataset directory."
                )
        self.refs = [
            EpisodeRef(self.path / s.name, start, r, ret, term, policy)
            for s in self.shards
            for start, r, ret, term, policy in zip(s.starts, s.rows, s.returns, s.terminated, s.policies())
        ]

    # --- sizes ----------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return len(self.refs)

    @property
    def num_rows(self) -> int:
        return int(sum(r.rows for r in self.refs))

    @property
    def num_steps(self) -> int:
        return self.num_rows - self.num_episodes

    @property
    def env_ids(self) -> list[str]:
        return sorted({s.env_id for s in self.shards})

    @property
    def env_config(self) -> dict[str, Any]:
        """Env options of the newest shard (enough to rebuild the env with make_env)."""
        return self.shards[-1].env_config

    def leave_out(self, shard: Path, reason: str) -> None:
        """Drop a damaged shard's episodes from this view (listed in ``skipped`` with ``reason``).

        Raises:
            DatasetError: no episode is left.
        """
        shard = Path(shard)
        self.refs = [ref for ref in self.refs if ref.shard != shard]
        self.shards = [s for s in self.shards if self.path / s.name != shard]
        if all(path != shard for path, _ in self.skipped):
            self.skipped = [*self.skipped, (shard, reason)]
        if not self.refs:
            raise DatasetError(
                f"Every shard of the dataset {self.path} is damaged or was skipped (last: "
                f"{shard.name}: {reason}). Collect the data again, or restore the shards from a copy."
            )

    # --- reading --------------------------------------------------------------------------

    def load_episode(self, ref: EpisodeRef | int) -> schema.Episode:
        """Read one episode fully into memory."""
        if isinstance(ref, int):
            ref = self.refs[ref]
        try:
            with h5py.File(ref.shard, "r") as f:
                return read_rows(f, ref.start, ref.start + ref.rows, ref.shard)
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(
                f"The episode at rows {ref.start}:{ref.start + ref.rows} of shard {ref.shard} cannot "
                f"be read ({type(exc).__name__}: {exc}). The shard is damaged: "
                f"{store.DAMAGED_SHARD_FIX}"
            ) from None

    def iter_episodes(self, block_bytes: int = 64 << 20) -> Iterator[schema.Episode]:
        """All episodes in order, reading runs of whole episodes of about ``block_bytes``."""
        block_rows = max(1, block_bytes // row_bytes(self.observation_space, self.action_space))
        for shard in self.shards:
            path = self.path / shard.name
            with h5py.File(path, "r") as f:
                for _, episode in episodes_in(f, shard, block_rows, path):
                    yield episode

    def summary(self) -> dict[str, Any]:
        """Figures for ``dreamer data info`` (JSON-able)."""
        returns = np.array([r.ret for r in self.refs], dtype=np.float64)
        lengths = np.array([r.steps for r in self.refs], dtype=np.int64)
        agent_updates = [r.policy.update for r in self.refs if r.policy is not None]
        return {
            "path": str(self.path),
            "env_ids": self.env_ids,
            "policies": sorted({s.policy for s in self.shards}),
            "schema_version": schema.SCHEMA_VERSION,
            "shards": len(self.shards),
            "episodes": self.num_episodes,
            "steps": self.num_steps,
            "terminated_episodes": int(sum(r.terminated for r in self.refs)),
            "return_mean": float(returns.mean()),
            "return_min": float(returns.min()),
            "return_max": float(returns.max()),
            "length_mean": float(lengths.mean()),
            # episodes collected by a trained agent, and the range of its checkpoints' updates
            "agent_episodes": len(agent_updates),
            "agent_updates": [min(agent_updates), max(agent_updates)] if agent_updates else None,
            "observation_space": {k: str(s) for k, s in self.observation_space.spaces.items()},
            "action_space": str(self.action_space),
            "size_bytes": store.dir_size(self.path),
            "partial_shards": [p.name for p in self.partial],
            "skipped_corrupt": [str(p) for p, _ in self.skipped],
        }


def skipped_shards(datasets: Iterable[Dataset]) -> list[dict[str, str]]:
    """The shards ``skip_corrupt`` left out of ``datasets`` (views made from them included, e.g.
    a train and a held-out split), each once, in the order found: ``{"path", "reason"}`` with
    the reason on one line (for a message and a run's config)."""
    found: dict[str, str] = {}
    for dataset in datasets:
        for path, reason in dataset.skipped:
            found.setdefault(str(path), " ".join(reason.split()))
    return [{"path": path, "reason": reason} for path, reason in found.items()]


def read_rows(f: h5py.File, lo: int, hi: int, shard: Path | None = None) -> schema.Episode:
    """Rows ``lo:hi`` of a shard's ``steps/`` columns (an episode when they bound one).

    Raises:
        DatasetError: a column cannot be read (a chunk fails its checksum, or the file is
            damaged); the message names the shard (``shard``, default the file's name) and the column.
    """
    steps = f[schema.STEPS_GROUP]
    shard = Path(f.filename) if shard is None else shard

    def read(name: str) -> np.ndarray:
        try:
            return steps[name][lo:hi]
        except (OSError, KeyError) as exc:
            raise DatasetError(store.damaged_column_message(shard, name, lo, hi, exc)) from None

    obs_names = [f"{schema.OBS_GROUP}/{k}" for k in steps[schema.OBS_GROUP]]
    return schema.Episode(
        obs={name.split("/", 1)[1]: read(name) for name in obs_names},
        action=read(schema.ACTION),
        reward=read(schema.REWARD),
        is_first=read(schema.IS_FIRST),
        is_last=read(schema.IS_LAST),
        is_terminal=read(schema.IS_TERMINAL),
    )


def episodes_in(f: h5py.File, shard: store.ShardInfo, block_rows: int, path: Path | None = None,
                ) -> Iterator[tuple[int, schema.Episode]]:
    """(first row in the shard, episode) for every episode of the open shard ``f``, in order,
    reading runs of whole episodes of up to ``block_rows`` rows (one read per column per run;
    an episode longer than that is one run). ``path`` names the shard in errors (``read_rows``)."""
    i, n = 0, shard.num_episodes
    while i < n:
        j, lo = i + 1, shard.starts[i]
        while j < n and shard.starts[j] + shard.rows[j] - lo <= block_rows:
            j += 1
        columns = read_rows(f, lo, shard.starts[j - 1] + shard.rows[j - 1], path)  # one read per column per run
        for start, rows in zip(shard.starts[i:j], shard.rows[i:j]):
            yield start, _slice(columns, start - lo, start - lo + rows)
        i = j


def row_bytes(observation_space: gym.spaces.Dict, action_space: gym.Space) -> int:
    """Bytes of one row: observations, action, reward and flags (at least 1)."""
    obs = sum(schema.column_bytes(*schema.obs_column_spec(s)) for s in observation_space.spaces.values())
    return max(1, 8 + obs + schema.column_bytes(*schema.action_column_spec(action_space)))  # 8: reward and flags


def _slice(columns: schema.Episode, lo: int, hi: int) -> schema.Episode:
    return schema.Episode(
        obs={k: v[lo:hi] for k, v in columns.obs.items()},
        action=columns.action[lo:hi],
        reward=columns.reward[lo:hi],
        is_first=columns.is_first[lo:hi],
        is_last=columns.is_last[lo:hi],
        is_terminal=columns.is_terminal[lo:hi],
    )
