"""Replay sampling: uniform ``[B, T]`` windows over every stored row of a column store.

This module owns :class:`SequenceSampler`, the replay that feeds world-model and behavior
training. The rows live in a :class:`~dreamer_core.data.storage.ColumnStore` (one global row
index over all episodes of all datasets, in memory or partly on disk); the sampler only
decides which windows to read. A window is the rows ``[s, s + T)`` of that index with ``s``
uniform over ``[0, num_rows - T]``::

    global rows:  | ep 0 (rows 0..4) | ep 1 (rows 5..11)      | ep 2 ...
    is_first:       1 0 0 0 0          1 0 0 0 0 0 0            1 ...
    a window T=6:           [0 0 0     1 0 0]                    <- crosses into ep 1

Windows may cross episode boundaries (the RSSM resets wherever ``is_first`` is set, as
DreamerV3 does) but never wrap from the last row back to the first.

The online replay inserts every env step as it happens (:meth:`SequenceSampler.add_rows`), so
windows include the episodes still being played. With K envs stepped together their rows
interleave in the store; each env is then a **stream** (its rows in order, episode after
episode), and a window is ``T`` consecutive rows of one stream, uniform over all windows of all
streams (DreamerV3's replay samples each worker's stream the same way). Episodes added whole
(:meth:`SequenceSampler.add_episode`, e.g. reloaded from shards) form one more stream.

Randomness comes only from an explicit ``numpy.random.Generator``; each DDP rank derives an
independent stream from the shared seed, and the generator state is part of
:meth:`SequenceSampler.state_dict` so a resumed run samples the same windows.

Also here: :func:`batch_from_episode`, one episode's rows as a ``[1, L]`` batch.

Imports: numpy, torch, data.schema, data.dataset, data.storage, types, errors. Nothing from
nets/, envs/, stages/ or above.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dreamer_core.data import schema
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.storage import DEFAULT_MEMORY_BUDGET, ColumnStore, dataset_list
from dreamer_core.errors import DatasetError
from dreamer_core.types import Batch


class SequenceSampler:
    """Uniform ``[B, T]`` windows over all rows of one or more datasets, or of a store.

    Args:
        datasets: one :class:`~dreamer_core.data.dataset.Dataset` or several with equal
            observation and action spaces (their episodes form one global row index in
            this order), or a :class:`~dreamer_core.data.storage.ColumnStore` to sample
            from as it is, e.g. the empty online replay
            ``SequenceSampler(ColumnStore(observation_space, action_space), B, T)``.
        batch_size: windows per batch ``B`` (per rank under DDP).
        seq_len: rows per window ``T``.
        seed: seed of the sampling stream; ``None`` draws fresh OS entropy. Ignored when
            ``generator`` is given.
        generator: use this generator as is (shared with the caller) instead of a seed;
            then ``rank`` does not change the stream.
        memory_budget: for datasets, bytes of column data that may be held in memory
            (default 4 GiB; see :meth:`ColumnStore.from_datasets`). When all columns fit,
            all are loaded; otherwise image keys are read from disk on demand. Not
            accepted with a store, whose placement is already decided.
        rank, world_size: the DDP rank of this process and the number of ranks. Each rank
            gets an independent stream spawned from ``seed`` (rank 0 of a run equals a
            single-process sampler with the same seed).
        online_queue: with rows added by :meth:`add_rows`, queue every ``T``-th window of each
            stream (the newest ``T`` rows, so the queued windows tile the stream) and fill batch
            slots from that queue before drawing uniformly: each new step is replayed once soon
            after it arrives (DreamerV3 2025's ``replay.online``). Under DDP, where every rank's
            replay holds the same rows, the ranks take the queued windows in turns (window ``i``
            goes to rank ``i % world_size``), so each is replayed once by one rank. The queue is
            not part of :meth:`state_dict`.

    Raises:
        DatasetError: no datasets, fewer rows than ``seq_len`` in the datasets, invalid
            ``batch_size`` or ``seq_len``, or a shard whose columns disagree with its manifest.
        SpacesMismatchError: datasets with different observation or action spaces.

    Shapes:
        sample() -> Batch with obs images uint8 [B, T, Hi, Wi, C], obs vectors float32
        [B, T, ...], action [B, T, ...] (stored dtype), reward float32 [B, T],
        is_first / is_last / is_terminal bool [B, T].

    Example::

        sampler = SequenceSampler(Dataset("data/pong"), batch_size=16, seq_len=64, seed=0)
        batch = sampler.sample()            # batch.obs["image"]: uint8 [16, 64, 64, 64, 3]
    """

    def __init__(
        self,
        datasets: Dataset | Sequence[Dataset] | ColumnStore,
        batch_size: int,
        seq_len: int,
        *,
        seed: int | None = None,
        generator: np.random.Generator | None = None,
        memory_budget: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        online_queue: bool = False,
    ):
        store = datasets if isinstance(datasets, ColumnStore) else None
        if store is not None and memory_budget is not None:
            raise ValueError(
                "memory_budget applies when the sampler loads datasets; a ColumnStore has its "
                "placement already (pass memory_budget to ColumnStore.from_datasets instead)"
            )
        to_load = None if store is not None else dataset_list(datasets)
        _check_sizes(batch_size, seq_len, rank, world_size)
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.rank = rank
        self.world_size = world_size
        self._generator = _sampling_generator(seed, generator, rank)
        self._batches_sampled = 0
        if to_load is not None:
            _check_enough_rows(to_load, self.seq_len)
            budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
            store = ColumnStore.from_datasets(to_load, memory_budget=budget)
        self.store: ColumnStore = store
        # Streams (None until add_rows is first called): stream id -> its global rows in order,
        # and each row's predecessor in its stream (-1: first row of its stream).
        self._streams: dict[Any, _Rows] | None = None
        self._prev: _Rows | None = None
        self.online_queue = bool(online_queue)
        self._queue: deque[np.ndarray] = deque()  # windows [T] waiting to be replayed once
        self._windows_due = 0  # windows due for the queue so far, over all ranks

    # --- the rows (see ColumnStore) -------------------------------------------------------

    @property
    def observation_space(self) -> gym.spaces.Dict:
        return self.store.observation_space

    @property
    def action_space(self) -> gym.Space:
        return self.store.action_space

    @property
    def num_rows(self) -> int:
        """Rows in the global index (all episodes, including appended ones)."""
        return self.store.num_rows

    @property
    def num_episodes(self) -> int:
        return self.store.num_episodes

    @property
    def num_windows(self) -> int:
        """Distinct windows: starts ``s`` in ``[0, num_rows - T]``, or with streams the sum over
        streams of their rows ``- T + 1`` (0 when too few rows)."""
        if self._streams is None:
            return max(self.num_rows - self.seq_len + 1, 0)
        return int(self._window_counts().sum())

    @property
    def episode_starts(self) -> np.ndarray:
        """Global row index of the first row of every episode, int64 ``[episodes]``."""
        return self.store.episode_starts

    @property
    def disk_keys(self) -> tuple[str, ...]:
        """Observation keys read from the shards (empty in memory mode)."""
        return self.store.disk_keys

    @property
    def in_memory(self) -> bool:
        """True when every column is held in memory (no disk reads while sampling)."""
        return self.store.in_memory

    @property
    def placement(self) -> dict[str, str]:
        """Where each column lives: ``"memory"`` or ``"disk"`` (obs keys as ``obs/<key>``)."""
        return self.store.placement

    @property
    def chunk_cache_bytes(self) -> int:
        """HDF5 chunk cache of each open on-disk image column (0 in memory mode)."""
        return self.store.chunk_cache_bytes

    @property
    def memory_bytes(self) -> int:
        """Bytes of the rows held in memory (allocated capacity may be larger)."""
        return self.store.memory_bytes

    def add_episode(self, episode: schema.Episode) -> None:
        """Append a finished episode to the end of the global row index (in memory).

        See :meth:`ColumnStore.add_episode`.

        Raises:
            DatasetError: the episode does not fit the sampler's spaces or row contract.
        """
        start = self.store.num_rows
        self.store.add_episode(episode)
        if self._streams is not None:
            self._extend(_EPISODES, np.arange(start, self.store.num_rows, dtype=np.int64))

    def add_rows(self, streams: np.ndarray | Sequence[int], obs: dict[str, np.ndarray],
                 columns: dict[str, np.ndarray]) -> None:
        """Append single rows as they happen, row ``i`` to stream ``streams[i]`` (e.g. the env
        that produced it); rows of earlier calls, episodes in progress included, are sampled
        like any other. See :meth:`ColumnStore.add_rows` for ``obs`` and ``columns``.

        The first call turns streams on: the rows stored before it form the episodes' stream.

        Raises:
            DatasetError: rows with NaN or inf, or keys that do not match the replay.
        """
        streams = np.asarray(streams).reshape(-1)
        if self._streams is None:
            self._streams, self._prev = {}, _Rows()
            if self.num_rows:
                self._extend(_EPISODES, np.arange(self.num_rows, dtype=np.int64))
        start = self.store.add_rows(obs, columns)
        for i, stream in enumerate(streams.tolist()):
            self._extend(stream, np.array([start + i], np.int64))

    def _extend(self, stream: Any, rows: np.ndarray) -> None:
        """Append global ``rows`` (new, in order) to ``stream`` and record their predecessors."""
        own = self._streams.setdefault(stream, _Rows())
        prev = np.empty(len(rows), np.int64)
        if len(rows):
            prev[0] = own.values[-1] if len(own) else -1
            prev[1:] = rows[:-1]
        own.extend(rows)
        self._prev.extend(prev)  # rows arrive in global order, so _prev stays indexed by row
        if self.online_queue and stream != _EPISODES and len(own) >= self.seq_len and len(own) % self.seq_len == 0:
            if self._windows_due % self.world_size == self.rank:  # DDP: the ranks take turns
                self._queue.append(own.values[-self.seq_len:].copy())
            self._windows_due += 1

    def _window_counts(self) -> np.ndarray:
        return np.array([max(len(rows) - self.seq_len + 1, 0) for rows in self._streams.values()], np.int64)

    # --- windows --------------------------------------------------------------------------

    def sample(self) -> Batch:
        """Draw ``B`` window starts uniformly from ``[0, num_rows - T]`` and gather them.

        Returns:
            A :class:`~dreamer_core.types.Batch` of fresh tensors (they share no memory with
            the replay or with earlier batches).

        Shapes:
            every column: [B, T, ...] (see the class docstring for dtypes).
        """
        return self.gather_windows(self.draw_windows())

    def draw_windows(self) -> np.ndarray:
        """The global rows ``[B, T]`` of the ``B`` windows :meth:`sample` would gather next.

        Without streams these are ``draw_starts()[:, None] + arange(T)``; with streams, ``T``
        consecutive rows of one stream, uniform over all windows of all streams. For callers
        that keep per-row state beside the replay (the online loop's replay context):
        ``gather_windows(draw_windows())`` is exactly ``sample()``."""
        if self._streams is None:
            return self.draw_starts()[:, None] + np.arange(self.seq_len, dtype=np.int64)
        counts = self._window_counts()
        total = int(counts.sum())
        if total == 0:
            raise DatasetError(
                f"The replay holds no stream of at least seq_len={self.seq_len} rows yet. Add more "
                "steps before sampling (e.g. prefill the online replay with random-policy steps)."
            )
        queued = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
        picks = self._generator.integers(0, total, size=self.batch_size - len(queued))
        self._batches_sampled += 1
        ends = np.cumsum(counts)
        which = np.searchsorted(ends, picks, side="right")
        offsets = picks - (ends[which] - counts[which])
        streams = list(self._streams.values())
        span = np.arange(self.seq_len, dtype=np.int64)
        return np.stack(queued + [streams[w].values[o + span] for w, o in zip(which.tolist(), offsets.tolist())])

    def gather_windows(self, rows: np.ndarray) -> Batch:
        """The windows of global ``rows`` ``[B, T]`` (from :meth:`draw_windows`) as a batch."""
        return _batch(self.observation_space, self.store.gather_rows(rows))

    def previous_rows(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """The global row before each of ``rows`` in its stream (without streams: ``row - 1``);
        -1 where there is none."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._streams is None:
            return rows - 1
        return self._prev.values[rows]

    def draw_starts(self) -> np.ndarray:
        """The ``B`` window starts :meth:`sample` would gather next (uniform over valid rows).

        For callers that keep per-row state beside the replay (the online loop's replay
        context): ``gather(draw_starts())`` is exactly ``sample()`` (without streams; with them,
        see :meth:`draw_windows`)."""
        if self._streams is not None:
            raise ValueError("the replay has streams: draw its windows with draw_windows()")
        rows = self.num_rows
        if rows < self.seq_len:
            raise DatasetError(
                f"The replay holds {rows} rows, fewer than one window of seq_len="
                f"{self.seq_len}. Add more episodes before sampling (e.g. prefill the online "
                "replay with random-policy episodes)."
            )
        starts = self._generator.integers(0, rows - self.seq_len + 1, size=self.batch_size)
        self._batches_sampled += 1
        return starts

    def gather(self, starts: np.ndarray | Sequence[int]) -> Batch:
        """The windows ``[s, s + T)`` for the given starts (no randomness involved).

        Useful for fixed evaluation windows and for tests; :meth:`sample` calls it.

        Args:
            starts: window starts, each in ``[0, num_rows - T]``.

        Raises:
            IndexError: a start outside that range.

        Shapes:
            starts: [B]  ->  Batch columns [B, T, ...]
        """
        if self._streams is not None:
            raise ValueError("the replay has streams: its windows are draw_windows() rows, not starts")
        return _batch(self.observation_space, self.store.gather(starts, self.seq_len))

    # --- stream state ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The sampling stream's state (JSON-able), for checkpoints.

        Restoring it into a sampler over the same data continues with the same windows.
        """
        return {
            "bit_generator": self._generator.bit_generator.state,
            "batches_sampled": self._batches_sampled,
            "num_rows": self.num_rows,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream saved by :meth:`state_dict`.

        Windows repeat exactly only over the same rows; over more rows (a grown dataset or
        an online replay) the stream continues but selects other windows.
        """
        bit_state = state["bit_generator"]
        mine = self._generator.bit_generator.state["bit_generator"]
        if bit_state.get("bit_generator") != mine:
            raise ValueError(
                f"sampler state holds a {bit_state.get('bit_generator')} generator state, "
                f"but this sampler draws from {mine}"
            )
        self._generator.bit_generator.state = bit_state
        self._batches_sampled = int(state.get("batches_sampled", 0))

    @property
    def generator(self) -> np.random.Generator:
        return self._generator

    # --- files ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store's shard files opened for disk reads (they reopen on the next read)."""
        self.store.close()

    def __enter__(self) -> SequenceSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        disk = f", disk_keys={list(self.disk_keys)}" if self.disk_keys else ""
        return (
            f"SequenceSampler(rows={self.num_rows}, episodes={self.num_episodes}, "
            f"batch_size={self.batch_size}, seq_len={self.seq_len}{disk})"
        )


_EPISODES = "episodes"  # the stream of episodes added whole


class _Rows:
    """A growing int64 array (amortised appends)."""

    def __init__(self) -> None:
        self._data = np.empty(1024, np.int64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def values(self) -> np.ndarray:
        return self._data[: self._size]

    def extend(self, values: np.ndarray) -> None:
        need = self._size + len(values)
        if need > len(self._data):
            grown = np.empty(max(need, 2 * len(self._data)), np.int64)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : need] = values
        self._size = need


def _batch(observation_space: gym.spaces.Dict, rows: dict[str, np.ndarray]) -> Batch:
    """Gathered columns (``ColumnStore.gather``) as a Batch of tensors."""
    return Batch(
        obs={k: torch.from_numpy(rows[f"obs/{k}"]) for k in observation_space.spaces},
        action=torch.from_numpy(rows[schema.ACTION]),
        reward=torch.from_numpy(rows[schema.REWARD]),
        is_first=torch.from_numpy(rows[schema.IS_FIRST]),
        is_last=torch.from_numpy(rows[schema.IS_LAST]),
        is_terminal=torch.from_numpy(rows[schema.IS_TERMINAL]),
    )


def batch_from_episode(episode: schema.Episode, start: int = 0, stop: int | None = None) -> Batch:
    """Rows ``start:stop`` of one episode as a ``[1, L]`` batch (``is_first`` at row 0 only;
    vector observations as float32, frames stay uint8)."""
    stop = episode.rows if stop is None else stop

    def rows(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x[start:stop]))[None]

    obs = {
        k: rows(v if v.dtype == np.uint8 else v.astype(np.float32))
        for k, v in episode.obs.items()
    }
    is_first = torch.zeros_like(rows(episode.is_first), dtype=torch.bool)
    is_first[:, 0] = True
    return Batch(
        obs=obs,
        action=rows(episode.action),
        reward=rows(episode.reward.astype(np.float32)),
        is_first=is_first,
        is_last=rows(episode.is_last).bool(),
        is_terminal=rows(episode.is_terminal).bool(),
    )


def _check_sizes(batch_size: Any, seq_len: Any, rank: Any, world_size: Any) -> None:
    if not _is_positive_int(batch_size) or not _is_positive_int(seq_len):
        raise DatasetError(
            f"The sampler needs batch_size >= 1 and seq_len >= 1 (whole numbers), got "
            f"batch_size={batch_size!r}, seq_len={seq_len!r}. Set positive values, e.g. "
            "--set data.batch_size=16 --set data.seq_len=64."
        )
    if not _is_positive_int(world_size) or not (
        isinstance(rank, (int, np.integer)) and 0 <= rank < world_size
    ):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _sampling_generator(
    seed: int | None, generator: np.random.Generator | None, rank: int
) -> np.random.Generator:
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed or generator to SequenceSampler, not both")
        return generator
    # Child `rank` of the run's seed: independent streams per DDP rank, and rank 0 matches a
    # single-process run with the same seed.
    sequence = np.random.SeedSequence(seed, spawn_key=(rank,))
    return np.random.Generator(np.random.PCG64(sequence))


def _check_enough_rows(datasets: list[Dataset], seq_len: int) -> None:
    refs = [ref for dataset in datasets for ref in dataset.refs]
    total = int(sum(ref.rows for ref in refs))
    if total < seq_len:
        paths = ", ".join(str(d.path) for d in datasets)
        raise DatasetError(
            f"The dataset(s) {paths} hold {total} rows in {len(refs)} episode(s), fewer than "
            f"one window of seq_len={seq_len} rows. Collect more data (e.g. `dreamer collect "
            f"... --steps {max(seq_len * 10, 1000)}`) or lower the sequence length."
        )


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
