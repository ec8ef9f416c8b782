"""Replay sampling: uniform ``[B, T]`` windows over every stored row of one or more datasets.

This module owns :class:`SequenceSampler`, the replay that feeds world-model and behavior
training. All episodes of all datasets are concatenated, in a fixed order, into one global
row index (datasets in the order given, each in its ``Dataset.refs`` order, then episodes
added with :meth:`SequenceSampler.add_episode`). A window is the rows ``[s, s + T)`` of that
index with ``s`` uniform over ``[0, num_rows - T]``::

    global rows:  | ep 0 (rows 0..4) | ep 1 (rows 5..11)      | ep 2 ...
    is_first:       1 0 0 0 0          1 0 0 0 0 0 0            1 ...
    a window T=6:           [0 0 0     1 0 0]                    <- crosses into ep 1

Windows may cross episode boundaries (the RSSM resets wherever ``is_first`` is set, as
DreamerV3 does) but never wrap from the last row back to the first.

Storage: every column is loaded into one contiguous in-memory numpy array (so a batch is a
single fancy index per key) as long as the total fits ``memory_budget``. Beyond the budget
the small columns (action, reward, flags, vector observations) stay in memory and image
keys are read window by window from the HDF5 shards (one slice per shard a window touches,
files kept open); whatever the budget leaves spare becomes HDF5's cache of decompressed
chunks, so memory stays within the budget however many shards there are.

Randomness comes only from an explicit ``numpy.random.Generator``; each DDP rank derives an
independent stream from the shared seed, and the generator state is part of
:meth:`SequenceSampler.state_dict` so a resumed run samples the same windows.

Imports: h5py, numpy, torch, gymnasium, data.schema, data.dataset, types, errors. Nothing
from nets/, envs/, stages/ or above.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import torch

from dreamer_core.data import schema
from dreamer_core.data.dataset import Dataset, EpisodeRef
from dreamer_core.errors import DatasetError, SpacesMismatchError
from dreamer_core.types import Batch

DEFAULT_MEMORY_BUDGET = 4 * 2**30

# Growth factor of the in-memory columns when episodes are appended online. Geometric growth
# keeps appends amortised O(rows); 1.5 rather than 2 limits the peak of a large replay.
_GROWTH = 1.5

# Upper bound of the HDF5 chunk cache per open on-disk image dataset (one per shard and key).
_MAX_CHUNK_CACHE = 256 * 2**20


class SequenceSampler:
    """Uniform ``[B, T]`` windows over all rows of one or more datasets.

    Args:
        datasets: one :class:`~dreamer_core.data.dataset.Dataset` or several with equal
            observation and action spaces; their episodes form one global row index in
            this order.
        batch_size: windows per batch ``B`` (per rank under DDP).
        seq_len: rows per window ``T``.
        seed: seed of the sampling stream; ``None`` draws fresh OS entropy. Ignored when
            ``generator`` is given.
        generator: use this generator as is (shared with the caller) instead of a seed;
            then ``rank`` does not change the stream.
        memory_budget: bytes of column data that may be held in memory. When all columns
            fit, all are loaded; otherwise image keys (largest last) are read from disk on
            demand, everything else is loaded, and the rest of the budget is split among
            HDF5 chunk caches of the on-disk keys.
        rank, world_size: the DDP rank of this process and the number of ranks. Each rank
            gets an independent stream spawned from ``seed`` (rank 0 of a run equals a
            single-process sampler with the same seed).

    Raises:
        DatasetError: no datasets, fewer rows than ``seq_len``, invalid ``batch_size`` or
            ``seq_len``, or a shard whose columns disagree with its manifest.
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
        datasets: Dataset | Sequence[Dataset],
        batch_size: int,
        seq_len: int,
        *,
        seed: int | None = None,
        generator: np.random.Generator | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        rank: int = 0,
        world_size: int = 1,
    ):
        datasets = [datasets] if isinstance(datasets, Dataset) else list(datasets)
        if not datasets:
            raise DatasetError(
                "The sampler got no datasets. Pass at least one dataset directory (collect one "
                "with `dreamer collect --env ENV_ID --out DIR`); an online replay that starts "
                "empty is made with SequenceSampler.from_spaces(...)."
            )
        first = datasets[0]
        for other in datasets[1:]:
            _check_same_spaces(first, other)
        self._setup(
            first.observation_space,
            first.action_space,
            batch_size,
            seq_len,
            seed=seed,
            generator=generator,
            rank=rank,
            world_size=world_size,
        )
        refs = [ref for dataset in datasets for ref in dataset.refs]
        total = int(sum(ref.rows for ref in refs))
        if total < seq_len:
            paths = ", ".join(str(d.path) for d in datasets)
            raise DatasetError(
                f"The dataset(s) {paths} hold {total} rows in {len(refs)} episode(s), fewer than "
                f"one window of seq_len={seq_len} rows. Collect more data (e.g. `dreamer collect "
                f"... --steps {max(seq_len * 10, 1000)}`) or lower the sequence length."
            )
        self._choose_placement(total, memory_budget)
        self._load(refs)

    @classmethod
    def from_spaces(
        cls,
        observation_space: gym.spaces.Dict,
        action_space: gym.Space,
        batch_size: int,
        seq_len: int,
        *,
        seed: int | None = None,
        generator: np.random.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> SequenceSampler:
        """An empty in-memory replay for the online loop, filled with :meth:`add_episode`.

        :meth:`sample` raises until at least ``seq_len`` rows were added.
        """
        sampler = cls.__new__(cls)
        sampler._setup(
            observation_space,
            action_space,
            batch_size,
            seq_len,
            seed=seed,
            generator=generator,
            rank=rank,
            world_size=world_size,
        )
        sampler._choose_placement(0, DEFAULT_MEMORY_BUDGET)
        sampler._allocate(0)
        return sampler

    # --- public ---------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        """Rows in the global index (all episodes, including appended ones)."""
        return self._rows

    @property
    def num_episodes(self) -> int:
        return len(self._episode_starts)

    @property
    def num_windows(self) -> int:
        """Distinct window starts ``s`` in ``[0, num_rows - T]`` (0 when too few rows)."""
        return max(self._rows - self.seq_len + 1, 0)

    @property
    def episode_starts(self) -> np.ndarray:
        """Global row index of the first row of every episode, int64 ``[episodes]``."""
        return np.asarray(self._episode_starts, dtype=np.int64)

    @property
    def in_memory(self) -> bool:
        """True when every column is held in memory (no disk reads while sampling)."""
        return not self.disk_keys

    @property
    def placement(self) -> dict[str, str]:
        """Where each column lives: ``"memory"`` or ``"disk"`` (obs keys as ``obs/<key>``)."""
        where = {f"obs/{k}": ("disk" if k in self.disk_keys else "memory") for k in self._obs_specs}
        where.update({name: "memory" for name in schema.COLUMNS})
        return where

    @property
    def chunk_cache_bytes(self) -> int:
        """HDF5 chunk cache of each open on-disk image column (0 in memory mode)."""
        return self._chunk_cache_bytes

    @property
    def memory_bytes(self) -> int:
        """Bytes of the rows held in memory (allocated capacity may be larger)."""
        columns = self._rows * sum(schema.column_bytes(*spec) for spec in self._memory_specs().values())
        appended = sum(
            array.nbytes for s in self._segments if s.arrays for array in s.arrays.values()
        )
        return columns + appended

    def sample(self) -> Batch:
        """Draw ``B`` window starts uniformly from ``[0, num_rows - T]`` and gather them.

        Returns:
            A :class:`~dreamer_core.types.Batch` of fresh tensors (they share no memory with
            the replay or with earlier batches).

        Shapes:
            every column: [B, T, ...] (see the class docstring for dtypes).
        """
        return self.gather(self.draw_starts())

    def draw_starts(self) -> np.ndarray:
        """The ``B`` window starts :meth:`sample` would gather next (uniform over valid rows).

        For callers that keep per-row state beside the replay (the online loop's replay
        context): ``gather(draw_starts())`` is exactly ``sample()``."""
        if self._rows < self.seq_len:
            raise DatasetError(
                f"The replay holds {self._rows} rows, fewer than one window of seq_len="
                f"{self.seq_len}. Add more episodes before sampling (e.g. prefill the online "
                "replay with random-policy episodes)."
            )
        starts = self._generator.integers(0, self._rows - self.seq_len + 1, size=self.batch_size)
        self._batches_sampled += 1
        return starts

    def gather(self, starts: np.ndarray | Sequence[int]) -> Batch:
        """The windows ``[s, s + T)`` for the given starts (no randomness involved).

        Useful for fixed evaluation windows and for tests; :meth:`sample` calls it.

        Args:
            starts: window starts, each in ``[0, num_rows - T]``.

        Shapes:
            starts: [B]  ->  Batch columns [B, T, ...]
        """
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)  # [B]
        T = self.seq_len
        if starts.size and (starts.min() < 0 or starts.max() > self._rows - T):
            raise IndexError(
                f"window starts must lie in [0, {self._rows - T}] for {self._rows} rows and "
                f"seq_len={T}; got min {starts.min()}, max {starts.max()}"
            )
        index = starts[:, None] + self._offsets  # [B, T] global rows
        obs = {}
        for key in self._obs_specs:
            if key in self.disk_keys:
                obs[key] = torch.from_numpy(self._read_disk_windows(key, starts))
            else:
                obs[key] = torch.from_numpy(self._obs[key][index])
        return Batch(
            obs=obs,
            action=torch.from_numpy(self._columns[schema.ACTION][index]),
            reward=torch.from_numpy(self._columns[schema.REWARD][index]),
            is_first=torch.from_numpy(self._columns[schema.IS_FIRST][index]),
            is_last=torch.from_numpy(self._columns[schema.IS_LAST][index]),
            is_terminal=torch.from_numpy(self._columns[schema.IS_TERMINAL][index]),
        )

    def add_episode(self, episode: schema.Episode) -> None:
        """Append a finished episode to the end of the global row index (in memory).

        Appended rows are always held in memory, also for keys otherwise read from disk;
        flushing them to shards is the collector's job (``DatasetWriter``).

        Raises:
            DatasetError: the episode does not fit the sampler's spaces or row contract.
        """
        try:
            episode.validate(self.observation_space, self.action_space)
        except ValueError as exc:
            raise DatasetError(
                f"Cannot add the episode to the replay: {exc}. Episodes must come from an env "
                "with the replay's observation and action spaces (build them with "
                "EpisodeBuilder or Episode.from_transitions)."
            ) from None
        rows = episode.rows
        start = self._rows
        self._ensure_capacity(start + rows)
        stop = start + rows
        for key in self._obs_specs:
            if key in self.disk_keys:
                continue
            self._obs[key][start:stop] = episode.obs[key]
        for name in schema.COLUMNS:
            self._columns[name][start:stop] = getattr(episode, name)
        if self.disk_keys:
            dtypes = {k: self._obs_specs[k][1] for k in self.disk_keys}
            kept = {k: np.array(episode.obs[k], dtype=dtypes[k]) for k in self.disk_keys}  # copies
            self._segments.append(_Segment(start, rows, arrays=kept))
            self._segment_starts.append(start)
        self._episode_starts.append(start)
        self._rows = stop

    def state_dict(self) -> dict[str, Any]:
        """The sampling stream's state (JSON-able), for checkpoints.

        Restoring it into a sampler over the same data continues with the same windows.
        """
        return {
            "bit_generator": self._generator.bit_generator.state,
            "batches_sampled": self._batches_sampled,
            "num_rows": self._rows,
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

    def close(self) -> None:
        """Close the shard files opened for disk reads (they reopen on the next read)."""
        for segment in self._segments:
            segment.handles = None
        for handle in self._files.values():
            try:
                handle.close()
            except Exception:
                pass
        self._files.clear()

    def __enter__(self) -> SequenceSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_files", None):
            self.close()

    def __repr__(self) -> str:
        disk = f", disk_keys={list(self.disk_keys)}" if self.disk_keys else ""
        return (
            f"SequenceSampler(rows={self._rows}, episodes={self.num_episodes}, "
            f"batch_size={self.batch_size}, seq_len={self.seq_len}{disk})"
        )

    # --- setup ----------------------------------------------------------------------------

    def _setup(
        self,
        observation_space: gym.spaces.Dict,
        action_space: gym.Space,
        batch_size: int,
        seq_len: int,
        *,
        seed: int | None,
        generator: np.random.Generator | None,
        rank: int,
        world_size: int,
    ) -> None:
        if not _is_positive_int(batch_size) or not _is_positive_int(seq_len):
            raise DatasetError(
                f"The sampler needs batch_size >= 1 and seq_len >= 1 (whole numbers), got "
                f"batch_size={batch_size!r}, seq_len={seq_len!r}. Set positive values, e.g. "
                "--set data.batch_size=16 --set data.seq_len=64."
            )
        if not _is_positive_int(world_size) or not (
            isinstance(rank, (int, np.integer)) and 0 <= rank < world_size
        ):
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.observation_space = observation_space
        self.action_space = action_space
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.rank = rank
        self.world_size = world_size
        if generator is not None:
            if seed is not None:
                raise ValueError("pass either seed or generator to SequenceSampler, not both")
            self._generator = generator
        else:
            # Child `rank` of the run's seed: independent streams per DDP rank, and rank 0
            # matches a single-process run with the same seed.
            sequence = np.random.SeedSequence(seed, spawn_key=(rank,))
            self._generator = np.random.Generator(np.random.PCG64(sequence))
        self._batches_sampled = 0
        self._offsets = np.arange(self.seq_len, dtype=np.int64)  # [T]
        self._obs_specs = {
            k: schema.obs_column_spec(s) for k, s in observation_space.spaces.items()
        }
        self._column_specs = {
            schema.ACTION: schema.action_column_spec(action_space),
            schema.REWARD: ((), np.dtype(np.float32)),
            **{flag: ((), np.dtype(bool)) for flag in schema.FLAGS},
        }
        self._rows = 0
        self._capacity = 0
        self._episode_starts: list[int] = []
        self._segments: list[_Segment] = []
        self._segment_starts: list[int] = []  # mirrors _segments, for bisection
        self._files: dict[Path, h5py.File] = {}
        self._chunk_cache_bytes = 0  # HDF5 chunk cache per open image dataset
        self._spare_bytes = 0
        self._obs: dict[str, np.ndarray] = {}
        self._columns: dict[str, np.ndarray] = {}
        self.disk_keys: tuple[str, ...] = ()

    def _choose_placement(self, rows: int, memory_budget: int) -> None:
        """Decide which image keys stay on disk so the loaded columns fit the budget.

        The small columns are always loaded; image keys join them, smallest first, while
        they fit. What is left of the budget (``_spare_bytes``) becomes HDF5's chunk cache
        for the on-disk keys (see :meth:`_load`).
        """
        if memory_budget < 0:
            raise ValueError(f"memory_budget must be >= 0 bytes, got {memory_budget}")
        sizes = {k: rows * schema.column_bytes(*spec) for k, spec in self._obs_specs.items()}
        images = [k for k, s in self.observation_space.spaces.items() if schema.is_image_space(s)]
        used = sum(size for k, size in sizes.items() if k not in images)
        used += sum(rows * schema.column_bytes(*spec) for spec in self._column_specs.values())
        disk = []
        for key in sorted(images, key=lambda k: sizes[k]):
            if used + sizes[key] <= memory_budget:
                used += sizes[key]
            else:
                disk.append(key)
        self.disk_keys = tuple(k for k in self._obs_specs if k in disk)
        self._spare_bytes = max(memory_budget - used, 0)

    def _memory_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        specs = {k: spec for k, spec in self._obs_specs.items() if k not in self.disk_keys}
        specs.update(self._column_specs)
        return specs

    def _allocate(self, capacity: int) -> None:
        self._obs = {
            k: np.empty((capacity, *shape), dtype)
            for k, (shape, dtype) in self._obs_specs.items()
            if k not in self.disk_keys
        }
        self._columns = {
            name: np.empty((capacity, *shape), dtype)
            for name, (shape, dtype) in self._column_specs.items()
        }
        self._capacity = capacity

    def _ensure_capacity(self, rows: int) -> None:
        if rows <= self._capacity:
            return
        capacity = max(rows, int(self._capacity * _GROWTH) + 1024)
        old_obs, old_columns, used = self._obs, self._columns, self._rows
        self._allocate(capacity)
        for key, array in old_obs.items():
            self._obs[key][:used] = array[:used]
        for name, array in old_columns.items():
            self._columns[name][:used] = array[:used]

    def _load(self, refs: list[EpisodeRef]) -> None:
        """Read every in-memory column straight into the big arrays, one read per run.

        A run is a stretch of episodes stored back to back in one shard (normally the whole
        shard), so it is one slice of each ``steps/`` column.
        """
        total = int(sum(ref.rows for ref in refs))
        self._allocate(total)
        row = 0
        for ref in refs:
            self._episode_starts.append(row)
            last = self._segments[-1] if self._segments else None
            if (
                last is not None
                and last.shard == ref.shard
                and last.offset + last.rows == ref.start
            ):
                last.rows += ref.rows
            else:
                self._segments.append(_Segment(row, ref.rows, shard=ref.shard, offset=ref.start))
            row += ref.rows
        if self.disk_keys:
            # HDF5 caches decompressed chunks per open dataset (8 MiB each by default in
            # HDF5 2.x), one per segment and on-disk key: left at the default, the caches
            # would grow with the number of shards past any budget. Split the spare budget
            # evenly instead (nothing spare: no cache, every read decompresses its chunks).
            per_dataset = self._spare_bytes // (len(self._segments) * len(self.disk_keys))
            self._chunk_cache_bytes = min(per_dataset, _MAX_CHUNK_CACHE)
        for segment in self._segments:
            self._load_segment(segment)
        self._rows = row
        self._segment_starts = [segment.start for segment in self._segments]
        if not self.disk_keys:
            self._segments, self._segment_starts = [], []
            self.close()  # everything is in memory: no file needs to stay open

    def _load_segment(self, segment: _Segment) -> None:
        assert segment.shard is not None
        lo, hi = segment.offset, segment.offset + segment.rows
        try:
            steps = self._file(segment.shard)[schema.STEPS_GROUP]
            for key, (shape, _) in self._obs_specs.items():
                source = steps[schema.OBS_GROUP][key]
                _check_column(segment.shard, f"obs/{key}", source, shape, hi)
                if key not in self.disk_keys:
                    source.read_direct(self._obs[key], np.s_[lo:hi], _rows(segment))
            for name, (shape, _) in self._column_specs.items():
                source = steps[name]
                _check_column(segment.shard, name, source, shape, hi)
                source.read_direct(self._columns[name], np.s_[lo:hi], _rows(segment))
        except (KeyError, OSError) as exc:
            raise DatasetError(
                f"Rows {lo}:{hi} of shard {segment.shard} cannot be read ({type(exc).__name__}: "
                f"{exc}). The shard is damaged: open the dataset with skip_corrupt (CLI: "
                "--skip-corrupt) or move the shard out of the dataset directory."
            ) from None

    # --- disk reads -----------------------------------------------------------------------

    def _file(self, path: Path) -> h5py.File:
        handle = self._files.get(path)
        if handle is None:
            handle = h5py.File(path, "r", rdcc_nbytes=self._chunk_cache_bytes)
            self._files[path] = handle
        return handle

    def _source(self, index: int, key: str) -> np.ndarray | h5py.Dataset:
        """Rows of ``key`` for segment ``index``: an array (appended) or an HDF5 dataset."""
        segment = self._segments[index]
        if segment.arrays is not None:
            return segment.arrays[key]
        if segment.handles is None:
            assert segment.shard is not None
            obs = self._file(segment.shard)[schema.STEPS_GROUP][schema.OBS_GROUP]
            segment.handles = {k: _open_for_windows(obs, k) for k in self.disk_keys}
        return segment.handles[key]

    def _read_disk_windows(self, key: str, starts: np.ndarray) -> np.ndarray:
        """Read the windows of an on-disk key, one HDF5 slice per shard piece.

        Shapes:
            starts: [B]  ->  [B, T, ...]
        """
        T = self.seq_len
        shape, dtype = self._obs_specs[key]
        out = np.empty((len(starts), T, *shape), dtype)  # [B, T, Hi, Wi, C]
        seg_starts = self._segment_starts
        first = np.searchsorted(seg_starts, starts, side="right") - 1  # [B]
        for b, (start, index) in enumerate(zip(starts.tolist(), first.tolist(), strict=True)):
            filled = 0
            while filled < T:  # a window may span several shards (or appended episodes)
                segment = self._segments[index]
                lo = start + filled - segment.start
                n = min(segment.rows - lo, T - filled)
                source = self._source(index, key)
                if isinstance(source, np.ndarray):
                    out[b, filled : filled + n] = source[lo : lo + n]
                else:
                    lo += segment.offset
                    source.read_direct(out, np.s_[lo : lo + n], np.s_[b, filled : filled + n])
                filled += n
                index += 1
        return out


class _Segment:
    """Consecutive global rows stored together: a run of a shard's rows, or an appended episode.

    Attributes:
        start: global index of the first row; rows: number of rows.
        shard, offset: the shard holding the rows at ``steps/...[offset : offset + rows]``.
        arrays: for an appended episode, its on-disk keys' rows held in memory instead.
        handles: the open HDF5 datasets of the on-disk keys (filled on first read).
    """

    __slots__ = ("start", "rows", "shard", "offset", "arrays", "handles")

    def __init__(
        self,
        start: int,
        rows: int,
        *,
        shard: Path | None = None,
        offset: int = 0,
        arrays: dict[str, np.ndarray] | None = None,
    ):
        self.start = start
        self.rows = rows
        self.shard = shard
        self.offset = offset
        self.arrays = arrays
        self.handles: dict[str, h5py.Dataset] | None = None


def _check_same_spaces(first: Dataset, other: Dataset) -> None:
    problems = []
    if not schema.spaces_equal(first.observation_space, other.observation_space):
        problems.append(
            f"observation space {other.observation_space} (vs {first.observation_space})"
        )
    if not schema.spaces_equal(first.action_space, other.action_space):
        problems.append(f"action space {other.action_space} (vs {first.action_space})")
    if problems:
        raise SpacesMismatchError(
            f"The dataset {other.path} cannot be sampled together with {first.path}: it has "
            f"{' and '.join(problems)}. Windows from several datasets are batched together, so "
            "they need the same spaces. Train on datasets collected with the same env options "
            "(e.g. --pixels, --size), or train on them separately."
        )


def _open_for_windows(group: h5py.Group, name: str) -> h5py.Dataset:
    """Open an on-disk image column; without the chunk cache when its chunks are raw.

    The cache pays off only for compressed chunks (a hit saves a decompression); for raw
    chunks it only adds a copy (measured about 30% slower).
    """
    # The probe handle must be gone before reopening: HDF5 shares one open dataset object
    # and would keep the first handle's cache settings.
    raw = group[name].id.get_create_plist().get_nfilters() == 0
    if not raw:
        return group[name]
    access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    access.set_chunk_cache(0, 0, 1.0)
    return h5py.Dataset(h5py.h5d.open(group.id, name.encode(), dapl=access))


def _rows(segment: _Segment) -> slice:
    """The segment's rows in the global in-memory arrays."""
    return np.s_[segment.start : segment.start + segment.rows]


def _check_column(
    shard: Path, name: str, source: h5py.Dataset, shape: tuple[int, ...], rows: int
) -> None:
    """Raise when a stored column has another row shape than the spaces say, or too few rows."""
    if source.shape[1:] != shape or source.shape[0] < rows:
        raise DatasetError(
            f"Column steps/{name} of {shard} has shape {source.shape}, but the dataset's spaces "
            f"and episode index need rows of shape {shape} and at least {rows} rows. The shard "
            "or the manifest is inconsistent: delete dataset.json (it is rebuilt from the "
            "shards) or move the shard out of the dataset."
        )


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
