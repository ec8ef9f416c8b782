"""Tests of data/sampler.py: windows over synthetic datasets whose rows say where they are from.

Every observation encodes its episode id and its row within the episode (the vector key
``pos`` holds ``[episode_id, row]``; the image channels hold the same numbers), so each
sampled window can be checked exactly against the concatenated episodes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler, batch_from_episode
from dreamer_core.data.schema import Episode
from dreamer_core.data.storage import ColumnStore
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.errors import DatasetError, SpacesMismatchError

IMAGE = (8, 8, 3)

ACTION_SPACES = {
    "discrete": gym.spaces.Discrete(5),
    "box": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
    "multibinary": gym.spaces.MultiBinary(4),
    "multidiscrete": gym.spaces.MultiDiscrete([3, 5]),
}
ACTION_DTYPES = {
    "discrete": torch.int64,
    "box": torch.float32,
    "multibinary": torch.int8,
    "multidiscrete": torch.int64,
}


def obs_space(image: tuple[int, ...] = IMAGE, images: int = 1) -> gym.spaces.Dict:
    spaces = {"pos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)}
    for i in range(images):
        spaces["image" if i == 0 else f"image{i}"] = gym.spaces.Box(0, 255, image, np.uint8)
    return gym.spaces.Dict(spaces)


def make_episode(
    episode_id: int,
    rows: int,
    observation_space: gym.spaces.Dict,
    action_space: gym.Space,
) -> Episode:
    """An episode whose every column encodes (episode_id, row)."""
    t = np.arange(rows)
    obs = {"pos": np.stack([np.full(rows, episode_id), t], axis=1).astype(np.float32)}
    for key, space in observation_space.spaces.items():
        if key == "pos":
            continue
        image = np.empty((rows, *space.shape), np.uint8)
        image[..., 0] = episode_id % 256
        image[..., 1] = (t % 256)[:, None, None]
        image[..., 2] = (t // 256)[:, None, None]
        image[:, 0, 0, 0] = 255 - (t % 256)  # one pixel unlike the rest catches transposes
        obs[key] = image
    if isinstance(action_space, gym.spaces.Discrete):
        action = (t % action_space.n).astype(np.int64)
    elif isinstance(action_space, gym.spaces.Box):
        action = np.stack([t / 1000, np.full(rows, episode_id / 1000), -t / 1000], axis=1)
        action = (action * (t > 0)[:, None]).astype(np.float32)
    elif isinstance(action_space, gym.spaces.MultiDiscrete):
        action = (t[:, None] % action_space.nvec).astype(np.int64)
    else:
        action = ((t[:, None] >> np.arange(4)) & 1).astype(np.int8)
    reward = np.where(t > 0, t + 1000.0 * episode_id, 0.0).astype(np.float32)
    is_first = t == 0
    is_last = t == rows - 1
    is_terminal = is_last & (episode_id % 2 == 0)
    return Episode(obs, action, reward, is_first, is_last, is_terminal)


def write_dataset(
    path: Path,
    lengths: list[int],
    action: str = "discrete",
    first_id: int = 0,
    shard_episodes: int = 2,
    observation_space: gym.spaces.Dict | None = None,
) -> tuple[Dataset, list[Episode]]:
    """Write episodes of the given row counts; return the opened dataset and its episodes."""
    space = observation_space or obs_space()
    action_space = ACTION_SPACES[action]
    episodes = [make_episode(first_id + i, n, space, action_space) for i, n in enumerate(lengths)]
    with DatasetWriter(
        path, "Synthetic-v0", {}, space, action_space, shard_episodes=shard_episodes
    ) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    dataset = Dataset(path)
    # The dataset's order is the sampler's order; read it back to build the reference.
    ordered = [dataset.load_episode(ref) for ref in dataset.refs]
    return dataset, ordered


def concat(episodes: list[Episode]) -> dict[str, np.ndarray]:
    """The global row index as plain arrays (the reference for every window)."""
    columns = {f"obs/{k}": np.concatenate([e.obs[k] for e in episodes]) for k in episodes[0].obs}
    for name in ("action", "reward", "is_first", "is_last", "is_terminal"):
        columns[name] = np.concatenate([getattr(e, name) for e in episodes])
    return columns


def batch_columns(batch) -> dict[str, torch.Tensor]:
    columns = {f"obs/{k}": v for k, v in batch.obs.items()}
    for name in ("action", "reward", "is_first", "is_last", "is_terminal"):
        columns[name] = getattr(batch, name)
    return columns


def window_starts(batch, episode_starts: np.ndarray) -> np.ndarray:
    """Recover each window's global start row from its first ``pos`` entry."""
    first = batch.obs["pos"][:, 0].numpy().astype(np.int64)  # [B, 2] = (episode id, row)
    return episode_starts[first[:, 0]] + first[:, 1]


def assert_batches_equal(a, b) -> None:
    ca, cb = batch_columns(a), batch_columns(b)
    assert ca.keys() == cb.keys()
    for key in ca:
        assert ca[key].dtype == cb[key].dtype, key
        assert torch.equal(ca[key], cb[key]), key


def assert_windows_match(batch, reference: dict[str, np.ndarray], starts: np.ndarray, T: int):
    for key, value in batch_columns(batch).items():
        for b, s in enumerate(starts):
            np.testing.assert_array_equal(value[b].numpy(), reference[key][s : s + T], err_msg=key)


# --- shapes and dtypes -----------------------------------------------------------------------


@pytest.mark.parametrize("action", sorted(ACTION_SPACES))
@pytest.mark.parametrize("budget", [None, 0], ids=["memory", "disk"])
def test_shapes_and_dtypes(tmp_path, action, budget):
    dataset, episodes = write_dataset(tmp_path / "d", [7, 5, 9], action=action)
    kwargs = {} if budget is None else {"memory_budget": budget}
    sampler = SequenceSampler(dataset, batch_size=3, seq_len=4, seed=0, **kwargs)
    assert sampler.in_memory is (budget is None)
    batch = sampler.sample()
    B, T = 3, 4
    assert batch.shape == (B, T)
    assert batch.obs["image"].shape == (B, T, *IMAGE) and batch.obs["image"].dtype == torch.uint8
    assert batch.obs["pos"].shape == (B, T, 2) and batch.obs["pos"].dtype == torch.float32
    a_shape = {"discrete": (), "box": (3,), "multibinary": (4,), "multidiscrete": (2,)}[action]
    assert batch.action.shape == (B, T, *a_shape)
    assert batch.action.dtype == ACTION_DTYPES[action]
    assert batch.reward.shape == (B, T) and batch.reward.dtype == torch.float32
    for flag in (batch.is_first, batch.is_last, batch.is_terminal):
        assert flag.shape == (B, T) and flag.dtype == torch.bool
    starts = np.arange(sampler.num_windows)
    assert_windows_match(sampler.gather(starts), concat(episodes), starts, T)


def test_placement_and_sizes(tmp_path):
    dataset, episodes = write_dataset(tmp_path / "d", [6, 4], observation_space=obs_space(images=2))
    full = SequenceSampler(dataset, 2, 3, seed=0)
    assert full.in_memory and full.disk_keys == ()
    assert full.num_rows == 10 and full.num_episodes == 2 and full.num_windows == 8
    assert list(full.episode_starts) == [0, 6]
    image_bytes = 10 * int(np.prod(IMAGE))
    # Room for the small columns and one image key: the other image key is read from disk.
    one_image = SequenceSampler(
        dataset, 2, 3, seed=0, memory_budget=full.memory_bytes - image_bytes
    )
    assert len(one_image.disk_keys) == 1 and not one_image.in_memory
    assert one_image.placement[f"obs/{one_image.disk_keys[0]}"] == "disk"
    assert one_image.placement["action"] == "memory"
    none = SequenceSampler(dataset, 2, 3, seed=0, memory_budget=0)
    assert set(none.disk_keys) == {"image", "image1"}
    assert none.memory_bytes == full.memory_bytes - 2 * image_bytes
    for sampler in (one_image, none):
        assert_batches_equal(sampler.gather([0, 7]), full.gather([0, 7]))
    assert "disk_keys" in repr(none)
    assert full.chunk_cache_bytes == 0 and none.chunk_cache_bytes == 0
    # A spare budget becomes HDF5 chunk cache, split over the open on-disk columns.
    spare = SequenceSampler(dataset, 2, 3, seed=0, memory_budget=none.memory_bytes + 1000)
    assert spare.disk_keys == ("image", "image1")
    assert spare.chunk_cache_bytes == 1000 // 2  # one shard, two on-disk keys
    assert_batches_equal(spare.gather([0, 7]), full.gather([0, 7]))


# --- window contents -------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, 0], ids=["memory", "disk"])
def test_windows_equal_slices_of_concatenated_episodes(tmp_path, budget):
    dataset, episodes = write_dataset(tmp_path / "d", [5, 1, 12, 3, 8, 2], shard_episodes=2)
    assert len(dataset.shards) == 3  # windows cross shard boundaries too
    reference = concat(episodes)
    T = 6
    kwargs = {} if budget is None else {"memory_budget": budget}
    sampler = SequenceSampler(dataset, batch_size=8, seq_len=T, seed=3, **kwargs)
    # Every possible start, explicitly (covers windows spanning 2+ episodes and shards).
    starts = np.arange(sampler.num_windows)
    assert_windows_match(sampler.gather(starts), reference, starts, T)
    for _ in range(5):
        batch = sampler.sample()
        starts = window_starts(batch, sampler.episode_starts)
        assert_windows_match(batch, reference, starts, T)


def test_rows_consecutive_and_is_first_at_episode_starts(tmp_path):
    lengths = [4, 9, 1, 6, 3]
    dataset, episodes = write_dataset(tmp_path / "d", lengths)
    sampler = SequenceSampler(dataset, batch_size=16, seq_len=7, seed=1)
    episode_starts = set(np.cumsum([0, *lengths[:-1]]).tolist())
    for _ in range(10):
        batch = sampler.sample()
        pos = batch.obs["pos"].numpy().astype(np.int64)  # [B, T, 2]
        starts = window_starts(batch, sampler.episode_starts)
        global_rows = sampler.episode_starts[pos[..., 0]] + pos[..., 1]  # [B, T]
        np.testing.assert_array_equal(global_rows, starts[:, None] + np.arange(7))
        expected_first = np.isin(global_rows, list(episode_starts))
        np.testing.assert_array_equal(batch.is_first.numpy(), expected_first)
        # Inside an episode the row counter steps by one; it resets exactly at is_first.
        steps = np.diff(pos[..., 1], axis=1)
        np.testing.assert_array_equal(steps == 1, ~batch.is_first.numpy()[:, 1:])
        assert (pos[..., 1][batch.is_first.numpy()] == 0).all()


def test_batches_do_not_share_memory_with_the_replay(tmp_path):
    dataset, _ = write_dataset(tmp_path / "d", [10])
    sampler = SequenceSampler(dataset, 2, 4, seed=0)
    batch = sampler.gather([0, 0])
    batch.obs["image"].zero_()
    batch.action.fill_(3)
    again = sampler.gather([0, 0])
    assert again.obs["image"].sum() > 0 and not torch.equal(again.action, batch.action)


def test_several_datasets_concatenate_in_order(tmp_path):
    first, eps_a = write_dataset(tmp_path / "a", [5, 4], first_id=0)
    second, eps_b = write_dataset(tmp_path / "b", [6], first_id=2)
    sampler = SequenceSampler([first, second], batch_size=4, seq_len=5, seed=0, memory_budget=0)
    assert sampler.num_rows == 15 and list(sampler.episode_starts) == [0, 5, 9]
    starts = np.arange(sampler.num_windows)
    assert_windows_match(sampler.gather(starts), concat(eps_a + eps_b), starts, 5)


@pytest.mark.parametrize("budget", [None, 0], ids=["memory", "disk"])
def test_only_the_listed_episodes_are_sampled(tmp_path, budget):
    # Dataset.refs may be filtered (e.g. to the best episodes); the rest of a shard is skipped.
    dataset, episodes = write_dataset(tmp_path / "d", [4, 6, 3, 5, 7], shard_episodes=3)
    dataset.refs = [dataset.refs[i] for i in (1, 2, 4)]
    kwargs = {} if budget is None else {"memory_budget": budget}
    sampler = SequenceSampler(dataset, 4, 3, seed=0, **kwargs)
    assert sampler.num_rows == 6 + 3 + 7
    starts = np.arange(sampler.num_windows)
    kept = [episodes[i] for i in (1, 2, 4)]
    assert_windows_match(sampler.gather(starts), concat(kept), starts, 3)


# --- randomness and state --------------------------------------------------------------------


def test_seeded_samplers_repeat_and_different_seeds_differ(tmp_path):
    dataset, _ = write_dataset(tmp_path / "d", [30, 40, 25])
    a = SequenceSampler(dataset, 8, 5, seed=7)
    b = SequenceSampler(dataset, 8, 5, seed=7)
    c = SequenceSampler(dataset, 8, 5, seed=8)
    batches_a = [a.sample() for _ in range(3)]
    batches_b = [b.sample() for _ in range(3)]
    batches_c = [c.sample() for _ in range(3)]
    for x, y in zip(batches_a, batches_b, strict=True):
        assert_batches_equal(x, y)
    assert any(
        not torch.equal(x.reward, z.reward) for x, z in zip(batches_a, batches_c, strict=True)
    )


def test_explicit_generator_and_ranks(tmp_path):
    dataset, _ = write_dataset(tmp_path / "d", [50, 50])
    generator = np.random.default_rng(5)
    shared = SequenceSampler(dataset, 4, 5, generator=generator)
    assert shared.generator is generator
    expected = np.random.default_rng(5).integers(0, 96, size=4)
    starts = window_starts(shared.sample(), shared.episode_starts)
    np.testing.assert_array_equal(starts, expected)
    with pytest.raises(ValueError):
        SequenceSampler(dataset, 4, 5, seed=1, generator=np.random.default_rng(1))
    single = SequenceSampler(dataset, 8, 5, seed=11)
    rank0 = SequenceSampler(dataset, 8, 5, seed=11, rank=0, world_size=2)
    rank1 = SequenceSampler(dataset, 8, 5, seed=11, rank=1, world_size=2)
    b_single, b0, b1 = single.sample(), rank0.sample(), rank1.sample()
    assert_batches_equal(b_single, b0)
    assert not torch.equal(b0.reward, b1.reward)
    with pytest.raises(ValueError):
        SequenceSampler(dataset, 8, 5, seed=11, rank=2, world_size=2)


def test_state_dict_round_trip_continues_the_stream(tmp_path):
    dataset, _ = write_dataset(tmp_path / "d", [30, 40, 25])
    original = SequenceSampler(dataset, 6, 8, seed=0)
    for _ in range(3):
        original.sample()
    state = json.loads(json.dumps(original.state_dict()))  # checkpoints may store it as JSON
    expected = [original.sample() for _ in range(3)]
    resumed = SequenceSampler(dataset, 6, 8, seed=123, memory_budget=0)
    resumed.load_state_dict(state)
    for batch in expected:
        assert_batches_equal(resumed.sample(), batch)
    assert resumed.state_dict()["batches_sampled"] == 6
    with pytest.raises(ValueError):
        bad = dict(state, bit_generator={**state["bit_generator"], "bit_generator": "MT19937"})
        resumed.load_state_dict(bad)


def test_disk_mode_returns_the_same_batches_as_memory_mode(tmp_path):
    dataset, _ = write_dataset(tmp_path / "d", [17, 3, 40, 1, 22], shard_episodes=2)
    memory = SequenceSampler(dataset, 16, 10, seed=42)
    disk = SequenceSampler(dataset, 16, 10, seed=42, memory_budget=0)
    assert memory.in_memory and disk.disk_keys == ("image",)
    for _ in range(10):
        assert_batches_equal(memory.sample(), disk.sample())
    disk.close()  # files reopen lazily after close
    assert_batches_equal(memory.sample(), disk.sample())


# --- online replay ---------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, 0], ids=["memory", "disk"])
def test_add_episode_extends_the_row_index(tmp_path, budget):
    dataset, episodes = write_dataset(tmp_path / "d", [6, 4])
    kwargs = {} if budget is None else {"memory_budget": budget}
    sampler = SequenceSampler(dataset, 4, 5, seed=0, **kwargs)
    space, action_space = dataset.observation_space, dataset.action_space
    added = [make_episode(2 + i, n, space, action_space) for i, n in enumerate([3, 2000, 7])]
    for episode in added:
        sampler.add_episode(episode)
    assert sampler.num_rows == 10 + 2010
    assert list(sampler.episode_starts) == [0, 6, 10, 13, 2013]
    reference = concat(episodes + added)
    starts = np.array([0, 5, 6, 8, 9, 10, 12, 13, 2010, 2012, sampler.num_windows - 1])
    assert_windows_match(sampler.gather(starts), reference, starts, 5)
    with pytest.raises(DatasetError):
        sampler.add_episode(make_episode(9, 4, obs_space(image=(4, 4, 3)), action_space))


def test_empty_online_replay_from_a_store():
    space, action_space = obs_space(), ACTION_SPACES["box"]
    sampler = SequenceSampler(ColumnStore(space, action_space), batch_size=3, seq_len=6, seed=0)
    assert sampler.num_rows == 0 and sampler.num_windows == 0
    with pytest.raises(DatasetError, match="fewer than one window"):
        sampler.sample()
    episodes = [make_episode(0, 4, space, action_space), make_episode(1, 5, space, action_space)]
    for episode in episodes:
        sampler.add_episode(episode)
    batch = sampler.sample()
    assert batch.shape == (3, 6) and batch.action.dtype == torch.float32
    assert_windows_match(batch, concat(episodes), window_starts(batch, sampler.episode_starts), 6)


def test_a_sampler_over_a_store_equals_one_over_its_datasets(tmp_path):
    dataset, _ = write_dataset(tmp_path / "d", [9, 4, 12])
    for budget in (2**30, 0):
        store = ColumnStore.from_datasets(dataset, memory_budget=budget)
        on_store = SequenceSampler(store, 4, 5, seed=3)
        on_dataset = SequenceSampler(dataset, 4, 5, seed=3, memory_budget=budget)
        assert on_store.store is store and on_store.placement == on_dataset.placement
        for _ in range(5):
            assert_batches_equal(on_store.sample(), on_dataset.sample())
        assert on_store.state_dict() == on_dataset.state_dict()
        with on_store:
            pass
        assert_batches_equal(on_store.sample(), on_dataset.sample())  # closed files reopen
    with pytest.raises(ValueError, match="memory_budget"):
        SequenceSampler(store, 4, 5, seed=3, memory_budget=0)


def test_batch_from_episode():
    space, action_space = obs_space(), ACTION_SPACES["multidiscrete"]
    episode = make_episode(4, 9, space, action_space)
    episode.obs["pos"] = episode.obs["pos"].astype(np.float64)  # vectors come out as float32
    batch = batch_from_episode(episode, 2, 7)
    assert batch.shape == (1, 5)
    assert batch.obs["pos"].dtype == torch.float32 and batch.obs["image"].dtype == torch.uint8
    assert batch.is_first.tolist() == [[True, False, False, False, False]]  # a window's first row
    for key, value in batch_columns(batch).items():
        if key != "is_first":
            reference = concat([episode])[key][2:7]
            np.testing.assert_array_equal(value[0].numpy(), reference, err_msg=key)
    whole = batch_from_episode(episode)
    assert whole.shape == (1, 9) and whole.is_last[0, -1] and whole.is_terminal[0, -1]


# --- errors ----------------------------------------------------------------------------------


def test_too_short_data_is_a_dataset_error(tmp_path):
    dataset, _ = write_dataset(tmp_path / "d", [3, 4])
    SequenceSampler(dataset, 2, 7, seed=0)  # exactly one window fits
    with pytest.raises(DatasetError, match="fewer than one window"):
        SequenceSampler(dataset, 2, 8, seed=0)


def test_mismatched_spaces_are_rejected(tmp_path):
    first, _ = write_dataset(tmp_path / "a", [5])
    other_action, _ = write_dataset(tmp_path / "b", [5], action="box")
    other_image, _ = write_dataset(
        tmp_path / "c", [5], observation_space=obs_space(image=(4, 4, 3))
    )
    for other in (other_action, other_image):
        with pytest.raises(SpacesMismatchError, match="same spaces"):
            SequenceSampler([first, other], 2, 3, seed=0)


@pytest.mark.parametrize("batch_size, seq_len", [(0, 4), (2, 0), (-1, 4), (2, 2.5), (True, 4)])
def test_invalid_batch_or_sequence_length(tmp_path, batch_size, seq_len):
    dataset, _ = write_dataset(tmp_path / "d", [10])
    with pytest.raises(DatasetError, match="batch_size >= 1"):
        SequenceSampler(dataset, batch_size, seq_len, seed=0)


def test_no_datasets_and_out_of_range_starts(tmp_path):
    with pytest.raises(DatasetError, match="no datasets"):
        SequenceSampler([], 2, 3)
    dataset, _ = write_dataset(tmp_path / "d", [10])
    sampler = SequenceSampler(dataset, 2, 3, seed=0)
    sampler.gather([0, 7])
    for bad in ([8], [-1]):
        with pytest.raises(IndexError):
            sampler.gather(bad)


# --- property test ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    batch_size=st.integers(1, 5),
    seq_len_fraction=st.floats(0.0, 1.0),
    disk=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_windows_always_valid_and_every_start_reachable(
    lengths, batch_size, seq_len_fraction, disk, seed
):
    total = sum(lengths)
    T = 1 + int(seq_len_fraction * (total - 1))
    space = obs_space(image=(2, 2, 3))
    with tempfile.TemporaryDirectory() as tmp:
        dataset, episodes = write_dataset(
            Path(tmp) / "d", lengths, shard_episodes=3, observation_space=space
        )
        sampler = SequenceSampler(
            dataset, batch_size, T, seed=seed, memory_budget=0 if disk else 2**30
        )
        reference = concat(episodes)
        windows = total - T + 1
        assert sampler.num_windows == windows
        seen = np.zeros(windows, bool)
        draws = 0
        while draws < max(200, 40 * windows):
            batch = sampler.sample()
            assert batch.shape == (batch_size, T)
            starts = window_starts(batch, sampler.episode_starts)
            assert ((starts >= 0) & (starts <= total - T)).all()
            seen[starts] = True
            draws += batch_size
        # Spot-check contents of the last batch against the reference slices.
        assert_windows_match(batch, reference, starts, T)
        sampler.close()
    assert seen.all(), f"starts never drawn: {np.flatnonzero(~seen)}"


# --- streams: every step enters the replay as it happens (the online loop) -------------------

STREAM_OBS = gym.spaces.Dict({"pos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)})


def _record_steps(recorder, sampler, steps, episode_len, K):
    """Step K fake envs whose observation is [env, step count]; env k's episodes last
    episode_len + k steps. Every recorded row goes into the sampler at once."""
    from dreamer_core.data.writer import EpisodeRecorder  # noqa: F401 (the recorder's contract)

    counts = np.zeros(K, np.int64)
    finished_all = []
    for t in range(1, steps + 1):
        counts += 1
        done = counts >= episode_len + np.arange(K)
        obs = {"pos": np.stack([np.arange(K), np.full(K, t)], axis=1).astype(np.float32)}
        _, finished = recorder.record(np.zeros(K, np.int64), obs, np.ones(K, np.float32), done, np.zeros(K, bool))
        counts[done] = -1  # the reset row comes next, then counting restarts
        finished_all += finished
        sampler.add_rows(*recorder.take_rows())
    return finished_all


def test_windows_follow_each_env_stream_and_include_the_episode_in_progress():
    from dreamer_core.data.writer import EpisodeRecorder

    K, T = 2, 4
    sampler = SequenceSampler(ColumnStore(STREAM_OBS, gym.spaces.Discrete(2)), 256, T, seed=0)
    start = {"pos": np.array([[0, 0], [1, 0]], np.float32)}
    recorder = EpisodeRecorder(STREAM_OBS, gym.spaces.Discrete(2), start, keep_rows=True)
    finished = _record_steps(recorder, sampler, 30, episode_len=100, K=K)
    assert finished == []  # no episode has ended, yet the replay has every row
    assert sampler.num_rows == K * 31 and sampler.num_windows == K * (31 - T + 1)
    rows = sampler.draw_windows()
    batch = sampler.gather_windows(rows)
    pos = batch.obs["pos"].numpy()  # [B, T, 2]: (env, step)
    assert (pos[:, :, 0] == pos[:, :1, 0]).all()  # a window never mixes envs
    assert (np.diff(pos[:, :, 1], axis=1) == 1).all()  # consecutive steps of that env
    assert pos[:, -1, 1].max() == 30  # the newest step is sampled too
    assert batch.is_first[:, 0].any() and not batch.is_last.any()  # nothing has ended
    # the row before a window is the previous step of the same env
    prev = sampler.previous_rows(rows[:, 0])
    first_rows = rows[:, 0]
    for r, p in zip(first_rows.tolist(), prev.tolist()):
        if p < 0:
            assert sampler.store.gather_rows(np.array([[r]]))["obs/pos"][0, 0, 1] == 0
        else:
            a, b = sampler.store.gather_rows(np.array([[p, r]]))["obs/pos"][0]
            assert a[0] == b[0] and a[1] + 1 == b[1]


def test_stream_windows_are_uniform_over_all_windows():
    from dreamer_core.data.writer import EpisodeRecorder

    K, T = 3, 5
    sampler = SequenceSampler(ColumnStore(STREAM_OBS, gym.spaces.Discrete(2)), 4000, T, seed=1)
    recorder = EpisodeRecorder(STREAM_OBS, gym.spaces.Discrete(2),
                               {"pos": np.zeros((K, 2), np.float32)}, keep_rows=True)
    _record_steps(recorder, sampler, 12, episode_len=6, K=K)
    counts = {}
    for _ in range(5):
        for window in sampler.draw_windows():
            counts[int(window[0])] = counts.get(int(window[0]), 0) + 1
    assert len(counts) == sampler.num_windows  # every window can be drawn
    expected = 5 * 4000 / sampler.num_windows
    assert max(abs(c - expected) / expected for c in counts.values()) < 0.25


def test_one_stream_draws_the_same_windows_as_the_plain_replay():
    from dreamer_core.data.writer import EpisodeRecorder

    T = 6
    streamed = SequenceSampler(ColumnStore(STREAM_OBS, gym.spaces.Discrete(2)), 8, T, seed=3)
    recorder = EpisodeRecorder(STREAM_OBS, gym.spaces.Discrete(2), {"pos": np.zeros((1, 2), np.float32)},
                               keep_rows=True)
    finished = _record_steps(recorder, streamed, 40, episode_len=9, K=1)
    plain = SequenceSampler(ColumnStore(STREAM_OBS, gym.spaces.Discrete(2)), 8, T, seed=3)
    for episode in finished:
        plain.add_episode(episode)
    rows = plain.num_rows  # the finished episodes are the first rows of the stream, in order
    assert rows < streamed.num_rows
    whole = streamed.store.gather_rows(np.arange(rows)[None])
    again = plain.store.gather_rows(np.arange(rows)[None])
    for key in whole:
        np.testing.assert_array_equal(whole[key], again[key])  # the same rows, flags included
    assert np.array_equal(streamed.previous_rows(np.array([0, 5])), [-1, 4])


def test_episodes_added_whole_form_their_own_stream_and_bad_rows_are_refused():
    from dreamer_core.data.writer import EpisodeRecorder

    T = 3
    sampler = SequenceSampler(ColumnStore(STREAM_OBS, gym.spaces.Discrete(2)), 64, T, seed=0)
    old = Episode.from_transitions({"pos": np.full((5, 2), -1, np.float32)}, np.zeros(4, np.int64),
                                   np.zeros(4, np.float32), terminated=True)
    sampler.add_episode(old)  # a reloaded episode before any step
    recorder = EpisodeRecorder(STREAM_OBS, gym.spaces.Discrete(2), {"pos": np.zeros((1, 2), np.float32)},
                               keep_rows=True)
    _record_steps(recorder, sampler, 4, episode_len=50, K=1)
    sampler.add_episode(old)  # after the steps: appended to the episodes' stream
    windows = sampler.gather_windows(sampler.draw_windows()).obs["pos"].numpy()
    reloaded = windows[:, :, 0] == -1
    assert reloaded.any() and (~reloaded).any()
    assert (reloaded.all(axis=1) | (~reloaded).all(axis=1)).all()  # no window mixes the streams
    assert sampler.num_windows == (10 - T + 1) + (5 - T + 1)
    with pytest.raises(ValueError, match="draw_windows"):
        sampler.draw_starts()
    envs, obs, columns = recorder.take_rows()
    assert len(envs) == 0  # taken already
    obs = {"pos": np.array([[0.0, np.nan]], np.float32)}
    columns = {"action": np.zeros(1, np.int64), "reward": np.zeros(1, np.float32),
               "is_first": np.zeros(1, bool), "is_last": np.zeros(1, bool), "is_terminal": np.zeros(1, bool)}
    rows = sampler.num_rows
    with pytest.raises(DatasetError, match="obs/pos holds NaN"):
        sampler.add_rows([0], obs, columns)
    assert sampler.num_rows == rows  # nothing half-stored


def test_online_queue_replays_each_new_step_once_soon():
    from dreamer_core.data.writer import EpisodeRecorder

    T, B = 4, 3
    sampler = SequenceSampler(ColumnStore(STREAM_OBS, gym.spaces.Discrete(2)), B, T, seed=0, online_queue=True)
    recorder = EpisodeRecorder(STREAM_OBS, gym.spaces.Discrete(2), {"pos": np.zeros((2, 2), np.float32)},
                               keep_rows=True)
    _record_steps(recorder, sampler, 11, episode_len=100, K=2)  # 12 rows per env: 3 tiles of 4 each
    queued = np.concatenate([sampler.draw_windows() for _ in range(2)])  # 6 windows = 2 x 3 tiles
    tiles = {tuple(w) for w in queued.tolist()}
    assert len(tiles) == 6  # each tile once
    covered = np.sort(queued.ravel())
    assert np.array_equal(covered, np.arange(sampler.num_rows))  # every row replayed exactly once
    plain = SequenceSampler(ColumnStore(STREAM_OBS, gym.spaces.Discrete(2)), B, T, seed=0)
    recorder = EpisodeRecorder(STREAM_OBS, gym.spaces.Discrete(2), {"pos": np.zeros((2, 2), np.float32)},
                               keep_rows=True)
    _record_steps(recorder, plain, 11, episode_len=100, K=2)
    # once the queue is empty the draws are the uniform ones (the same stream of randomness)
    assert np.array_equal(sampler.draw_windows(), plain.draw_windows())
