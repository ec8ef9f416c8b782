"""Replay storage: every column of every stored row, in memory or read from HDF5 shards.

This module owns :class:`ColumnStore`, the rows behind the replay sampler (data/sampler.py).
All episodes are concatenated, in a fixed order, into one global row index: the datasets in
the order given, each in its ``Dataset.refs`` order, then the episodes appended with
:meth:`ColumnStore.add_episode`. The store answers "the rows ``[s, s + L)`` for these starts"
(:meth:`ColumnStore.gather`); which windows to read is the sampler's business.

Placement: every column is loaded into one contiguous in-memory numpy array (so a read is a
single fancy index per column) as long as the total fits ``memory_budget``. Beyond the budget
the small columns (action, reward, flags, vector observations) stay in memory and image keys
are read window by window from the HDF5 shards (one slice per shard a window touches, files
kept open); whatever the budget leaves spare becomes HDF5's cache of decompressed chunks, so
memory stays within the budget however many shards there are::

    global rows:   | shard a rows ...     | shard b rows ...  | appended rows ...
    memory cols:   [ action, reward, flags, vectors (and images when they fit) ........ ]
    disk images:   [ read from shard a   ][ read from shard b ][ held in memory (tail) ]

Rows are appended at the end only (:meth:`ColumnStore.add_episode`); the in-memory columns
grow geometrically, and the appended rows of on-disk keys go to one growing in-memory tail.
Row storage (``_append_rows``) and episode bookkeeping (``_episode_starts``) are separate
steps, so appending one env step at a time only needs a per-row validation on top.

Loaded data is checked once, vectorised over the in-memory columns (the small ones are always
in memory): discrete actions inside their space, finite rewards, float actions and vector
observations, and flags that agree with the episode index. A shard failing a check, or whose
chunks fail their checksum, is named with the column and its first bad rows; datasets opened
with ``skip_corrupt`` leave it out instead.

Imports: h5py, numpy, gymnasium, data.schema, data.store, data.dataset, errors. No torch;
nothing from nets/, envs/, stages/ or above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from dreamer_core.data import schema, store
from dreamer_core.data.dataset import Dataset, EpisodeRef
from dreamer_core.errors import DatasetError, SpacesMismatchError

DEFAULT_MEMORY_BUDGET = 4 * 2**30

# Growth factor of the in-memory columns when rows are appended online. Geometric growth
# keeps appends amortised O(rows); 1.5 rather than 2 limits the peak of a large replay.
_GROWTH = 1.5

# Upper bound of the HDF5 chunk cache per open on-disk image dataset (one per shard and key).
_MAX_CHUNK_CACHE = 256 * 2**20

# Values per block of the load-time checks (bounds their temporary arrays).
_CHECK_BLOCK = 1 << 22

# What to do about a shard the loader refuses (the commands that load with skip_corrupt).
_SKIP_HINT = (
    " `dreamer train-world-model` and `dreamer train-behavior` leave such a shard out when "
    "given --skip-corrupt."
)

Spec = tuple[tuple[int, ...], np.dtype]


class ColumnStore:
    """The columns of a global row index, each held in memory or read from HDF5 shards.

    ``ColumnStore(observation_space, action_space)`` is an empty in-memory store (the online
    replay), filled with :meth:`add_episode`; :meth:`from_datasets` loads datasets.

    Attributes:
        observation_space, action_space: the spaces every row follows.
        disk_keys: observation keys read from the shards (empty: everything is in memory).

    Shapes:
        gather(starts [B], L) -> {"obs/<key>": [B, L, ...], "action": [B, L, ...],
        "reward": float32 [B, L], "is_first" / "is_last" / "is_terminal": bool [B, L]}
        (images uint8, vectors float32, action in its stored dtype).

    Example::

        store = ColumnStore.from_datasets([Dataset("data/pong")], memory_budget=0)
        rows = store.gather([0, 100], 64)   # rows["obs/image"]: uint8 [2, 64, 64, 64, 3]
    """

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.Space):
        self.observation_space = observation_space
        self.action_space = action_space
        self._obs_specs: dict[str, Spec] = {
            k: schema.obs_column_spec(s) for k, s in observation_space.spaces.items()
        }
        self._column_specs: dict[str, Spec] = {
            schema.ACTION: schema.action_column_spec(action_space),
            schema.REWARD: ((), np.dtype(np.float32)),
            **{flag: ((), np.dtype(bool)) for flag in schema.FLAGS},
        }
        self.disk_keys: tuple[str, ...] = ()
        self._rows = 0
        self._episode_starts: list[int] = []
        self._memory = _GrowingColumns(self._memory_specs())
        self._segments: list[_Segment] = []  # on-disk placement only: where the disk keys live
        self._segment_starts: list[int] = []  # mirrors _segments, for bisection
        self._files: dict[Path, h5py.File] = {}
        self._chunk_cache_bytes = 0  # HDF5 chunk cache per open image dataset
        self._spare_bytes = 0  # memory budget left for the chunk caches

    @classmethod
    def from_datasets(
        cls,
        datasets: Dataset | Sequence[Dataset],
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> ColumnStore:
        """Load the rows of one or more datasets with equal spaces, in the order given.

        Args:
            datasets: one dataset or several; their episodes form the global row index.
            memory_budget: bytes of column data that may be held in memory. When all columns
                fit, all are loaded; otherwise image keys (largest first) are read from disk
                on demand, everything else is loaded, and the rest of the budget is split
                among the HDF5 chunk caches of the on-disk keys.

        Raises:
            DatasetError: no datasets; a shard whose columns disagree with its manifest, fail
                their checksum, or hold invalid values (NaN or inf rewards or vectors, actions
                outside the action space, flags that disagree with the episode index), unless
                its dataset was opened with ``skip_corrupt``: then the shard is left out (listed
                in the dataset's ``skipped``) and the rest is loaded.
            SpacesMismatchError: datasets with different observation or action spaces.
            ValueError: a negative ``memory_budget``.
        """
        datasets = dataset_list(datasets)
        while True:
            columns = cls(datasets[0].observation_space, datasets[0].action_space)
            refs = [ref for dataset in datasets for ref in dataset.refs]
            columns._choose_placement(int(sum(ref.rows for ref in refs)), memory_budget)
            try:
                columns._load(refs)
                return columns
            except _DamagedShard as exc:
                columns.close()
                owners = [d for d in datasets if any(ref.shard == exc.shard for ref in d.refs)]
                if not owners or not all(d.skip_corrupt for d in owners):
                    raise DatasetError(f"{exc}{_SKIP_HINT}") from None
                for dataset in owners:  # then load again without it (rare: no cost otherwise)
                    dataset.leave_out(exc.shard, str(exc))

    # --- public ---------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        """Rows in the global index (all episodes, including appended ones)."""
        return self._rows

    @property
    def num_episodes(self) -> int:
        return len(self._episode_starts)

    @property
    def episode_starts(self) -> np.ndarray:
        """Global row index of the first row of every episode, int64 ``[episodes]``."""
        return np.asarray(self._episode_starts, dtype=np.int64)

    @property
    def in_memory(self) -> bool:
        """True when every column is held in memory (no disk reads)."""
        return not self.disk_keys

    @property
    def placement(self) -> dict[str, str]:
        """Where each column lives: ``"memory"`` or ``"disk"`` (obs keys as ``obs/<key>``)."""
        where = {_obs(k): ("disk" if k in self.disk_keys else "memory") for k in self._obs_specs}
        where.update({name: "memory" for name in schema.COLUMNS})
        return where

    @property
    def chunk_cache_bytes(self) -> int:
        """HDF5 chunk cache of each open on-disk image column (0 in memory mode)."""
        return self._chunk_cache_bytes

    @property
    def memory_bytes(self) -> int:
        """Bytes of the rows held in memory (allocated capacity may be larger)."""
        tail = sum(s.tail.used_bytes(s.rows) for s in self._segments if s.tail is not None)
        return self._memory.used_bytes(self._rows) + tail

    def gather(self, starts: np.ndarray | Sequence[int], length: int) -> dict[str, np.ndarray]:
        """The rows ``[s, s + length)`` of every column for each start ``s``.

        Returns fresh arrays (they share no memory with the store), keyed like
        :attr:`placement`, obs keys first in the observation space's order.

        Raises:
            IndexError: a start outside ``[0, num_rows - length]``.

        Shapes:
            starts: [B]  ->  every column [B, length, ...]
        """
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)  # [B]
        T = length
        if starts.size and (starts.min() < 0 or starts.max() > self._rows - T):
            raise IndexError(
                f"window starts must lie in [0, {self._rows - T}] for {self._rows} rows and "
                f"seq_len={T}; got min {starts.min()}, max {starts.max()}"
            )
        return self._gather(starts[:, None] + np.arange(T, dtype=np.int64), starts)

    def gather_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The given global rows of every column: ``rows`` ``[B, T]`` -> every column
        ``[B, T, ...]`` (fresh arrays, keyed like :attr:`placement`).

        A window need not be consecutive rows (the online replay's windows follow one env's
        stream through rows interleaved with other envs'), except for keys read from disk.

        Raises:
            IndexError: a row outside ``[0, num_rows)``.
            ValueError: a window of non-consecutive rows while some keys are read from disk.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2:
            raise ValueError(f"rows must be [B, T], got shape {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= self._rows):
            raise IndexError(f"rows must lie in [0, {self._rows - 1}]; got min {rows.min()}, max {rows.max()}")
        starts = rows[:, 0] if rows.shape[1] else np.zeros(len(rows), np.int64)
        if self.disk_keys and not np.array_equal(rows, starts[:, None] + np.arange(rows.shape[1])):
            raise ValueError(
                f"windows of non-consecutive rows cannot be read from disk (keys {list(self.disk_keys)}); "
                "load the store in memory"
            )
        return self._gather(rows, starts)

    def _gather(self, index: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        """Every column at ``index`` [B, T]; on-disk keys read as the windows at ``starts``."""
        arrays = self._memory.arrays
        out = {}
        for key in self._obs_specs:
            if key in self.disk_keys:
                out[_obs(key)] = self._read_disk_windows(key, starts, index.shape[1])
            else:
                out[_obs(key)] = arrays[_obs(key)][index]
        for name in schema.COLUMNS:
            out[name] = arrays[name][index]
        return out

    def add_episode(self, episode: schema.Episode) -> None:
        """Append a finished episode to the end of the global row index (in memory).

        Appended rows are always held in memory, also for keys otherwise read from disk;
        flushing them to shards is the collector's job (``DatasetWriter``).

        Raises:
            DatasetError: the episode does not fit the store's spaces or row contract, or
                holds NaN or inf.
        """
        try:
            episode.validate(self.observation_space, self.action_space)
        except ValueError as exc:
            raise DatasetError(
                f"Cannot add the episode to the replay: {exc}. Episodes must come from an env "
                "with the replay's observation and action spaces (build them with "
                "EpisodeBuilder or Episode.from_transitions)."
            ) from None
        bad = schema.first_nonfinite(episode)
        if bad is not None:
            column, row, value = bad
            raise DatasetError(
                f"Cannot add the episode to the replay: its {column} holds {value} at row {row}. "
                "A world model trained on NaN or inf learns nothing useful; fix the env or the "
                "data that produced it."
            )
        columns = {name: getattr(episode, name) for name in schema.COLUMNS}
        start = self._append_rows(episode.obs, columns)
        self._episode_starts.append(start)

    def add_rows(self, obs: Mapping[str, np.ndarray], columns: Mapping[str, np.ndarray]) -> int:
        """Append single rows, e.g. one env step of each of K envs, of episodes that may still
        be in progress (the online replay inserts every step as it happens). Returns the global
        index of the first new row; a row with ``is_first`` set starts an episode.

        ``obs`` maps every observation key to ``[n, ...]`` and ``columns`` every name of
        ``schema.COLUMNS`` to ``[n, ...]`` arrays, in the store's dtypes (what
        ``EpisodeRecorder`` builds). Rows are held in memory, like appended episodes.

        Raises:
            DatasetError: a column with NaN or inf, or the wrong keys.
        """
        if set(obs) != set(self._obs_specs) or set(columns) != set(schema.COLUMNS):
            raise DatasetError(
                f"Cannot add rows to the replay: they have observation keys {sorted(obs)} and columns "
                f"{sorted(columns)}; the replay holds {sorted(self._obs_specs)} and {sorted(schema.COLUMNS)}."
            )
        named = {**{_obs(k): v for k, v in obs.items()}, schema.REWARD: columns[schema.REWARD],
                 schema.ACTION: columns[schema.ACTION]}
        for name, values in named.items():
            if schema.nonfinite_rows(np.asarray(values)).any():
                raise DatasetError(
                    f"Cannot add rows to the replay: their {name} holds NaN or inf. A world model trained "
                    "on NaN or inf learns nothing useful; fix the env or the data that produced it."
                )
        start = self._append_rows(obs, columns)
        firsts = np.flatnonzero(np.asarray(columns[schema.IS_FIRST], bool)) + start
        self._episode_starts.extend(int(row) for row in firsts)
        return start

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

    def __enter__(self) -> ColumnStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_files", None):
            self.close()

    def __repr__(self) -> str:
        disk = f", disk_keys={list(self.disk_keys)}" if self.disk_keys else ""
        return f"ColumnStore(rows={self._rows}, episodes={self.num_episodes}{disk})"

    # --- rows -----------------------------------------------------------------------------

    def _memory_specs(self) -> dict[str, Spec]:
        """Specs of the in-memory columns, keyed like :attr:`placement`."""
        specs = {_obs(k): spec for k, spec in self._obs_specs.items() if k not in self.disk_keys}
        specs.update(self._column_specs)
        return specs

    def _append_rows(
        self, obs: Mapping[str, np.ndarray], columns: Mapping[str, np.ndarray]
    ) -> int:
        """Write already validated rows after the last row; returns the first new row.

        ``obs`` maps every observation key and ``columns`` every name of ``schema.COLUMNS``
        to ``[n, ...]`` arrays. Episode bookkeeping is the caller's.
        """
        rows = len(columns[schema.REWARD])
        start = self._rows
        stop = start + rows
        self._memory.reserve(stop, used=start)
        arrays = self._memory.arrays
        for key in self._obs_specs:
            if key not in self.disk_keys:
                arrays[_obs(key)][start:stop] = obs[key]
        for name in schema.COLUMNS:
            arrays[name][start:stop] = columns[name]
        if self.disk_keys:
            self._append_tail(obs, start, rows)
        self._rows = stop
        return start

    def _append_tail(self, obs: Mapping[str, np.ndarray], start: int, rows: int) -> None:
        """Keep appended rows of the on-disk keys in memory, in the last (tail) segment."""
        tail = self._segments[-1] if self._segments else None
        if tail is None or tail.tail is None:
            specs = {k: self._obs_specs[k] for k in self.disk_keys}
            tail = _Segment(start, 0, tail=_GrowingColumns(specs))
            self._segments.append(tail)
            self._segment_starts.append(start)
        tail.tail.reserve(tail.rows + rows, used=tail.rows)
        for key in self.disk_keys:
            tail.tail.arrays[key][tail.rows : tail.rows + rows] = obs[key]
        tail.rows += rows

    # --- loading --------------------------------------------------------------------------

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

    def _load(self, refs: list[EpisodeRef]) -> None:
        """Read every in-memory column straight into the big arrays, one read per run.

        A run is a stretch of episodes stored back to back in one shard (normally the whole
        shard), so it is one slice of each ``steps/`` column.
        """
        total = int(sum(ref.rows for ref in refs))
        self._memory = _GrowingColumns(self._memory_specs(), capacity=total)
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
        self._segment_starts = [segment.start for segment in self._segments]
        for segment in self._segments:
            self._load_segment(segment)
        self._rows = row
        self._check_values()
        if not self.disk_keys:
            self._segments, self._segment_starts = [], []
            self.close()  # everything is in memory: no file needs to stay open

    def _load_segment(self, segment: _Segment) -> None:
        assert segment.shard is not None
        lo, hi = segment.offset, segment.offset + segment.rows
        rows = np.s_[segment.start : segment.start + segment.rows]  # in the global arrays
        arrays = self._memory.arrays
        column = "(file)"
        try:
            steps = self._file(segment.shard)[schema.STEPS_GROUP]
            for key, (shape, _) in self._obs_specs.items():
                column = f"obs/{key}"
                source = steps[schema.OBS_GROUP][key]
                _check_column(segment.shard, column, source, shape, hi)
                if key not in self.disk_keys:
                    source.read_direct(arrays[_obs(key)], np.s_[lo:hi], rows)
            for name, (shape, _) in self._column_specs.items():
                column = name
                source = steps[name]
                _check_column(segment.shard, name, source, shape, hi)
                source.read_direct(arrays[name], np.s_[lo:hi], rows)
        except (KeyError, OSError) as exc:
            raise _DamagedShard(
                segment.shard, store.damaged_column_message(segment.shard, column, lo, hi, exc)
            ) from None

    def _check_values(self) -> None:
        """Refuse loaded rows that no writer of this package produces (vectorised, once).

        Checks the in-memory columns: flags against the episode index, discrete actions
        inside the action space (rows after an episode's first), and NaN or inf in rewards,
        float actions and vector observations. Images (uint8) need no check.

        Raises:
            _DamagedShard: the first shard with a bad row, naming the column and its rows.
        """
        n = self._rows
        if n == 0:
            return
        arrays = self._memory.arrays
        starts = np.asarray(self._episode_starts, dtype=np.int64)
        first = np.zeros(n, dtype=bool)
        first[starts] = True
        last = np.zeros(n, dtype=bool)
        last[starts[1:] - 1] = True
        last[-1] = True
        # Flags are compared byte-wise: a byte other than 0 or 1 is damage too.
        flag_bytes = {name: arrays[name][:n].view(np.uint8) for name in schema.FLAGS}
        checks = [
            (schema.IS_FIRST, flag_bytes[schema.IS_FIRST] != first,
             "disagrees with the episode index (is_first must be set on the first row of every "
             "episode and nowhere else)"),
            (schema.IS_LAST, flag_bytes[schema.IS_LAST] != last,
             "disagrees with the episode index (is_last must be set on the last row of every "
             "episode and nowhere else)"),
            (schema.IS_TERMINAL, (flag_bytes[schema.IS_TERMINAL] > 1) | ((flag_bytes[schema.IS_TERMINAL] == 1) & ~last),
             "is set on a row that is not the last of its episode (or holds a byte other than 0 or 1)"),
        ]
        for name, bad, reason in checks:
            if bad.any():
                self._refuse(name, bad, flag_bytes[name], what=reason)
        # Whole-column reductions first (no temporaries; min and max are NaN when any value
        # is); the per-row masks are only computed for a column that fails them.
        action = arrays[schema.ACTION][:n]
        if not _action_bounds_ok(action, self.action_space):
            bad = _blockwise(lambda a: schema.action_bad_rows(a, self.action_space), action)
            bad &= ~first  # an episode's first row holds a zero action, which need not be in the space
            if bad.any():
                self._refuse(schema.ACTION, bad, action, what=f"holds actions outside {self.action_space}")
        floats = [(schema.REWARD, arrays[schema.REWARD][:n])]
        floats += [(_obs(k), arrays[_obs(k)][:n]) for k, (_, dtype) in self._obs_specs.items()
                   if k not in self.disk_keys and dtype.kind == "f"]
        for name, values in floats:
            if not _finite(values):
                self._refuse(name, _blockwise(schema.nonfinite_rows, values), values, what="holds NaN or inf")

    def _refuse(self, column: str, bad: np.ndarray, values: np.ndarray, what: str) -> None:
        """Raise for the first shard holding a bad row: its rows (shard numbering) and a value."""
        rows = np.flatnonzero(bad)
        index = int(np.searchsorted(self._segment_starts, rows[0], side="right")) - 1
        segment = self._segments[index]
        inside = rows[(rows >= segment.start) & (rows < segment.start + segment.rows)]
        local = inside - segment.start + segment.offset
        shown = ", ".join(str(r) for r in local[:5].tolist())
        more = f" and {len(local) - 5} more" if len(local) > 5 else ""
        value = np.asarray(values[rows[0]]).ravel().tolist()
        value = value[0] if len(value) == 1 else value
        assert segment.shard is not None
        raise _DamagedShard(
            segment.shard,
            f"Shard {segment.shard} holds invalid data: its column steps/{column} {what} at "
            f"rows {shown}{more} of the shard (e.g. {value} at row {local[0]}). No writer of "
            "dreamer-core stores that, so the shard was changed after writing or written by "
            f"another tool. To go on, {store.DAMAGED_SHARD_FIX}",
        )

    # --- disk reads -----------------------------------------------------------------------

    def _file(self, path: Path) -> h5py.File:
        handle = self._files.get(path)
        if handle is None:
            handle = h5py.File(path, "r", rdcc_nbytes=self._chunk_cache_bytes)
            self._files[path] = handle
        return handle

    def _source(self, index: int, key: str) -> np.ndarray | h5py.Dataset:
        """Rows of ``key`` for segment ``index``: an array (the tail) or an HDF5 dataset."""
        segment = self._segments[index]
        if segment.tail is not None:
            return segment.tail.arrays[key]
        if segment.handles is None:
            assert segment.shard is not None
            obs = self._file(segment.shard)[schema.STEPS_GROUP][schema.OBS_GROUP]
            segment.handles = {k: _open_for_windows(obs, k) for k in self.disk_keys}
        return segment.handles[key]

    def _read_disk_windows(self, key: str, starts: np.ndarray, length: int) -> np.ndarray:
        """Read the windows of an on-disk key, one HDF5 slice per shard piece.

        Shapes:
            starts: [B]  ->  [B, T, ...]  with T = length
        """
        T = length
        shape, dtype = self._obs_specs[key]
        out = np.empty((len(starts), T, *shape), dtype)  # [B, T, Hi, Wi, C]
        first = np.searchsorted(self._segment_starts, starts, side="right") - 1  # [B]
        for b, (start, index) in enumerate(zip(starts.tolist(), first.tolist(), strict=True)):
            filled = 0
            while filled < T:  # a window may span several shards (or reach the tail)
                segment = self._segments[index]
                lo = start + filled - segment.start
                n = min(segment.rows - lo, T - filled)
                source = self._source(index, key)
                if isinstance(source, np.ndarray):
                    out[b, filled : filled + n] = source[lo : lo + n]
                else:
                    lo += segment.offset
                    try:
                        source.read_direct(out, np.s_[lo : lo + n], np.s_[b, filled : filled + n])
                    except OSError as exc:
                        assert segment.shard is not None
                        raise DatasetError(store.damaged_column_message(
                            segment.shard, f"obs/{key}", lo, lo + n, exc)) from None
                filled += n
                index += 1
        return out


class _GrowingColumns:
    """Named columns that share one row capacity and grow geometrically.

    Attributes:
        arrays: name -> ``[capacity, ...]`` array; only the rows written so far are data.
    """

    def __init__(self, specs: Mapping[str, Spec], capacity: int = 0):
        self.specs = dict(specs)
        self.capacity = capacity
        self.arrays = _empty_columns(self.specs, capacity)

    def reserve(self, rows: int, used: int) -> None:
        """Make room for ``rows`` rows, keeping the first ``used``."""
        if rows <= self.capacity:
            return
        capacity = max(rows, int(self.capacity * _GROWTH) + 1024)
        old, self.arrays = self.arrays, _empty_columns(self.specs, capacity)
        for name, array in old.items():
            self.arrays[name][:used] = array[:used]
        self.capacity = capacity

    def used_bytes(self, used: int) -> int:
        """Bytes of the first ``used`` rows of all columns."""
        return used * sum(schema.column_bytes(*spec) for spec in self.specs.values())


class _Segment:
    """Consecutive global rows of the on-disk keys: a run of a shard's rows, or the tail.

    Attributes:
        start: global index of the first row; rows: number of rows.
        shard, offset: the shard holding the rows at ``steps/...[offset : offset + rows]``.
        tail: for appended rows, the on-disk keys' rows held in memory instead.
        handles: the open HDF5 datasets of the on-disk keys (filled on first read).
    """

    __slots__ = ("start", "rows", "shard", "offset", "tail", "handles")

    def __init__(
        self,
        start: int,
        rows: int,
        *,
        shard: Path | None = None,
        offset: int = 0,
        tail: _GrowingColumns | None = None,
    ):
        self.start = start
        self.rows = rows
        self.shard = shard
        self.offset = offset
        self.tail = tail
        self.handles: dict[str, h5py.Dataset] | None = None


def dataset_list(datasets: Dataset | Sequence[Dataset]) -> list[Dataset]:
    """``datasets`` as a non-empty list of datasets with equal spaces.

    Raises:
        DatasetError: no datasets.
        SpacesMismatchError: datasets with different observation or action spaces.
    """
    datasets = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    if not datasets:
        raise DatasetError(
            "The sampler got no datasets. Pass at least one dataset directory (collect one "
            "with `dreamer collect --env ENV_ID --out DIR`); an online replay that starts "
            "empty is made with SequenceSampler(ColumnStore(observation_space, action_space), "
            "batch_size, seq_len)."
        )
    for other in datasets[1:]:
        _check_same_spaces(datasets[0], other)
    return datasets


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

    The cache pays off only for filtered chunks (a hit saves a decompression or a checksum
    pass over the whole chunk: measured 9.4 instead of 12.7 ms per [16, 64] batch of 64x64x3
    frames for checksummed, uncompressed chunks); for raw chunks (no filter at all: shards
    written before checksums) it only adds a copy (measured about 30% slower).
    """
    # The probe handle must be gone before reopening: HDF5 shares one open dataset object
    # and would keep the first handle's cache settings.
    raw = group[name].id.get_create_plist().get_nfilters() == 0
    if not raw:
        return group[name]
    access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    access.set_chunk_cache(0, 0, 1.0)
    return h5py.Dataset(h5py.h5d.open(group.id, name.encode(), dapl=access))


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


class _DamagedShard(DatasetError):
    """A shard whose columns cannot be read or hold invalid values (see ``from_datasets``)."""

    def __init__(self, shard: Path, message: str):
        super().__init__(message)
        self.shard = shard


def _finite(values: np.ndarray) -> bool:
    """True when every value is finite (min and max are NaN or inf otherwise)."""
    if values.size == 0 or values.dtype.kind not in "fc":
        return True
    return bool(np.isfinite(values.min()) and np.isfinite(values.max()))


def _action_bounds_ok(action: np.ndarray, space: gym.Space) -> bool:
    """A quick pass over the whole action column; False means: compute the per-row mask."""
    if action.size == 0:
        return True
    if isinstance(space, gym.spaces.Box):
        return _finite(action)
    if isinstance(space, gym.spaces.Discrete):
        start = int(space.start)
        return bool(action.min() >= start and action.max() < start + int(space.n))
    if isinstance(space, gym.spaces.MultiDiscrete):
        start = np.broadcast_to(np.asarray(getattr(space, "start", 0), np.int64), space.nvec.shape).ravel()
        stop = start + space.nvec.ravel()
        if action.min() >= start.min() and action.max() < stop.min():
            return True  # every dimension's range holds the whole column's
        flat = action.reshape(len(action), -1)  # per dimension (a reduction along axis 0 is slow)
        return all(flat[:, j].min() >= start[j] and flat[:, j].max() < stop[j] for j in range(flat.shape[1]))
    if isinstance(space, gym.spaces.MultiBinary):
        return bool(action.min() >= 0 and action.max() <= 1)
    return True


def _blockwise(test, values: np.ndarray) -> np.ndarray:
    """``test(values)`` (a bool ``[rows]`` mask) in blocks of rows, so temporaries stay small."""
    rows = len(values)
    per_row = max(1, int(np.prod(values.shape[1:], dtype=np.int64)))
    block = max(1, _CHECK_BLOCK // per_row)
    if rows <= block:
        return test(values)
    return np.concatenate([test(values[i : i + block]) for i in range(0, rows, block)])


def _empty_columns(specs: Mapping[str, Spec], capacity: int) -> dict[str, np.ndarray]:
    return {name: np.empty((capacity, *shape), dtype) for name, (shape, dtype) in specs.items()}


def _obs(key: str) -> str:
    """The column name of observation key ``key`` (as in :attr:`ColumnStore.placement`)."""
    return f"obs/{key}"
