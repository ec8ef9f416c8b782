"""Writing datasets: per-env episode builders and a crash-safe shard writer.

:class:`EpisodeBuilder` accumulates one env's steps in preallocated arrays (no per-step
allocation) and hands out an :class:`~dreamer_core.data.schema.Episode` when it ends.

:class:`DatasetWriter` appends finished episodes to a dataset directory. Episodes are
buffered in memory and appended in batches (``flush_bytes``) to an open shard named
``.shard-<...>.h5.partial``; the shard is closed (flushed, fsynced and renamed to
``shard-<...>.h5``) every ``shard_episodes`` episodes, ``shard_seconds`` seconds or
``shard_bytes`` bytes, so a killed collector loses at most the open shard and the episodes in
progress. Existing shards are never opened for writing. Batching matters: HDF5 spends about
0.15 ms per dataset it creates or resizes, more than a CartPole episode takes to play.

Several writers may add to one dataset at once (collectors on many machines, and the online
run's own writer, sharing a directory): a shard's name holds the UTC time to the microsecond
and 32 random bits, and its ``.partial`` file is created exclusively (a name already taken,
open or closed, is never reused), so no writer can overwrite another's shard. The manifest is
derived data; each writer rewrites it with its own shards plus the current entries of the
others (``store.merge_manifest``), and readers rescan any shard it does not list, so two
writers racing on it can cost a rescan, never an episode.

An episode may carry the agent checkpoint that collected it (``add_episode(episode, policy)``,
a :class:`~dreamer_core.data.schema.PolicyVersion`): stored in the shard's optional
``episodes/policy_*`` columns (data/schema.py).

Every column is written with HDF5's per-chunk Fletcher-32 checksum, so a shard damaged on
disk later fails loudly on read instead of feeding wrong numbers to training.

Bad input is refused with a :class:`DatasetError` and never half-stored: an episode holding
NaN or inf (in an observation, the reward or a float action) is refused after the episodes
finished before it are closed into a shard; a disk that is full, read-only or not writable
discards only the shard being written (its ``.partial`` file is removed, closed shards stay as
they are; a dataset directory the writer created is removed again while it holds no shard) and
says how much space is left.

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

from dreamer_core import __version__, files
from dreamer_core.data import schema, store
from dreamer_core.errors import DatasetError, SpacesMismatchError

COMPRESSIONS = ("lzf", "gzip", "none")
CHECKSUM = True  # Fletcher-32 per chunk on every column of new shards


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
        episode = schema.Episode(
            {k: v[:n].copy() for k, v in self.obs.items()},
            self.action[:n].copy(),
            self.reward[:n].copy(),
            *schema.episode_flags(n, terminated),
        )
        self.rows = 0
        return episode


class EpisodeRecorder:
    """The episodes of K envs stepped together by an autoresetting pool (stage 01 and the online
    loop record with it).

    The pool resets env i on the step after its episode ended and returns the reset observation
    there; that step is no env step: it starts env i's next episode. ``is_first`` ``[K]`` says
    whose current observation starts an episode (a stateful policy resets its latent there).
    """

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.Space, obs: dict[str, np.ndarray],
                 keep_rows: bool = False):
        """``obs``: the pool's batched ``[K, ...]`` observations after its reset. ``keep_rows``:
        also keep every new row (of episodes in progress too) for :meth:`take_rows`."""
        K = len(next(iter(obs.values())))
        self.builders = [EpisodeBuilder(observation_space, action_space) for _ in range(K)]
        self._keep_rows = keep_rows
        self._kept_rows: list[dict[str, Any]] = []  # copies of the rows not yet taken, in order
        for i, builder in enumerate(self.builders):
            builder.start_from_batch(obs, i)
            self._kept(i, last=False, terminal=False)
        self.is_first = np.ones(K, dtype=bool)
        self._resetting = np.zeros(K, dtype=bool)  # env i ended last step: this step returns its reset obs
        self.finished_envs: list[int] = []  # the env of each episode the last record() finished

    def record(self, actions: np.ndarray, obs: dict[str, np.ndarray], reward: np.ndarray, terminated: np.ndarray,
               truncated: np.ndarray, limit: int | None = None) -> tuple[int, list[schema.Episode]]:
        """Add one pool step. Returns the env steps recorded and the episodes it finished (in env
        order; their envs in ``finished_envs``). ``limit``: record at most this many env steps;
        the rest of the batch is dropped."""
        self.is_first = self._resetting.copy()
        steps, finished = 0, []
        self.finished_envs = []
        for i, builder in enumerate(self.builders):
            if self._resetting[i]:
                builder.start_from_batch(obs, i)
                self._resetting[i] = False
                self._kept(i, last=False, terminal=False)
                continue
            if limit is not None and steps >= limit:
                continue
            builder.add_from_batch(actions[i], reward[i], obs, i)
            steps += 1
            ended = bool(terminated[i] or truncated[i])
            self._kept(i, last=ended, terminal=bool(terminated[i]))
            if ended:
                self._resetting[i] = True
                finished.append(builder.finish(bool(terminated[i])))
                self.finished_envs.append(i)
        return steps, finished

    def _kept(self, env: int, last: bool, terminal: bool) -> None:
        """Note env ``env``'s newest row for :meth:`take_rows` (when keeping rows)."""
        if self._keep_rows:
            builder = self.builders[env]
            t = builder.rows - 1
            self._kept_rows.append({
                "env": env, "obs": {k: v[t].copy() for k, v in builder.obs.items()},
                schema.ACTION: builder.action[t].copy(),
                schema.REWARD: builder.reward[t], schema.IS_FIRST: t == 0, schema.IS_LAST: last,
                schema.IS_TERMINAL: terminal,
            })

    def take_rows(self) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The rows recorded since the last call, in the order they happened, and forget them:
        (env index ``[n]``, obs ``{key: [n, ...]}``, columns ``{name: [n, ...]}`` of
        ``schema.COLUMNS``), what ``SequenceSampler.add_rows`` takes. Needs ``keep_rows``."""
        if not self._keep_rows:
            raise ValueError("EpisodeRecorder(keep_rows=True) keeps rows for take_rows()")
        rows, self._kept_rows = self._kept_rows, []
        builder = self.builders[0]
        envs = np.array([r["env"] for r in rows], np.int64)
        obs = {k: np.stack([r["obs"][k] for r in rows]) if rows else np.zeros((0, *v.shape[1:]), v.dtype)
               for k, v in builder.obs.items()}
        action = builder.action
        columns = {
            schema.ACTION: (np.stack([r[schema.ACTION] for r in rows]) if rows
                            else np.zeros((0, *action.shape[1:]), action.dtype)),
            schema.REWARD: np.array([r[schema.REWARD] for r in rows], np.float32),
            **{flag: np.array([r[flag] for r in rows], bool) for flag in schema.FLAGS},
        }
        return envs, obs, columns

    def in_progress(self) -> list[schema.Episode]:
        """The episodes under way with at least one step, cut here (truncated: real data, ended by
        the recorder's owner, not by the env)."""
        return [episode for _, episode in self.in_progress_items()]

    def in_progress_items(self) -> list[tuple[int, schema.Episode]]:
        """Like :meth:`in_progress`, each episode with its env's index."""
        return [(i, builder.finish(terminated=False)) for i, builder in enumerate(self.builders) if builder.rows > 1]


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
    if path.is_dir() and not os.access(path, os.W_OK):
        code = errno.EROFS if _read_only(path) else errno.EACCES
        raise DatasetError(
            f"{store.describe_disk_error(code, path)}, so no shard can be written there; nothing "
            f"was changed. {store.disk_error_fix(code)}, then run the command again."
        )
    if path.is_dir() and not store.is_dataset_dir(path):
        others = [p.name for p in path.iterdir() if not p.name.startswith(".")]
        if others:
            raise DatasetError(
                f"The output path {path} exists and is not a dreamer-core dataset (it holds "
                f"{', '.join(sorted(others)[:5])}{'...' if len(others) > 5 else ''}). Nothing was "
                "written. Choose a new or empty directory for --out, or an existing dataset to add to."
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        code = store.disk_errno(exc)
        if code is None:
            raise
        raise DatasetError(
            f"{store.describe_disk_error(code, path)}: the dataset directory cannot be created "
            f"({exc.strerror}); nothing was changed. {store.disk_error_fix(code)}, then run the "
            "command again."
        ) from None
    shards, _ = store.scan(path)
    if shards:
        problems = schema.space_mismatches(
            schema.space_from_json(shards[0].observation_space), schema.space_from_json(shards[0].action_space),
            observation_space, action_space,
        )
        if problems:
            raise SpacesMismatchError(
                f"The dataset {path} holds data of env '{shards[0].env_id}'; the new data has "
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
        shard_bytes: close the open shard once this many bytes (uncompressed) went into it.
        flush_bytes: append buffered episodes to the open shard once they hold this many bytes.
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
        shard_bytes: int = 1 << 30,
        flush_bytes: int = 16 << 20,
        clock: Callable[[], float] = time.monotonic,
    ):
        if compression not in COMPRESSIONS:
            raise DatasetError(f"Unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}.")
        if shard_episodes < 1 or shard_seconds <= 0:
            raise DatasetError("--shard-episodes must be >= 1 and --shard-seconds > 0.")
        self.path = Path(path)
        self.observation_space = observation_space
        self.action_space = action_space
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.shards = prepare_output_dir(self.path, observation_space, action_space)
        self._created = missing  # folders this writer made (deepest first): removed again if left empty
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
        self._columns: dict[str, h5py.Dataset] = {}  # the open shard's datasets, held open
        self._tmp_path: Path | None = None
        self._final_path: Path | None = None
        self._opened_at = 0.0
        self.shard_bytes = shard_bytes
        self.flush_bytes = flush_bytes
        self._pending: list[schema.Episode] = []  # finished, not yet in the open shard
        self._pending_policies: list[schema.PolicyVersion | None] = []  # their agent checkpoints
        self._shard_episodes = 0  # episodes already written into the open shard's file
        self._pending_bytes = 0
        self._shard_bytes = 0
        self._shard_rows = 0
        self._count = 0  # episodes in the open shard, including pending ones
        self._pending_steps = 0
        self.episodes_written = 0  # episodes in closed shards, by this writer
        self.steps_written = 0

    # --- public ---------------------------------------------------------------------------

    def add_episode(self, episode: schema.Episode, policy: schema.PolicyVersion | None = None) -> None:
        """Queue one finished episode for the open shard; flush and rotate when limits say so.

        ``policy``: the agent checkpoint that collected the episode (None: not an agent's, or
        not known), stored with it.

        Raises:
            ValueError: the episode breaks the row contract or the spaces (a caller's bug).
            DatasetError: the episode holds NaN or inf (the episodes before it are closed into
                a shard first), or the disk refused a write (the open shard is discarded).
        """
        episode.validate(self.observation_space, self.action_space)
        bad = schema.first_nonfinite(episode)
        if bad is not None:
            self._refuse_nonfinite(episode, *bad)
        if self._count == 0:
            self._opened_at = self._clock()
        size = _nbytes(episode)
        self._pending.append(episode)
        self._pending_policies.append(policy)
        self._pending_bytes += size
        self._shard_bytes += size
        self._count += 1
        self._pending_steps += episode.steps
        if self._count >= self.shard_episodes or self._shard_bytes >= self.shard_bytes:
            self.close_shard()
        elif self._pending_bytes >= self.flush_bytes:
            self._flush()

    def maybe_close_shard(self) -> None:
        """Close the open shard if it is older than ``shard_seconds`` (call this regularly)."""
        if self._count and self._clock() - self._opened_at >= self.shard_seconds:
            self.close_shard()

    def close_shard(self) -> None:
        """Write what is pending, then flush, fsync and rename the open shard and update the manifest."""
        if self._count == 0:
            return
        self._flush()
        assert self._file is not None and self._tmp_path is not None and self._final_path is not None
        with self._disk_errors():
            self._file.attrs["num_episodes"] = self._count
            # A full disk fails this flush, while the file can still be discarded safely; after
            # it, closing has nothing left to write.
            self._file.flush()
            self._columns = {}
            self._file.close()
            self._file = None
            with open(self._tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp_path, self._final_path)
        files.fsync_dir(self.path)
        final, count = self._final_path, self._count
        self.shards.append(store.read_shard_info(final))
        self.episodes_written += self._count
        self.steps_written += self._pending_steps
        self._tmp_path = self._final_path = None
        self._count = self._pending_steps = self._shard_bytes = self._shard_rows = self._shard_episodes = 0
        try:
            store.merge_manifest(self.path, self.shards)
        except OSError as exc:
            code = store.disk_errno(exc)
            if code is None:
                raise
            raise store.WriteRefusedError(
                f"{store.describe_disk_error(code, self.path)}. The shard {final.name} ({count} "
                f"episode(s)) was closed and is complete, as are the {len(self.shards) - 1} shard(s) "
                f"before it; only the manifest {schema.MANIFEST_NAME} could not be updated, and readers "
                "rescan the shards it does not list.", code,
                f"{store.disk_error_fix(code)}, then run the command again (writing into an existing "
                "dataset adds shards and never rewrites one)."
            ) from None

    def close(self) -> None:
        """Close the open shard (if any). Safe to call twice."""
        self.close_shard()

    def discard(self) -> None:
        """Drop the open shard and pending episodes without renaming anything (after an error).

        Safe after a failed write: see :func:`store.discard_h5_file`."""
        self._pending.clear()
        self._pending_policies.clear()
        self._pending_bytes = 0
        self._count = self._pending_steps = self._shard_bytes = self._shard_rows = self._shard_episodes = 0
        if self._file is not None:
            store.discard_h5_file(self._file, self._tmp_path, self._columns)
            self._file = None
        self._columns = {}
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)
            self._tmp_path = None
        self._final_path = None
        if not self.shards:
            self._remove_created()

    def _remove_created(self) -> None:
        """Remove the folders this writer created while they are still empty (a new dataset
        whose first shard failed leaves nothing behind); folders that existed before stay."""
        for folder in self._created:
            try:
                folder.rmdir()  # only an empty folder goes
            except FileNotFoundError:
                continue
            except OSError:
                break  # not empty: nor are its parents
        self._created = []

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # after an error (or a hard interrupt) the open shard's state is unknown: drop it
            self.discard()

    # --- internals ------------------------------------------------------------------------

    def _open_shard(self) -> None:
        self._file = self._create_partial()
        f = self._file
        for key, value in self._header.items():
            f.attrs[key] = value
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        steps = f.create_group(schema.STEPS_GROUP)
        obs = steps.create_group(schema.OBS_GROUP)
        # The datasets stay open until the shard closes: an HDF5 dataset whose last handle goes
        # away writes its cached chunks right then, and a write failing inside Python's garbage
        # collection is only printed, never raised, leaving HDF5 in a state that crashes later.
        columns = self._columns = {}
        for key, space in self.observation_space.spaces.items():
            shape, dtype = schema.obs_column_spec(space)
            if schema.is_image_space(space):  # chunk by time so a window reads few chunks
                columns[f"obs/{key}"] = _resizable(obs, key, shape, dtype, chunk_rows=32,
                                                   compression=self.compression)
            else:
                columns[f"obs/{key}"] = _resizable(obs, key, shape, dtype, chunk_rows=_small_chunk_rows(shape, dtype))
        a_shape, a_dtype = schema.action_column_spec(self.action_space)
        columns[schema.ACTION] = _resizable(steps, schema.ACTION, a_shape, a_dtype,
                                            chunk_rows=_small_chunk_rows(a_shape, a_dtype))
        columns[schema.REWARD] = _resizable(steps, schema.REWARD, (), np.dtype(np.float32), chunk_rows=4096)
        for flag in schema.FLAGS:
            columns[flag] = _resizable(steps, flag, (), np.dtype(bool), chunk_rows=4096)
        episodes = f.create_group(schema.EPISODES_GROUP)
        for name, dtype in zip(schema.EPISODE_INDEX, (np.int64, np.int64, np.float64, bool)):
            columns[f"episodes/{name}"] = _resizable(episodes, name, (), np.dtype(dtype), chunk_rows=1024)
        self._shard_rows = self._shard_episodes = 0

    def _create_partial(self) -> h5py.File:
        """Create the open shard's ``.partial`` file under a name no other writer has used.

        ``shard-<UTC time to the microsecond>-<32 random bits>.h5``: names sort by creation
        time; the random part tells apart writers that open a shard in the same microsecond
        (many collectors, on many hosts). The ``.partial`` file is created exclusively
        (``O_EXCL``: fails if it exists; HDF5 then writes into the file this writer owns), and
        a name whose closed shard exists is skipped, so even a repeated name can never make
        one writer truncate or replace another's shard."""
        for _ in range(100):
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            name = f"{schema.SHARD_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}{schema.SHARD_SUFFIX}"
            final, tmp = self.path / name, self.path / f".{name}{schema.PARTIAL_SUFFIX}"
            if final.exists():
                continue
            try:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                continue
            self._final_path, self._tmp_path = final, tmp  # discard() removes it if HDF5 fails
            return h5py.File(tmp, "w")
        raise DatasetError(f"Could not find a free shard name in {self.path} after 100 tries; check the directory.")

    def _flush(self) -> None:
        """Append the pending episodes to the open shard (opening it if needed)."""
        if not self._pending:
            return
        with self._disk_errors():
            if self._file is None:
                self._open_shard()
            self._write_episodes(self._pending)
        self._pending = []
        self._pending_policies = []
        self._pending_bytes = 0

    def _write_episodes(self, episodes: list[schema.Episode]) -> None:
        """Append whole episodes: one resize and one write per column."""
        assert self._file is not None
        columns = self._columns
        for key in self.observation_space.spaces:
            _append(columns[f"obs/{key}"], np.concatenate([e.obs[key] for e in episodes]))
        _append(columns[schema.ACTION], np.concatenate([e.action for e in episodes]))
        _append(columns[schema.REWARD], np.concatenate([e.reward for e in episodes]))
        for flag in schema.FLAGS:
            _append(columns[flag], np.concatenate([getattr(e, flag) for e in episodes]))
        rows = np.array([e.rows for e in episodes], dtype=np.int64)
        _append(columns["episodes/start"], self._shard_rows + np.concatenate([[0], np.cumsum(rows)[:-1]]))
        _append(columns["episodes/rows"], rows)
        _append(columns["episodes/return"], np.array([e.ret for e in episodes], dtype=np.float64))
        _append(columns["episodes/terminated"], np.array([e.terminated for e in episodes], dtype=bool))
        self._write_policies(self._pending_policies)
        self._shard_rows += int(rows.sum())
        self._shard_episodes += len(episodes)

    def _write_policies(self, policies: list[schema.PolicyVersion | None]) -> None:
        """Append the episodes' agent checkpoints to the optional ``episodes/policy_*`` columns,
        created at the first episode that has one (the shard's earlier episodes get "none")."""
        assert self._file is not None
        columns = self._columns
        names = [f"{schema.EPISODES_GROUP}/{name}" for name in schema.POLICY_COLUMNS]
        if names[0] not in columns:
            if all(p is None for p in policies):
                return
            group = self._file[schema.EPISODES_GROUP]
            earlier = schema.PolicyVersion.columns([None] * self._shard_episodes)
            for name, full, values in zip(schema.POLICY_COLUMNS, names, earlier):
                columns[full] = _resizable(group, name, (), values.dtype, chunk_rows=1024)
                _append(columns[full], values)
        for full, values in zip(names, schema.PolicyVersion.columns(policies)):
            _append(columns[full], values)

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        """Turn a refused write (full disk, quota, read-only, permission) into a clear
        DatasetError, discarding only the open shard.

        h5py reports a full disk as ``OSError``, ``RuntimeError`` or ``ValueError`` ("errno =
        28" in the message), depending on the call; :func:`store.disk_errno` recognises them."""
        try:
            yield
        except Exception as exc:
            code = store.disk_errno(exc)
            if code is None:
                raise
            problem = store.describe_disk_error(code, self.path)  # the free space before discarding
            lost, size = self._count, self._shard_bytes
            self.discard()
            kept = (
                f"The {len(self.shards)} shard(s) already in the dataset are intact and readable"
                if self.shards else "No shard had been closed in the dataset yet"
                + ("" if self.path.exists() else " (its new directory was removed again)")
            )
            raise store.WriteRefusedError(
                f"{problem}. {kept}; the shard being written ({lost} episode(s), about "
                f"{store.format_bytes(size)} before compression) was discarded, so no half-written "
                "shard is left.", code,
                f"{store.disk_error_fix(code)}, then run the command again (writing into an existing "
                "dataset adds shards and never rewrites one)."
            ) from None

    def _refuse_nonfinite(self, episode: schema.Episode, column: str, row: int, value: float) -> None:
        """Close what came before, then refuse the episode holding NaN or inf."""
        env_id = self._header["env_id"]
        if column == schema.ACTION:
            what = f"The policy sent env '{env_id}' the action value {value}"
        elif column == schema.REWARD:
            what = f"The env '{env_id}' returned the reward {value}"
        else:
            what = f"The env '{env_id}' returned {value} in observation '{column[len('obs/'):]}'"
        where = "on reset (step 0)" if row == 0 else f"at step {row}"
        number = self.episodes_written + self._count + 1
        self.close_shard()  # the episodes finished before this one are real data: keep them
        kept = (
            f"The {self.episodes_written} episode(s) finished before it in this run are closed "
            f"into shards in {self.path} and readable"
            if self.episodes_written else "No episode had finished before it in this run"
        )
        raise DatasetError(
            f"{what} {where} of episode {number} of this run (the episode had {episode.steps} "
            "step(s)). A world model trained on NaN or inf learns nothing useful, so the episode "
            f"was not stored. {kept}. Fix the env (or wrap it so that it clips such values or "
            "ends the episode there), then run again; writing into the same dataset adds shards "
            "next to the existing ones."
        )


def _resizable(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int,
               compression: str | None = None) -> h5py.Dataset:
    return group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                chunks=(chunk_rows, *shape), compression=compression, fletcher32=CHECKSUM)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _small_chunk_rows(shape: tuple[int, ...], dtype: np.dtype) -> int:
    # about 64 KiB per chunk for vectors and actions
    row = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return int(max(64, min(4096, (64 << 10) // row)))


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    n = dataset.shape[0]
    dataset.resize(n + len(values), axis=0)
    dataset[n:] = values.astype(dataset.dtype, copy=False)


def _nbytes(episode: schema.Episode) -> int:
    return sum(v.nbytes for v in episode.obs.values()) + episode.action.nbytes + 8 * episode.rows
