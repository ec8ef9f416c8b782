"""Tests of data/storage.py on its own: placement, growth, window reads and files of a ColumnStore.

Reads are checked against the episodes themselves (``Dataset.load_episode`` for stored ones,
the appended ``Episode`` objects otherwise); the sampler's randomness is not involved.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from dreamer_core.data import schema
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.schema import Episode
from dreamer_core.data.storage import ColumnStore
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.errors import DatasetError, SpacesMismatchError
from tests.common import ACTION_SPACES, OBS_SPACES, VECTOR, make_episode

# Two image keys of different sizes (placement loads the smaller first) and a vector key.
TWO_IMAGES = gym.spaces.Dict({
    "big": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
    "small": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
    "vector": VECTOR,
})
COLUMN_NAMES = [f"obs/{k}" for k in ("big", "small", "vector")] + list(schema.COLUMNS)


def write(path: Path, steps: list[int], space: gym.spaces.Dict = TWO_IMAGES, action: str = "discrete",
          shard_episodes: int = 2, compression: str = "lzf", first_id: int = 0) -> Dataset:
    episodes = [make_episode(space, ACTION_SPACES[action], n, terminated=i % 2 == 0, episode_id=first_id + i)
                for i, n in enumerate(steps)]
    with DatasetWriter(path, "Synthetic-v0", {}, space, ACTION_SPACES[action], shard_episodes=shard_episodes,
                       compression=compression) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    return Dataset(path)


def columns_of(episode: Episode) -> dict[str, np.ndarray]:
    columns = {f"obs/{k}": v for k, v in episode.obs.items()}
    columns.update({name: getattr(episode, name) for name in schema.COLUMNS})
    return columns


def concat(episodes: list[Episode]) -> dict[str, np.ndarray]:
    parts = [columns_of(e) for e in episodes]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def assert_rows(store: ColumnStore, start: int, expected: dict[str, np.ndarray]) -> None:
    """One window of ``len(expected rows)`` rows from ``start`` equals ``expected`` column by column."""
    length = len(expected[schema.REWARD])
    got = store.gather([start], length)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == (1, *value.shape), name
        np.testing.assert_array_equal(got[name][0], value, err_msg=name)


def small_bytes(rows: int) -> int:
    """Bytes of the columns that are always in memory (vector obs, action, reward, flags)."""
    action = schema.column_bytes(*schema.action_column_spec(ACTION_SPACES["discrete"]))
    return rows * (VECTOR.shape[0] * 4 + action + 4 + 3)


def image_bytes(rows: int, key: str) -> int:
    return rows * int(np.prod(TWO_IMAGES[key].shape))


# --- placement -------------------------------------------------------------------------------


def test_placement_follows_the_memory_budget(tmp_path):
    dataset = write(tmp_path / "d", [5, 3, 9])
    rows = dataset.num_rows
    everything = small_bytes(rows) + image_bytes(rows, "big") + image_bytes(rows, "small")
    cases = {
        None: (),  # default budget (4 GiB): all in memory
        everything: (),  # exactly fits
        everything - 1: ("big",),  # the smaller image still fits, the larger does not
        small_bytes(rows) + image_bytes(rows, "small"): ("big",),
        small_bytes(rows) + image_bytes(rows, "small") - 1: ("big", "small"),
        0: ("big", "small"),  # small columns are loaded whatever the budget
    }
    for budget, disk in cases.items():
        kwargs = {} if budget is None else {"memory_budget": budget}
        with ColumnStore.from_datasets(dataset, **kwargs) as store:
            assert store.disk_keys == disk, budget
            assert store.in_memory is (not disk)
            assert store.placement == {
                name: "disk" if name.removeprefix("obs/") in disk else "memory" for name in COLUMN_NAMES
            }
            on_disk = sum(image_bytes(rows, key) for key in disk)
            assert store.memory_bytes == everything - on_disk
            assert store.num_rows == rows and store.num_episodes == 3
            assert list(store.episode_starts) == [0, 6, 10]


def test_spare_budget_becomes_the_chunk_cache(tmp_path):
    dataset = write(tmp_path / "d", [4, 4, 4, 4], shard_episodes=2)  # two shards
    rows = dataset.num_rows
    spare = image_bytes(rows, "small") - 1  # too little for any image key
    store = ColumnStore.from_datasets(dataset, memory_budget=small_bytes(rows) + spare)
    assert store.disk_keys == ("big", "small")
    assert store.chunk_cache_bytes == spare // (2 * 2)  # two shards, two on-disk keys
    assert ColumnStore.from_datasets(dataset, memory_budget=0).chunk_cache_bytes == 0
    assert ColumnStore.from_datasets(dataset).chunk_cache_bytes == 0  # in memory: no cache


def test_invalid_datasets_and_budget(tmp_path):
    with pytest.raises(DatasetError, match="no datasets"):
        ColumnStore.from_datasets([])
    first = write(tmp_path / "a", [3])
    other = write(tmp_path / "b", [3], action="box")
    with pytest.raises(SpacesMismatchError, match="same spaces"):
        ColumnStore.from_datasets([first, other])
    with pytest.raises(ValueError, match="memory_budget"):
        ColumnStore.from_datasets(first, memory_budget=-1)


# --- reads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["lzf", "none"])
@pytest.mark.parametrize("budget", [None, 0, "partial"])
def test_reads_equal_the_episodes(tmp_path, budget, compression):
    first = write(tmp_path / "a", [5, 1, 12, 3, 8], shard_episodes=2, compression=compression)
    second = write(tmp_path / "b", [6, 2], first_id=5, compression=compression)
    first.refs = [first.refs[i] for i in (0, 2, 3, 4)]  # a filtered dataset skips rows of a shard
    rows = first.num_rows + second.num_rows
    kwargs = {
        None: {}, 0: {"memory_budget": 0},
        "partial": {"memory_budget": small_bytes(rows) + image_bytes(rows, "small") + 500},
    }[budget]
    store = ColumnStore.from_datasets([first, second], **kwargs)
    assert store.in_memory is (budget is None)
    episodes = [d.load_episode(ref) for d in (first, second) for ref in d.refs]
    for start, episode in zip(store.episode_starts.tolist(), episodes, strict=True):
        assert_rows(store, start, columns_of(episode))  # each episode, whole
    reference = concat(episodes)
    length = 7  # windows across episodes and shards, and from both datasets
    starts = np.arange(store.num_rows - length + 1)
    got = store.gather(starts, length)
    assert list(got) == COLUMN_NAMES  # keyed like placement, obs keys first
    for name, value in got.items():
        for b, s in enumerate(starts):
            np.testing.assert_array_equal(value[b], reference[name][s : s + length], err_msg=name)
    store.close()


def test_reads_are_fresh_arrays_and_starts_are_checked(tmp_path):
    store = ColumnStore.from_datasets(write(tmp_path / "d", [9]))
    window = store.gather([0, 0], 4)
    window["obs/big"][:] = 0
    window[schema.REWARD][:] = -1
    again = store.gather([0, 0], 4)
    assert again["obs/big"].any() and not (again[schema.REWARD] == -1).any()
    assert store.gather([], 4)[schema.REWARD].shape == (0, 4)
    for bad in ([7], [-1]):  # 10 rows: windows of 4 start in [0, 6]
        with pytest.raises(IndexError, match=r"\[0, 6\]"):
            store.gather(bad, 4)


# --- appending -------------------------------------------------------------------------------


@pytest.mark.parametrize("space", ["image", "dict"])
def test_an_empty_store_grows_and_keeps_earlier_rows(space):
    obs_space, action_space = OBS_SPACES[space], ACTION_SPACES["box"]
    store = ColumnStore(obs_space, action_space)
    assert store.num_rows == 0 and store.num_episodes == 0 and store.memory_bytes == 0
    assert store.in_memory and set(store.placement.values()) == {"memory"}
    with pytest.raises(IndexError):
        store.gather([0], 1)
    # 3000 rows: the columns are reallocated more than once (growth starts at 1024 rows).
    episodes = [make_episode(obs_space, action_space, n, terminated=True, episode_id=i)
                for i, n in enumerate([3, 1, 1200, 7, 1800])]
    starts = []
    for episode in episodes:
        starts.append(store.num_rows)
        store.add_episode(episode)
        assert_rows(store, 0, concat(episodes[: len(starts)]))  # everything so far, unchanged
    assert list(store.episode_starts) == starts and store.num_episodes == 5
    row_bytes = sum(schema.column_bytes(*schema.obs_column_spec(s)) for s in obs_space.spaces.values())
    row_bytes += schema.column_bytes(*schema.action_column_spec(action_space)) + 4 + 3
    assert store.memory_bytes == store.num_rows * row_bytes
    with pytest.raises(DatasetError, match="Cannot add the episode"):
        store.add_episode(make_episode(OBS_SPACES["vector"], action_space, 3, terminated=False))
    assert store.num_rows == sum(e.rows for e in episodes)  # a rejected episode adds nothing


def test_appending_to_an_on_disk_store_keeps_the_rows_in_memory(tmp_path):
    dataset = write(tmp_path / "d", [6, 4])
    store = ColumnStore.from_datasets(dataset, memory_budget=0)
    before = store.memory_bytes
    added = [make_episode(TWO_IMAGES, ACTION_SPACES["discrete"], n, terminated=False, episode_id=10 + i)
             for i, n in enumerate([2, 1500, 3])]
    for episode in added:
        store.add_episode(episode)
    assert store.disk_keys == ("big", "small") and store.num_episodes == 5
    on_disk_keys = image_bytes(1, "big") + image_bytes(1, "small")
    added_rows = sum(e.rows for e in added)
    assert store.memory_bytes == before + added_rows * (small_bytes(1) + on_disk_keys)
    episodes = [dataset.load_episode(ref) for ref in dataset.refs] + added
    reference = concat(episodes)
    starts = [0, 5, 9, 10, 12, 13, 1510, store.num_rows - 8]  # shard -> appended rows, across appends
    got = store.gather(starts, 8)
    for name, value in got.items():
        for b, s in enumerate(starts):
            np.testing.assert_array_equal(value[b], reference[name][s : s + 8], err_msg=name)


# --- files -----------------------------------------------------------------------------------


def test_close_releases_the_shards_and_reads_reopen_them(tmp_path):
    dataset = write(tmp_path / "d", [5, 5], shard_episodes=1)
    shards = sorted((tmp_path / "d").glob("shard-*.h5"))
    assert len(shards) == 2
    in_memory = ColumnStore.from_datasets(dataset)
    h5py.File(shards[0], "a").close()  # loading everything leaves no file open
    expected = in_memory.gather([0, 4], 5)
    with ColumnStore.from_datasets(dataset, memory_budget=0) as store:
        assert store.gather([0, 4], 5)["obs/big"].any()
        with pytest.raises(OSError):  # still open for reading by the store
            h5py.File(shards[0], "a")
    for shard in shards:  # the context manager closed them
        h5py.File(shard, "a").close()
    got = store.gather([0, 4], 5)  # reopens on demand
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    store.close()
    store.close()  # idempotent
    assert "disk_keys" in repr(store) and "disk_keys" not in repr(in_memory)


# --- layering --------------------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_data_and_types_import_nothing_above_them():
    package = Path(schema.__file__).parents[1]  # dreamer_core/
    bottom = {"dreamer_core", "dreamer_core.errors", "dreamer_core.files", "dreamer_core.runtime",
              "dreamer_core.types"}
    for path in sorted((package / "data").glob("*.py")):
        ours = {m for m in imported_modules(path) if m.split(".")[0] == "dreamer_core"}
        above = {m for m in ours if m not in bottom and not m.startswith("dreamer_core.data")}
        assert not above, f"{path.name} imports {sorted(above)}"
    assert "torch" not in imported_modules(package / "data" / "storage.py")
    assert not {m for m in imported_modules(package / "types.py") if m.startswith("dreamer_core")}
