"""Damaged or invalid data is refused with the shard, the column and the rows; never learned.

Checksums (Fletcher-32 per chunk) catch bytes changed on disk; the load-time checks catch
values no dreamer-core writer stores (a shard edited or written by another tool); the
manifest digest catches an edited dataset.json. Valid data loads exactly as before.
"""

import copy
import errno
import json
import os

import gymnasium as gym
import h5py
import numpy as np
import pytest

from dreamer_core.data import schema, store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.data.storage import ColumnStore
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.errors import DatasetError
from tests.common import ACTION_SPACES, OBS_SPACES, make_episode


def write(path, obs_space, action_space, count=4, steps=9, shard_episodes=2, **kwargs):
    episodes = [make_episode(obs_space, action_space, steps, i % 2 == 0, i) for i in range(count)]
    with DatasetWriter(path, "Test-v0", {}, obs_space, action_space, shard_episodes=shard_episodes,
                       **kwargs) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    return episodes


def edit(shard, column, row, value):
    """Overwrite one stored value the way another tool would (HDF5 recomputes the checksum)."""
    with h5py.File(shard, "r+") as f:
        data = f[f"steps/{column}"][()]
        data[row] = value
        f[f"steps/{column}"][...] = data


def flip_byte(shard, column, chunk=0, at=0):
    """Damage one stored chunk on disk, behind HDF5's back."""
    with h5py.File(shard, "r") as f:
        info = f[f"steps/{column}"].id.get_chunk_info(chunk)
        offset = info.byte_offset + min(at, info.size - 1)
    with open(shard, "r+b") as raw:
        raw.seek(offset)
        byte = raw.read(1)
        raw.seek(offset)
        raw.write(bytes([byte[0] ^ 0xFF]))


# --- checksums ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["lzf", "gzip", "none"])
def test_every_column_of_a_new_shard_is_checksummed(tmp_path, compression):
    episodes = write(tmp_path / "ds", OBS_SPACES["dict"], ACTION_SPACES["box"], compression=compression)
    shard = store.shard_paths(tmp_path / "ds")[0]
    columns = []
    with h5py.File(shard, "r") as f:
        f.visititems(lambda name, node: columns.append((name, node)) if isinstance(node, h5py.Dataset) else None)
        assert len(columns) == 3 + len(schema.COLUMNS) + len(schema.EPISODE_INDEX)
        for name, node in columns:
            assert node.fletcher32, name
            assert node.chunks is not None, name
        assert f["steps/obs/image"].compression == (None if compression == "none" else compression)
    ds = Dataset(tmp_path / "ds")  # every reading path reads checksummed chunks as before
    for placement in (1 << 30, 0):  # in memory; images read window by window from the shards
        with ColumnStore.from_datasets(ds, memory_budget=placement) as columns_store:
            rows = columns_store.gather([0], ds.refs[0].rows)
            np.testing.assert_array_equal(rows["obs/image"][0], episodes[0].obs["image"])
    np.testing.assert_array_equal(ds.load_episode(3).obs["vector"], episodes[3].obs["vector"])
    assert [e.rows for e in ds.iter_episodes()] == [e.rows for e in episodes]


@pytest.mark.parametrize("column", ["obs/vector", "reward", "action", "is_first"])
def test_damaged_chunk_is_named_when_the_replay_loads(tmp_path, column):
    write(tmp_path / "ds", OBS_SPACES["vector"], ACTION_SPACES["discrete"])
    first, second = store.shard_paths(tmp_path / "ds")
    flip_byte(second, column, at=5)
    with pytest.raises(DatasetError) as info:
        SequenceSampler(Dataset(tmp_path / "ds"), batch_size=2, seq_len=4)
    message = str(info.value)
    assert str(second) in message and f"steps/{column}" in message and "checksum" in message
    assert "move the shard out" in message and "--skip-corrupt" in message
    assert "train-world-model" in message  # --skip-corrupt named with the commands that have it
    ds = Dataset(tmp_path / "ds", skip_corrupt=True)
    sampler = SequenceSampler(ds, batch_size=2, seq_len=4)  # the rest of the dataset loads
    assert sampler.num_rows == sum(Dataset(tmp_path / "ds").shards[0].rows)
    assert [path for path, _ in ds.skipped] == [second] and ds.num_episodes == 2


def test_damaged_image_chunk_read_from_disk_names_shard_and_column(tmp_path):
    write(tmp_path / "ds", OBS_SPACES["image"], ACTION_SPACES["discrete"], count=2, steps=40,
          shard_episodes=10)
    (shard,) = store.shard_paths(tmp_path / "ds")
    flip_byte(shard, "obs/image", chunk=1, at=100)  # rows 32:64
    ds = Dataset(tmp_path / "ds")
    with ColumnStore.from_datasets(ds, memory_budget=0) as columns:
        assert columns.disk_keys == ("image",)
        columns.gather([0], 30)  # rows of the intact chunk read fine
        with pytest.raises(DatasetError) as info:
            columns.gather([20], 30)
    message = str(info.value)
    assert str(shard) in message and "steps/obs/image" in message and "checksum" in message
    with pytest.raises(DatasetError, match="steps/obs/image.*move the shard out") as info:
        ds.load_episode(0)
    assert "--skip-corrupt" not in str(info.value)  # dream, evaluate and export have no such flag
    with pytest.raises(DatasetError, match="steps/obs/image"):
        list(ds.iter_episodes())
    with pytest.raises(DatasetError, match="steps/obs/image"):
        ColumnStore.from_datasets(ds)  # in memory: found at load


# --- values no writer stores -------------------------------------------------------------------

OUT_OF_RANGE = {
    "discrete": (ACTION_SPACES["discrete"], 4),
    "discrete-negative": (ACTION_SPACES["discrete"], -1),
    "discrete-start": (gym.spaces.Discrete(3, start=1), 4),
    "multidiscrete": (ACTION_SPACES["multidiscrete"], [0, 5]),
    "multibinary": (ACTION_SPACES["multibinary"], [0] * 11 + [2]),
    "box": (ACTION_SPACES["box"], [np.nan, 0.0]),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_actions_outside_the_space_are_refused_at_load(tmp_path, case):
    action_space, value = OUT_OF_RANGE[case]
    write(tmp_path / "ds", OBS_SPACES["vector"], action_space)
    ds = Dataset(tmp_path / "ds")
    assert ColumnStore.from_datasets(ds).num_rows == ds.num_rows  # valid first (start=1 too)
    _, second = store.shard_paths(tmp_path / "ds")
    edit(second, "action", 7, value)
    edit(second, "action", 12, value)
    with pytest.raises(DatasetError) as info:
        ColumnStore.from_datasets(Dataset(tmp_path / "ds"))
    message = str(info.value)
    assert str(second) in message and "steps/action" in message
    assert "rows 7, 12 of the shard" in message and "--skip-corrupt" in message
    assert ColumnStore.from_datasets(Dataset(tmp_path / "ds", skip_corrupt=True)).num_episodes == 2


@pytest.mark.parametrize("column, key", [("reward", None), ("obs/vector", None), ("obs/joints", "dict")])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_a_stored_shard_is_refused_at_load(tmp_path, column, key, value):
    obs_space = OBS_SPACES[key or "vector"]
    write(tmp_path / "ds", obs_space, ACTION_SPACES["discrete"])
    first, _ = store.shard_paths(tmp_path / "ds")
    edit(first, column, 3, value)
    with pytest.raises(DatasetError, match="NaN or inf") as info:
        SequenceSampler(Dataset(tmp_path / "ds"), batch_size=2, seq_len=4)
    assert str(first) in str(info.value) and f"steps/{column}" in str(info.value)
    assert "rows 3 of the shard" in str(info.value)


@pytest.mark.parametrize("column, row, value, words", [
    ("is_first", 4, True, "is_first must be set"),
    ("is_first", 0, False, "is_first must be set"),
    ("is_last", 3, True, "is_last must be set"),
    ("is_terminal", 2, True, "not the last of its episode"),
])
def test_flags_that_disagree_with_the_episode_index_are_refused(tmp_path, column, row, value, words):
    write(tmp_path / "ds", OBS_SPACES["vector"], ACTION_SPACES["discrete"])
    first, _ = store.shard_paths(tmp_path / "ds")
    edit(first, column, row, value)
    with pytest.raises(DatasetError, match=words) as info:
        ColumnStore.from_datasets(Dataset(tmp_path / "ds"))
    assert str(first) in str(info.value) and f"rows {row} of the shard" in str(info.value)


def test_views_of_a_dataset_skip_the_bad_shard_each(tmp_path):
    """The world-model stage splits a dataset into train and held-out views of its refs."""
    write(tmp_path / "ds", OBS_SPACES["vector"], ACTION_SPACES["discrete"], count=6)
    _, second, _ = store.shard_paths(tmp_path / "ds")
    edit(second, "action", 12, 9)  # episode 3 (the held-out view's); only the rows read are checked
    ds = Dataset(tmp_path / "ds", skip_corrupt=True)
    train, val = copy.copy(ds), copy.copy(ds)
    train.refs, val.refs = ds.refs[::2], ds.refs[1::2]
    assert ColumnStore.from_datasets(train).num_episodes == 3 and train.skipped == []
    assert ColumnStore.from_datasets(val).num_episodes == 2
    assert [p for p, _ in val.skipped] == [second]
    assert len(ds.refs) == 6  # the views were filtered, not the dataset they came from


def test_a_dataset_of_only_bad_shards_says_so(tmp_path):
    write(tmp_path / "ds", OBS_SPACES["vector"], ACTION_SPACES["discrete"], count=2)
    (shard,) = store.shard_paths(tmp_path / "ds")
    edit(shard, "reward", 1, np.nan)
    with pytest.raises(DatasetError, match="Every shard of the dataset"):
        ColumnStore.from_datasets(Dataset(tmp_path / "ds", skip_corrupt=True))


# --- NaN at collection and in the replay ----------------------------------------------------------


@pytest.mark.parametrize("column, row", [("obs/vector", 5), ("reward", 3), ("obs/vector", 0)])
def test_writer_refuses_nan_after_writing_the_episodes_before_it(tmp_path, column, row):
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    w = DatasetWriter(tmp_path / "ds", "Pendulum-v1", {}, obs_space, action_space, shard_episodes=100)
    for i in range(3):
        w.add_episode(make_episode(obs_space, action_space, 9, True, i))
    bad = make_episode(obs_space, action_space, 9, True, 3)
    if column == "reward":
        bad.reward[row] = np.inf
    else:
        bad.obs["vector"][row, 2] = np.nan
    with pytest.raises(DatasetError) as info:
        w.add_episode(bad)
    message = str(info.value)
    assert "'Pendulum-v1'" in message and "episode 4" in message
    assert ("on reset (step 0)" if row == 0 else f"at step {row}") in message
    assert ("observation 'vector'" in message and "nan" in message) if column != "reward" else "reward inf" in message
    assert "3 episode(s) finished before it" in message
    assert store.partial_paths(tmp_path / "ds") == []
    ds = Dataset(tmp_path / "ds")  # the three good episodes were closed into a shard
    assert ds.num_episodes == 3
    w.discard()  # what the writer's context manager does on the way out: nothing more is lost
    assert Dataset(tmp_path / "ds").num_episodes == 3


def test_replay_refuses_nan_episodes(tmp_path):
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["box"]
    replay = ColumnStore(obs_space, action_space)
    episode = make_episode(obs_space, action_space, 6, True)
    episode.action[4, 1] = np.nan
    with pytest.raises(DatasetError, match="action holds nan at row 4"):
        replay.add_episode(episode)
    assert replay.num_rows == 0


# --- the manifest -------------------------------------------------------------------------------


def test_edited_manifest_is_not_trusted(tmp_path):
    write(tmp_path / "ds", OBS_SPACES["vector"], ACTION_SPACES["discrete"], count=4)
    truth = Dataset(tmp_path / "ds").summary()
    manifest = tmp_path / "ds" / schema.MANIFEST_NAME
    data = json.loads(manifest.read_text())
    entry = next(iter(data["shards"].values()))
    entry["rows"] = [40_000_000] + entry["rows"][1:]  # what `data info` would report as steps
    stat = manifest.stat()
    manifest.write_text(json.dumps(data, indent=1))
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime; the shards untouched
    summary = Dataset(tmp_path / "ds").summary()
    assert summary["steps"] == truth["steps"] and summary["episodes"] == truth["episodes"]


def test_manifest_digest_lets_a_current_entry_be_used_without_opening_the_shard(tmp_path, monkeypatch):
    write(tmp_path / "ds", OBS_SPACES["vector"], ACTION_SPACES["discrete"], count=4)
    data = json.loads((tmp_path / "ds" / schema.MANIFEST_NAME).read_text())
    assert all(entry["digest"] == store.entry_digest(entry) for entry in data["shards"].values())

    def opened(path):
        raise AssertionError(f"{path} was opened although its manifest entry is current")

    monkeypatch.setattr(store, "read_shard_info", opened)
    assert Dataset(tmp_path / "ds").num_episodes == 4
    for entry in data["shards"].values():  # entries without a digest (older manifests) are rescanned
        del entry["digest"]
    (tmp_path / "ds" / schema.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(AssertionError, match="was opened"):
        Dataset(tmp_path / "ds")


def _old_manifest(path):
    """Rewrite the manifest the way versions before per-entry digests wrote it."""
    manifest = path / schema.MANIFEST_NAME
    data = json.loads(manifest.read_text())
    for entry in data["shards"].values():
        del entry["digest"]
    manifest.write_text(json.dumps(data, indent=1))
    return manifest


def _refuse_shard_reads(monkeypatch):
    def opened(path):
        raise AssertionError(f"{path} was opened although its manifest entry is current")

    monkeypatch.setattr(store, "read_shard_info", opened)


def test_old_manifest_gets_its_digests_on_the_first_open(tmp_path, monkeypatch):
    write(tmp_path / "ds", OBS_SPACES["vector"], ACTION_SPACES["discrete"], count=4)
    truth = Dataset(tmp_path / "ds").shards
    manifest = _old_manifest(tmp_path / "ds")
    assert Dataset(tmp_path / "ds").shards == truth  # read from the shards, then written back
    data = json.loads(manifest.read_text())
    assert all(entry["digest"] == store.entry_digest(entry) for entry in data["shards"].values())
    assert not [p for p in (tmp_path / "ds").iterdir() if p.name.endswith(".tmp")]  # written atomically
    _refuse_shard_reads(monkeypatch)
    assert Dataset(tmp_path / "ds").num_episodes == 4  # later opens read no shard


def test_old_manifest_of_a_read_only_dataset_still_opens(tmp_path, monkeypatch):
    write(tmp_path / "ds", OBS_SPACES["vector"], ACTION_SPACES["discrete"], count=4)
    manifest = _old_manifest(tmp_path / "ds")
    before = manifest.read_bytes()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode == os.W_OK else real_access(p, mode, **kw))
    assert Dataset(tmp_path / "ds").num_episodes == 4
    assert manifest.read_bytes() == before  # a directory that cannot be written is left alone
    monkeypatch.undo()

    def refused(*args, **kwargs):  # writable by its mode, refused by the file system (e.g. read-only)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store, "atomic_write_bytes", refused)
    assert Dataset(tmp_path / "ds").num_episodes == 4
    assert manifest.read_bytes() == before
