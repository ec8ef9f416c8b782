"""Writing datasets: per-env episode builders and a crash-safe shard writer.

:class:`EpisodeBuilder` accumulates one env's steps in preallocated arrays (no per-step
allocation) and hands out an :class:`~dreamer_core.data.schema.Episode` when it ends.

:class:`DatasetWriter` appends finished episodes to a dataset directory. Episodes go into
an open shard named ``.shard-<...>.h5.partial``; the shard is closed (flushed, fsynced and
renamed to ``shard-<...>.h5``) every ``shard_episodes`` episodes or ``shard_seconds``
seconds, so a killed collector loses at most the open shard and the episodes in progress.
Existing shards are never opened for writing.

Imports: h5py, numpy, gymnasium, data.schema, data.store, errors.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from dreamer_core import __version__
from dreamer_core.data import schema, store
from dreamer_core.errors import DatasetError, SpacesMismatchError

COMPRESSIONS = ("lzf", "gzip", "none")


class EpisodeBuilder:
    """Collects the rows of one episode for one environment.

    Usage: ``start(obs)`` after a reset, ``add(action, reward, obs)`` after every step,
    ``finish(terminated)`` when the episode ends (or is cut by the collector).
    """

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.Space, capacity: int = 256):
        self._obs_specs = {k: schema.obs_column_spec(s) for k, s in observation_space.spaces.items()}
        self._action_spec = schema.action_column_spec(action_space)
        self._capacity = capacity
        self._alloc(capacity)
        self.rows = 0
        self.ret = 0.0

    def _alloc(self, capacity: int) -> None:
        self.obs = {k: np.zeros((capacity, *shape), dtype) for k, (shape, dtype) in self._obs_specs.items()}
        shape, dtype = self._action_spec
        self.action = np.zeros((capacity, *shape), dtype)
        self.reward = np.zeros(capacity, np.float32)

    def _grow(self) -> None:
        old_obs, old_action, old_reward, n = self.obs, self.action, self.reward, self.rows
        self._capacity *= 2
        self._alloc(self._capacity)
        for k in self.obs:
            self.obs[k][:n] = old_obs[k][:n]
        self.action[:n] = old_action[:n]
        self.reward[:n] = old_reward[:n]

    def start(self, obs: dict[str, np.ndarray]) -> None:
        """Begin an episode at its first observation (row 0: zero action, zero reward)."""
        self.start_from_batch(obs, None)

    def add(self, action: Any, reward: float, obs: dict[str, np.ndarray]) -> None:
        """Append the row reached by ``action``: (obs_t, a_t that led to it, r_t)."""
        self.add_from_batch(action, reward, obs, None)

    def start_from_batch(self, obs: dict[str, np.ndarray], index: int | None) -> None:
        """Like :meth:`start`, reading row ``index`` of batched ``[K, ...]`` observations."""
        self.rows = 0
        self.ret = 0.0
        self.action[0] = 0
        self.reward[0] = 0.0
        self._put_obs(obs, index)
        self.rows = 1

    def add_from_batch(self, action: Any, reward: float, obs: dict[str, np.ndarray], index: int | None) -> None:
        """Like :meth:`add`, reading row ``index`` of batched ``[K, ...]`` observations."""
        if self.rows == self._capacity:
            self._grow()
        t = self.rows
        self.action[t] = action
        self.reward[t] = reward
        self.ret += float(reward)
        self._put_obs(obs, index)
        self.rows = t + 1

    def _put_obs(self, obs: dict[str, np.ndarray], index: int | None) -> None:
        t = self.rows
        if index is None:
            for k, buf in self.obs.items():
                buf[t] = obs[k]
        else:
            for k, buf in self.obs.items():
                buf[t] = obs[k][index]

    def finish(self, terminated: bool) -> schema.Episode:
        """Return the episode so far (copied) as rows; ``terminated`` marks its final row."""
        n = self.rows
        is_first = np.zeros(n, bool)
        is_first[0] = True
        is_last = np.zeros(n, bool)
        is_last[-1] = True
        is_terminal = np.zeros(n, bool)
        is_terminal[-1] = bool(terminated)
        episode = schema.Episode(
            obs={k: v[:n].copy() for k, v in self.obs.items()},
            action=self.action[:n].copy(),
            reward=self.reward[:n].copy(),
            is_first=is_first,
            is_last=is_last,
            is_terminal=is_terminal,
        )
        self.rows = 0
        return episode


def prepare_output_dir(
    path: Path, observation_space: gym.spaces.Dict, action_space: gym.Space
) -> list[store.ShardInfo]:
    """Check that ``path`` may receive shards with these spaces; create it if missing.

    Returns the shards already there. Raises :class:`DatasetError` when ``path`` is a file or a
    non-empty directory that is not a dataset, and :class:`SpacesMismatchError` when the
    dataset's spaces differ. Nothing on disk is changed in either case.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DatasetError(
            f"The output path {path} exists and is a file, not a dataset directory. Choose "
            "another --out path (a new or empty directory, or an existing dataset to add to)."
        )
    if path.is_dir() and not store.is_dataset_dir(path):
        others = [p.name for p in path.iterdir() if not p.name.startswith(".")]
        if others:
            raise DatasetError(
                f"The output path {path} exists and is not a dreamer-core dataset (it holds "
                f"{', '.join(sorted(others)[:5])}{'...' if len(others) > 5 else ''}). Nothing was "
                "written. Choose a new or empty directory for --out, or an existing dataset to add to."
            )
    path.mkdir(parents=True, exist_ok=True)
    shards, _ = store.scan(path)
    if shards:
        existing_obs = schema.space_from_json(shards[0].observation_space)
        existing_act = schema.space_from_json(shards[0].action_space)
        problems = []
        if not schema.spaces_equal(existing_obs, observation_space):
            problems.append(f"observation space {existing_obs} (new data: {observation_space})")
        if not schema.spaces_equal(existing_act, action_space):
            problems.append(f"action space {existing_act} (new data: {action_space})")
        if problems:
            raise SpacesMismatchError(
                f"The dataset {path} holds data of env '{shards[0].env_id}' with "
                f"{' and '.join(problems)}. A dataset keeps one set of spaces so every window "
                "can be batched; nothing was written. Write this data to a new --out directory, "
                "or collect with the same env options (e.g. --pixels, --size) as the existing data."
            )
    return shards


class DatasetWriter:
    """Appends episodes to a dataset directory as crash-safe shards.

    Args:
        path: dataset directory (created if missing; must be empty or a dataset).
        env_id: environment id recorded in every shard.
        env_config: JSON-able env options (so the env can be rebuilt).
        observation_space, action_space: spaces of one env (Dict obs, after make_env).
        policy: a description of the policy that produced the data ("random", a run path...).
        seed: collection seed (None if unseeded).
        shard_episodes: close the open shard after this many episodes.
        shard_seconds: close the open shard when it is this old and holds an episode.
        compression: "lzf" (fast, h5py-native), "gzip" or "none"; applied to image keys.
        clock: monotonic time source (injectable for tests).
    """

    def __init__(
        self,
        path: Path | str,
        env_id: str,
        env_config: dict[str, Any],
        observation_space: gym.spaces.Dict,
        action_space: gym.Space,
        policy: str = "random",
        seed: int | None = None,
        shard_episodes: int = 100,
        shard_seconds: float = 60.0,
        compression: str = "lzf",
        clock: Callable[[], float] = time.monotonic,
    ):
        if compression not in COMPRESSIONS:
            raise DatasetError(f"Unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}.")
        if shard_episodes < 1 or shard_seconds <= 0:
            raise DatasetError("--shard-episodes must be >= 1 and --shard-seconds > 0.")
        self.path = Path(path)
        self.observation_space = observation_space
        self.action_space = action_space
        self.shards = prepare_output_dir(self.path, observation_space, action_space)
        self._header = {
            "format": schema.FORMAT,
            "schema_version": schema.SCHEMA_VERSION,
            "env_id": env_id,
            "env_config": json.dumps(env_config),
            "observation_space": json.dumps(schema.space_to_json(observation_space)),
            "action_space": json.dumps(schema.space_to_json(action_space)),
            "policy": policy,
            "seed": -1 if seed is None else int(seed),
            "dreamer_core_version": __version__,
        }
        self.shard_episodes = shard_episodes
        self.shard_seconds = shard_seconds
        self.compression = None if compression == "none" else compression
        self._clock = clock
        self._file: h5py.File | None = None
        self._tmp_path: Path | None = None
        self._final_path: Path | None = None
        self._opened_at = 0.0
        self._count = 0
        self._pending_steps = 0
        self.episodes_written = 0  # episodes in closed shards, by this writer
        self.steps_written = 0

    # --- public ---------------------------------------------------------------------------

    def add_episode(self, episode: schema.Episode) -> None:
        """Write one finished episode into the open shard; rotate the shard when it is full."""
        episode.validate(self.observation_space, self.action_space)
        with self._disk_errors():
            if self._file is None:
                self._open_shard()
            self._write_episode(episode)
        self._count += 1
        self._pending_steps += episode.steps
        if self._count >= self.shard_episodes:
            self.close_shard()

    def maybe_close_shard(self) -> None:
        """Close the open shard if it is older than ``shard_seconds`` (call this regularly)."""
        if self._file is not None and self._clock() - self._opened_at >= self.shard_seconds:
            self.close_shard()

    def close_shard(self) -> None:
        """Flush, fsync and rename the open shard, then update the manifest."""
        if self._file is None:
            return
        assert self._tmp_path is not None and self._final_path is not None
        with self._disk_errors():
            self._file.attrs["num_episodes"] = self._count
            self._file.flush()
            self._file.close()
            self._file = None
            with open(self._tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp_path, self._final_path)
            store.fsync_dir(self.path)
            self.shards.append(store.read_shard_info(self._final_path))
            store.write_manifest(self.path, self.shards)
        self.episodes_written += self._count
        self.steps_written += self._pending_steps
        self._tmp_path = self._final_path = None

    def close(self) -> None:
        """Close the open shard (if any). Safe to call twice."""
        self.close_shard()

    def discard(self) -> None:
        """Drop the open shard without renaming it (used after an error)."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:
                pass
            self._file = None
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)
            self._tmp_path = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # after an error (or a hard interrupt) the open shard's state is unknown: drop it
            self.discard()

    # --- internals ------------------------------------------------------------------------

    def _open_shard(self) -> None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        name = f"{schema.SHARD_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}{schema.SHARD_SUFFIX}"
        self._final_path = self.path / name
        self._tmp_path = self.path / f".{name}{schema.PARTIAL_SUFFIX}"
        self._file = h5py.File(self._tmp_path, "w")
        for key, value in self._header.items():
            self._file.attrs[key] = value
        self._file.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self._file.create_group(schema.EPISODES_GROUP)
        self._opened_at = self._clock()
        self._count = 0
        self._pending_steps = 0

    def _write_episode(self, episode: schema.Episode) -> None:
        assert self._file is not None
        group = self._file[schema.EPISODES_GROUP].create_group(f"{self._count:06d}")
        group.attrs["rows"] = episode.rows
        group.attrs["steps"] = episode.steps
        group.attrs["return"] = episode.ret
        group.attrs["terminated"] = episode.terminated
        obs_group = group.create_group(schema.OBS_GROUP)
        for key, value in episode.obs.items():
            if value.ndim == 4:  # image: chunk by time so windows read few chunks
                chunks = (min(len(value), 32), *value.shape[1:])
                obs_group.create_dataset(key, data=value, chunks=chunks, compression=self.compression)
            else:
                obs_group.create_dataset(key, data=value.astype(np.float32, copy=False))
        group.create_dataset(schema.ACTION, data=episode.action)
        group.create_dataset(schema.REWARD, data=episode.reward.astype(np.float32, copy=False))
        for flag in schema.FLAGS:
            group.create_dataset(flag, data=getattr(episode, flag).astype(bool, copy=False))

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        """Turn 'no space left' into a clear DatasetError, discarding only the open shard."""
        try:
            yield
        except OSError as exc:
            if not _is_no_space(exc):
                raise
            lost = self._count
            self.discard()
            raise DatasetError(
                f"No space left on device while writing to {self.path}. The {len(self.shards)} "
                f"shard(s) already closed there are intact; the open shard ({lost} episode(s)) was "
                "discarded. Free disk space or choose an --out directory on another disk, then run "
                "the command again (collecting into an existing dataset adds shards and never "
                "rewrites one)."
            ) from None


def _is_no_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(exc) or "errno = 28" in str(exc)
