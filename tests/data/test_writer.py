"""Writer and reader: round trips, shard rotation, appends, and every bad-input case."""

import errno
import hashlib
import json

import h5py
import numpy as np
import pytest

from dreamer_core.data import schema, store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.writer import DatasetWriter, EpisodeBuilder, EpisodeRecorder
from dreamer_core.errors import DatasetError, SpacesMismatchError
from tests.common import ACTION_SPACES, OBS_SPACES, make_episode


def write(path, obs_space, action_space, episodes, **kwargs):
    with DatasetWriter(path, "Test-v0", {"id": "Test-v0"}, obs_space, action_space, **kwargs) as w:
        for ep in episodes:
            w.add_episode(ep)
    return w


def digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.shard_paths(path)}


@pytest.mark.parametrize("obs_kind", list(OBS_SPACES))
@pytest.mark.parametrize("action_kind", list(ACTION_SPACES))
def test_round_trip_every_space_kind(tmp_path, obs_kind, action_kind):
    obs_space, action_space = OBS_SPACES[obs_kind], ACTION_SPACES[action_kind]
    episodes = [make_episode(obs_space, action_space, steps=3 + i, terminated=i % 2 == 0, episode_id=i) for i in range(5)]
    write(tmp_path / "ds", obs_space, action_space, episodes, shard_episodes=2)
    ds = Dataset(tmp_path / "ds")
    assert len(ds.shards) == 3  # 2 + 2 + 1
    assert ds.num_episodes == 5 and ds.num_steps == sum(3 + i for i in range(5))
    assert schema.spaces_equal(ds.observation_space, obs_space)
    assert schema.spaces_equal(ds.action_space, action_space)
    for original, loaded in zip(episodes, ds.iter_episodes()):
        for name in schema.COLUMNS:
            np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name))
            assert getattr(loaded, name).dtype == getattr(original, name).dtype
        for key in obs_space.spaces:
            np.testing.assert_array_equal(loaded.obs[key], original.obs[key])
            assert loaded.obs[key].dtype == schema.obs_column_spec(obs_space[key])[1]
    summary = ds.summary()
    assert summary["episodes"] == 5
    assert summary["return_mean"] == pytest.approx(np.mean([e.ret for e in episodes]), rel=1e-5)


def test_images_are_uint8_and_chunked(tmp_path):
    obs_space, action_space = OBS_SPACES["image"], ACTION_SPACES["discrete"]
    write(tmp_path / "ds", obs_space, action_space, [make_episode(obs_space, action_space, 40, True)])
    (shard,) = store.shard_paths(tmp_path / "ds")
    with h5py.File(shard) as f:
        image = f["steps/obs/image"]
        assert image.dtype == np.uint8 and image.shape == (41, 8, 8, 3)
        assert image.chunks == (32, 8, 8, 3)
        assert f["episodes/start"][()].tolist() == [0] and f["episodes/rows"][()].tolist() == [41]
        assert f.attrs["schema_version"] == schema.SCHEMA_VERSION
        assert json.loads(f.attrs["observation_space"])["type"] == "Dict"


def test_builder_matches_from_transitions():
    obs_space, action_space = OBS_SPACES["dict"], ACTION_SPACES["box"]
    ep = make_episode(obs_space, action_space, steps=300, terminated=False)  # > initial capacity
    builder = EpisodeBuilder(obs_space, action_space, capacity=4)
    obs, actions, rewards, _, _ = ep.to_transitions()
    builder.start({k: v[0] for k, v in obs.items()})
    for t in range(ep.steps):
        builder.add(actions[t], rewards[t], {k: v[t + 1] for k, v in obs.items()})
    built = builder.finish(terminated=False)
    for name in schema.COLUMNS:
        np.testing.assert_array_equal(getattr(built, name), getattr(ep, name))
    for key in obs:
        np.testing.assert_array_equal(built.obs[key], ep.obs[key])


def test_recorder_follows_the_autoreset_rows_of_two_envs():
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]

    def obs(*values):  # vector[0] tells the rows apart
        return {"vector": np.array([[v, 0, 0] for v in values], np.float32)}

    no, ones, a = np.zeros(2, bool), np.ones(2, np.float32), np.array([1, 2])
    recorder = EpisodeRecorder(obs_space, action_space, obs(0, 100))
    assert recorder.is_first.tolist() == [True, True]
    steps, finished = recorder.record(a, obs(1, 101), ones, np.array([True, False]), no)  # env 0 terminates
    assert steps == 2 and len(finished) == 1 and recorder.is_first.tolist() == [False, False]
    assert finished[0].obs["vector"][:, 0].tolist() == [0, 1] and finished[0].is_terminal[-1]
    steps, finished = recorder.record(a, obs(10, 102), ones, no, no)  # env 0 returns its reset obs: no step
    assert steps == 1 and finished == [] and recorder.is_first.tolist() == [True, False]
    steps, _ = recorder.record(a, obs(11, 103), ones, no, no, limit=1)  # budget: env 1's step is dropped
    assert steps == 1
    cut = recorder.in_progress()
    assert [e.obs["vector"][:, 0].tolist() for e in cut] == [[10, 11], [100, 101, 102]]
    assert not cut[0].is_terminal[-1] and cut[0].is_last[-1]


def test_shard_closes_after_seconds(tmp_path):
    now = [0.0]
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    w = DatasetWriter(tmp_path / "ds", "T", {}, obs_space, action_space, shard_episodes=100,
                      shard_seconds=10, clock=lambda: now[0])
    w.add_episode(make_episode(obs_space, action_space, 3, True))
    w.maybe_close_shard()
    assert store.shard_paths(tmp_path / "ds") == []  # pending in memory, no shard closed yet
    now[0] = 10.5
    w.maybe_close_shard()
    assert len(store.shard_paths(tmp_path / "ds")) == 1 and store.partial_paths(tmp_path / "ds") == []
    w.close()


def test_pending_episodes_are_flushed_by_size(tmp_path):
    obs_space, action_space = OBS_SPACES["image"], ACTION_SPACES["discrete"]
    w = DatasetWriter(tmp_path / "ds", "T", {}, obs_space, action_space, flush_bytes=1000)
    w.add_episode(make_episode(obs_space, action_space, 30, True))  # ~6 KB of frames > 1000 bytes
    assert len(store.partial_paths(tmp_path / "ds")) == 1 and store.shard_paths(tmp_path / "ds") == []
    w.add_episode(make_episode(obs_space, action_space, 5, False, 1))
    w.close()
    assert store.partial_paths(tmp_path / "ds") == []
    ds = Dataset(tmp_path / "ds")
    assert len(ds.shards) == 1 and [r.rows for r in ds.refs] == [31, 6] and [r.start for r in ds.refs] == [0, 31]


def test_shard_closes_after_bytes(tmp_path):
    obs_space, action_space = OBS_SPACES["image"], ACTION_SPACES["discrete"]
    w = DatasetWriter(tmp_path / "ds", "T", {}, obs_space, action_space, shard_bytes=5000)
    for i in range(3):
        w.add_episode(make_episode(obs_space, action_space, 30, True, i))
    w.close()
    assert len(store.shard_paths(tmp_path / "ds")) == 3


def test_append_adds_shards_and_never_rewrites(tmp_path):
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    write(tmp_path / "ds", obs_space, action_space, [make_episode(obs_space, action_space, 5, True, i) for i in range(3)])
    before = digest(tmp_path / "ds")
    write(tmp_path / "ds", obs_space, action_space, [make_episode(obs_space, action_space, 5, True, 9)])
    after = digest(tmp_path / "ds")
    assert len(after) == 2 and all(after[name] == sha for name, sha in before.items())
    assert Dataset(tmp_path / "ds").num_episodes == 4


def test_append_with_other_spaces_is_refused_and_writes_nothing(tmp_path):
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    write(tmp_path / "ds", obs_space, action_space, [make_episode(obs_space, action_space, 5, True)])
    files = sorted(p.name for p in (tmp_path / "ds").iterdir())
    before = digest(tmp_path / "ds")
    with pytest.raises(SpacesMismatchError, match="new --out directory"):
        DatasetWriter(tmp_path / "ds", "Other-v0", {}, OBS_SPACES["image"], action_space)
    with pytest.raises(SpacesMismatchError, match="action space"):
        DatasetWriter(tmp_path / "ds", "Other-v0", {}, obs_space, ACTION_SPACES["box"])
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == files and digest(tmp_path / "ds") == before


def test_output_path_that_is_not_a_dataset(tmp_path):
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    (tmp_path / "file.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="is a file"):
        DatasetWriter(tmp_path / "file.txt", "T", {}, obs_space, action_space)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "paper.pdf").write_text("keep me too")
    with pytest.raises(DatasetError, match="not a dreamer-core dataset"):
        DatasetWriter(tmp_path / "notes", "T", {}, obs_space, action_space)
    assert (tmp_path / "file.txt").read_text() == "keep me"
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["paper.pdf"]


def _two_shards(tmp_path):
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    write(tmp_path / "ds", obs_space, action_space, [make_episode(obs_space, action_space, 5, True, i) for i in range(4)],
          shard_episodes=2)
    return store.shard_paths(tmp_path / "ds")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_shard_is_named_and_can_be_skipped(tmp_path, damage):
    first, second = _two_shards(tmp_path)
    (tmp_path / "ds" / schema.MANIFEST_NAME).unlink()  # force a rescan, as a fresh reader would
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\0garbage" * 100)
    with pytest.raises(DatasetError, match=second.name) as info:
        Dataset(tmp_path / "ds")
    assert "--skip-corrupt" in str(info.value)
    ds = Dataset(tmp_path / "ds", skip_corrupt=True)
    assert ds.num_episodes == 2 and [p for p, _ in ds.skipped] == [second]


def test_schema_version_mismatch(tmp_path):
    first, _ = _two_shards(tmp_path)
    with h5py.File(first, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(DatasetError, match="schema version 99"):
        Dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match="schema version 99"):  # not silently skipped either
        Dataset(tmp_path / "ds", skip_corrupt=True)


def test_manifest_is_derived(tmp_path):
    _two_shards(tmp_path)
    expected = Dataset(tmp_path / "ds").summary()
    expected.pop("size_bytes")  # the manifest itself counts
    (tmp_path / "ds" / schema.MANIFEST_NAME).write_text("{not json")
    rebuilt = Dataset(tmp_path / "ds").summary()
    rebuilt.pop("size_bytes")
    assert rebuilt == expected
    (tmp_path / "ds" / schema.MANIFEST_NAME).unlink()
    assert Dataset(tmp_path / "ds").summary()["episodes"] == expected["episodes"]


def test_partial_shards_are_ignored_and_reported(tmp_path):
    _two_shards(tmp_path)
    (tmp_path / "ds" / ".shard-20990101T000000000000-deadbeef.h5.partial").write_bytes(b"half a shard")
    ds = Dataset(tmp_path / "ds")
    assert ds.num_episodes == 4 and len(ds.summary()["partial_shards"]) == 1


def test_missing_and_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no readable shards"):
        Dataset(tmp_path / "empty")


def test_no_space_left_keeps_closed_shards(tmp_path, monkeypatch):
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    w = DatasetWriter(tmp_path / "ds", "T", {}, obs_space, action_space, shard_episodes=2)
    for i in range(2):
        w.add_episode(make_episode(obs_space, action_space, 5, True, i))
    before = digest(tmp_path / "ds")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    w.add_episode(make_episode(obs_space, action_space, 5, True, 2))  # pending in shard 2
    monkeypatch.setattr(w, "_write_episodes", full_disk)
    with pytest.raises(DatasetError, match="No space left on device") as info:
        w.add_episode(make_episode(obs_space, action_space, 5, True, 3))
    assert "Free disk space" in str(info.value)
    assert digest(tmp_path / "ds") == before
    assert store.partial_paths(tmp_path / "ds") == []  # the open shard was discarded, not left half-written
    assert Dataset(tmp_path / "ds").num_episodes == 2


def test_iter_episodes_in_small_blocks_matches_load_episode(tmp_path):
    obs_space, action_space = OBS_SPACES["dict"], ACTION_SPACES["box"]
    episodes = [make_episode(obs_space, action_space, steps=3 + 2 * i, terminated=i % 3 == 0, episode_id=i) for i in range(7)]
    write(tmp_path / "ds", obs_space, action_space, episodes, shard_episodes=4)
    ds = Dataset(tmp_path / "ds")
    for block_bytes in (1, 500, 1 << 30):  # one episode per read, a few, the whole shard
        loaded = list(ds.iter_episodes(block_bytes=block_bytes))
        assert len(loaded) == 7
        for i, episode in enumerate(loaded):
            np.testing.assert_array_equal(episode.obs["image"], episodes[i].obs["image"])
            np.testing.assert_array_equal(episode.action, ds.load_episode(i).action)


def test_validate_refuses_float_images_and_float_discrete_actions(tmp_path):
    obs_space, action_space = OBS_SPACES["image"], ACTION_SPACES["discrete"]
    episode = make_episode(obs_space, action_space, 3, True)
    episode.obs["image"] = episode.obs["image"] / 255.0
    w = DatasetWriter(tmp_path / "ds", "T", {}, obs_space, action_space)
    with pytest.raises(ValueError, match="uint8"):
        w.add_episode(episode)
    episode = make_episode(obs_space, action_space, 3, True)
    episode.action = episode.action.astype(np.float32)
    with pytest.raises(ValueError, match="integers"):
        w.add_episode(episode)


def test_index_that_does_not_tile_the_rows_is_corrupt(tmp_path):
    first, _ = _two_shards(tmp_path)
    (tmp_path / "ds" / schema.MANIFEST_NAME).unlink()
    with h5py.File(first, "r+") as f:
        f["episodes/start"][1] = 3  # overlaps episode 0
    with pytest.raises(DatasetError, match="does not tile"):
        Dataset(tmp_path / "ds")
