"""Minari interchange against the real minari package: import, export, round trips, bad input.

Minari datasets are built with ``minari.create_dataset_from_buffers`` (no jax needed) under a
per-test MINARI_DATASETS_PATH; exported datasets are read back with ``minari.MinariDataset``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from dreamer_core.data import minari as mi
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.schema import Episode, spaces_equal
from dreamer_core.data.storage import ColumnStore
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.errors import DatasetError, MissingDependencyError
from tests.common import make_episode

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY_ENV_ID = "DreamerMinariTinyVec-v0"


class TinyVecEnv(gym.Env):
    """A CartPole-shaped env (4 floats, 2 actions) so the Minari dataset has a real env_spec."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(4, np.float32), 0.0, False, False, {}


if TINY_ENV_ID not in gym.registry:
    gym.register(TINY_ENV_ID, entry_point=f"{__name__}:TinyVecEnv", max_episode_steps=50)


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari-datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


# --- building Minari sources ------------------------------------------------------------------

LENGTHS = (5, 8, 1)
ENDINGS = ("terminated", "truncated", "terminated")


def smooth_frames(rows: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Gradient images that shift per frame: JPEG keeps them close (random noise it would not)."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((rows, *shape), np.uint8)
    for t in range(rows):
        base = 20 + xx * 3 + yy * 2 + 3 * t + 5 * seed  # stays below 256 for 32x40, t < 10
        channels = [base, 255 - base, 128 + 0 * base][: shape[2] if len(shape) == 3 else 1]
        frames[t] = np.stack(channels, -1).reshape(shape).astype(np.uint8)
        frames[t, : 4 + 2 * t, : 4 + 2 * t] = (
            250  # a growing square: frames encode to varied lengths
        )
    return frames


def sample_obs(space: gym.Space, rows: int, rng: np.random.Generator, seed: int):
    if isinstance(space, gym.spaces.Dict):
        return {k: sample_obs(s, rows, rng, seed) for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and space.shape[0] >= 32:
        return smooth_frames(rows, space.shape, seed)
    if isinstance(space, gym.spaces.Box):
        return rng.standard_normal((rows, *space.shape)).astype(space.dtype)
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.start, space.start + space.n, rows).astype(np.int64)
    raise AssertionError(space)


def sample_actions(space: gym.Space, steps: int, rng: np.random.Generator) -> np.ndarray:
    space.seed(int(rng.integers(2**31)))
    if steps == 0:
        return np.zeros((0, *space.shape), space.dtype)
    return np.stack([np.asarray(space.sample()) for _ in range(steps)])


def make_buffers(
    obs_space: gym.Space, action_space: gym.Space, seed: int = 0
) -> list[EpisodeBuffer]:
    rng = np.random.default_rng(seed)
    buffers = []
    for i, (steps, ending) in enumerate(zip(LENGTHS, ENDINGS, strict=True)):
        terminations = np.zeros(steps, bool)
        truncations = np.zeros(steps, bool)
        (terminations if ending == "terminated" else truncations)[-1] = True
        buffers.append(
            EpisodeBuffer(
                observations=sample_obs(obs_space, steps + 1, rng, seed=i),
                actions=sample_actions(action_space, steps, rng),
                rewards=rng.standard_normal(steps),  # float64, as minari usually stores them
                terminations=terminations,
                truncations=truncations,
            )
        )
    return buffers


def create_minari(
    dataset_id: str, obs_space, action_space, env=None, **kwargs
) -> list[EpisodeBuffer]:
    buffers = make_buffers(obs_space, action_space)
    spaces = (
        {} if env is not None else {"observation_space": obs_space, "action_space": action_space}
    )
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, **spaces, **kwargs)
    return buffers


def check_rows(episode: Episode, buffer: EpisodeBuffer, obs_check) -> None:
    """Row t holds obs_t, the action that led to it and the reward on arriving (row 0: zeros)."""
    steps = len(buffer.rewards)
    assert episode.steps == steps and episode.rows == steps + 1
    obs_check(episode.obs, buffer.observations)
    actions = np.asarray(buffer.actions)
    assert np.array_equal(episode.action[1:], actions.astype(episode.action.dtype))
    assert not np.any(episode.action[0])
    assert episode.reward[0] == 0
    assert np.array_equal(episode.reward[1:], np.asarray(buffer.rewards, np.float32))
    assert episode.is_first.tolist() == [True] + [False] * steps
    assert episode.is_last.tolist() == [False] * steps + [True]
    terminated = bool(buffer.terminations[-1])
    assert episode.is_terminal.tolist() == [False] * steps + [terminated]
    _, _, _, terminations, truncations = episode.to_transitions()
    assert np.array_equal(terminations, buffer.terminations)
    assert np.array_equal(truncations, buffer.truncations)


def imported(dst: Path) -> tuple[Dataset, list[Episode]]:
    dataset = Dataset(dst)
    return dataset, list(dataset.iter_episodes())


# --- import -----------------------------------------------------------------------------------


def test_import_vector_discrete_with_env_spec(minari_root: Path, tmp_path: Path) -> None:
    env = gym.make(TINY_ENV_ID)
    buffers = create_minari("tiny/vec-v0", env.observation_space, env.action_space, env=env)
    calls = []
    summary = mi.import_minari(
        minari_root / "tiny" / "vec-v0",
        tmp_path / "out",
        progress=lambda d, t: calls.append((d, t)),
    )
    assert summary["episodes"] == 3 and summary["steps"] == sum(LENGTHS)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    dataset, episodes = imported(tmp_path / "out")
    assert dataset.env_ids == [TINY_ENV_ID]
    assert [s.policy for s in dataset.shards] == ["minari:tiny/vec-v0"]
    assert list(dataset.observation_space.spaces) == ["vector"]
    assert dataset.observation_space["vector"].dtype == np.float32
    assert dataset.action_space == gym.spaces.Discrete(2)
    for episode, buffer in zip(episodes, buffers, strict=True):
        assert episode.action.dtype == np.int64
        check_rows(episode, buffer, lambda o, b: np.testing.assert_array_equal(o["vector"], b))


def test_import_accepts_data_folder_and_dataset_id(minari_root: Path, tmp_path: Path) -> None:
    create_minari("vec-v1", TinyVecEnv.observation_space, TinyVecEnv.action_space)
    a = mi.import_minari(minari_root / "vec-v1" / "data", tmp_path / "a")
    b = mi.import_minari("vec-v1", tmp_path / "b")
    assert a["episodes"] == b["episodes"] == 3
    assert Dataset(tmp_path / "b").env_ids == ["minari:vec-v1"]  # no env_spec recorded


def test_import_box_actions_and_float64_obs(minari_root: Path, tmp_path: Path) -> None:
    obs_space = gym.spaces.Box(-2.0, 2.0, (3, 2), np.float64)  # flattened to a float32 vector
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    buffers = create_minari("cont-v0", obs_space, action_space)
    mi.import_minari(minari_root / "cont-v0", tmp_path / "out")
    dataset, episodes = imported(tmp_path / "out")
    assert dataset.observation_space["vector"].shape == (6,)
    assert np.all(dataset.observation_space["vector"].low == -2.0)
    for episode, buffer in zip(episodes, buffers, strict=True):
        assert episode.action.dtype == np.float32
        check_rows(
            episode,
            buffer,
            lambda o, b: np.testing.assert_array_equal(
                o["vector"], b.reshape(len(b), -1).astype(np.float32)
            ),
        )


@pytest.mark.parametrize(
    "action_space",
    [gym.spaces.MultiBinary(3), gym.spaces.MultiDiscrete([3, 4])],
    ids=["multibinary", "multidiscrete"],
)
def test_import_discrete_obs_one_hot_and_other_actions(
    minari_root: Path, tmp_path: Path, action_space
) -> None:
    obs_space = gym.spaces.Discrete(5, start=2)
    buffers = create_minari("disc-v0", obs_space, action_space)
    mi.import_minari(minari_root / "disc-v0", tmp_path / "out")
    dataset, episodes = imported(tmp_path / "out")
    assert dataset.observation_space["vector"] == gym.spaces.Box(0, 1, (5,), np.float32)
    expected_dtype = np.int8 if isinstance(action_space, gym.spaces.MultiBinary) else np.int64

    def one_hot(o, b):
        np.testing.assert_array_equal(o["vector"], np.eye(5, dtype=np.float32)[b - 2])

    for episode, buffer in zip(episodes, buffers, strict=True):
        assert episode.action.dtype == expected_dtype
        check_rows(episode, buffer, one_hot)


def test_import_jpeg_frames_decode_within_tolerance(minari_root: Path, tmp_path: Path) -> None:
    obs_space = gym.spaces.Box(0, 255, (32, 40, 3), np.uint8)
    buffers = create_minari("img/jpeg-v0", obs_space, gym.spaces.Discrete(3))
    with h5py.File(minari_root / "img" / "jpeg-v0" / "data" / "main_data.hdf5") as f:
        assert f["episode_0/observations"].shape == (LENGTHS[0] + 1,)  # one JPEG string per frame
    summary = mi.import_minari("img/jpeg-v0", tmp_path / "out")
    assert summary["jpeg_encoding"] is True
    dataset, episodes = imported(tmp_path / "out")
    assert list(dataset.observation_space.spaces) == ["image"]

    def close(o, b):
        assert o["image"].dtype == np.uint8 and o["image"].shape == b.shape
        assert np.abs(o["image"].astype(np.int16) - b).mean() < 8

    for episode, buffer in zip(episodes, buffers, strict=True):
        check_rows(episode, buffer, close)


def test_import_jpeg_fixed_length_frames(minari_root: Path, tmp_path: Path) -> None:
    """Frames that all encode to the same length are stored as a plain [N+1, L] array."""
    obs_space = gym.spaces.Box(0, 255, (48, 48, 3), np.uint8)
    frames = np.full((4, 48, 48, 3), 100, np.uint8)
    buffer = EpisodeBuffer(
        observations=frames,
        actions=np.array([0, 1, 0]),
        rewards=np.ones(3),
        terminations=np.array([False, False, True]),
        truncations=np.zeros(3, bool),
    )
    minari.create_dataset_from_buffers(
        "const-v0", [buffer], observation_space=obs_space, action_space=gym.spaces.Discrete(2)
    )
    with h5py.File(minari_root / "const-v0" / "data" / "main_data.hdf5") as f:
        assert f["episode_0/observations"].ndim == 2
    mi.import_minari(minari_root / "const-v0", tmp_path / "out")
    (episode,) = imported(tmp_path / "out")[1]
    assert episode.obs["image"].shape == frames.shape
    assert np.abs(episode.obs["image"].astype(np.int16) - frames).max() <= 2


def test_import_raw_frames_exact(minari_root: Path, tmp_path: Path) -> None:
    obs_space = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    buffers = create_minari("img/raw-v0", obs_space, gym.spaces.Discrete(3), jpeg_encoding=False)
    summary = mi.import_minari("img/raw-v0", tmp_path / "out")
    assert summary["jpeg_encoding"] is False
    _, episodes = imported(tmp_path / "out")
    for episode, buffer in zip(episodes, buffers, strict=True):
        check_rows(episode, buffer, lambda o, b: np.testing.assert_array_equal(o["image"], b))


def test_import_dict_obs_with_nested_keys(minari_root: Path, tmp_path: Path) -> None:
    obs_space = gym.spaces.Dict(
        {
            "pixels": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
            "state": gym.spaces.Box(-1, 1, (3,), np.float32),
            "extra": gym.spaces.Dict(
                {"mode": gym.spaces.Discrete(3), "pos": gym.spaces.Box(-5, 5, (2,), np.float64)}
            ),
        }
    )
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    buffers = create_minari("dict-v0", obs_space, action_space)
    mi.import_minari(minari_root / "dict-v0", tmp_path / "out")
    dataset, episodes = imported(tmp_path / "out")
    spaces = dataset.observation_space.spaces
    assert sorted(spaces) == ["extra.mode", "extra.pos", "pixels", "state"]
    assert spaces["pixels"].dtype == np.uint8 and spaces["pixels"].shape == (32, 32, 3)
    assert spaces["extra.mode"].shape == (3,) and spaces["state"].dtype == np.float32

    def same(o, b):
        assert np.abs(o["pixels"].astype(np.int16) - b["pixels"]).mean() < 8  # JPEG default
        np.testing.assert_array_equal(o["state"], b["state"])
        np.testing.assert_array_equal(o["extra.pos"], b["extra"]["pos"].astype(np.float32))
        np.testing.assert_array_equal(
            o["extra.mode"], np.eye(3, dtype=np.float32)[b["extra"]["mode"]]
        )

    for episode, buffer in zip(episodes, buffers, strict=True):
        check_rows(episode, buffer, same)


def test_import_tuple_obs_grayscale_and_multidiscrete(minari_root: Path, tmp_path: Path) -> None:
    """Tuple items become keys "0", "1"; a rank-2 minari image gets a channel axis."""
    yy, xx = np.mgrid[0:40, 0:36]
    frames = np.stack([(xx * 3 + yy * 2 + t).astype(np.uint8) for t in range(4)])
    categories = np.array([[0, 2], [1, 1], [1, 0], [0, 0]])
    obs_space = gym.spaces.Tuple(
        (gym.spaces.Box(0, 255, (40, 36), np.uint8), gym.spaces.MultiDiscrete([2, 3]))
    )
    buffer = EpisodeBuffer(
        observations=(frames, categories),
        actions=np.array([1, 0, 1]),
        rewards=np.ones(3),
        terminations=np.array([False, False, True]),
        truncations=np.zeros(3, bool),
    )
    minari.create_dataset_from_buffers(
        "tup-v0", [buffer], observation_space=obs_space, action_space=gym.spaces.Discrete(2)
    )
    mi.import_minari("tup-v0", tmp_path / "out")
    dataset, (episode,) = imported(tmp_path / "out")
    assert dataset.observation_space["0"] == gym.spaces.Box(0, 255, (40, 36, 1), np.uint8)
    assert np.abs(episode.obs["0"][..., 0].astype(np.int16) - frames).mean() < 8
    expected = np.concatenate([np.eye(2)[categories[:, 0]], np.eye(3)[categories[:, 1]]], axis=1)
    np.testing.assert_array_equal(episode.obs["1"], expected.astype(np.float32))


# --- export -----------------------------------------------------------------------------------

IMAGE32 = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
VECTOR = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
EXPORT_CASES = {
    "vector-discrete": (gym.spaces.Dict({"vector": VECTOR}), gym.spaces.Discrete(4)),
    "image-discrete": (gym.spaces.Dict({"image": IMAGE32}), gym.spaces.Discrete(4)),
    "dict-box": (
        gym.spaces.Dict({"image": IMAGE32, "vector": VECTOR}),
        gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
    ),
}


def write_dreamer(
    path: Path,
    obs_space,
    action_space,
    env_id: str = "Synthetic-v0",
    env_config: dict | None = None,
) -> list[Episode]:
    episodes = [
        make_episode(obs_space, action_space, steps, ending == "terminated", episode_id=i)
        for i, (steps, ending) in enumerate(zip(LENGTHS, ENDINGS, strict=True))
    ]
    with DatasetWriter(
        path, env_id, env_config or {"id": env_id}, obs_space, action_space, policy="random", seed=3
    ) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    return episodes


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_loads_in_minari_exactly(tmp_path: Path, case: str) -> None:
    obs_space, action_space = EXPORT_CASES[case]
    episodes = write_dreamer(tmp_path / "src", obs_space, action_space)
    summary = mi.export_minari(tmp_path / "src", tmp_path / "exported" / f"{case}")
    assert summary["dataset_id"] == f"{case}-v0"
    assert (summary["episodes"], summary["steps"]) == (3, sum(LENGTHS))
    assert summary["env_spec"] is False  # Synthetic-v0 is not a registered env
    ds = minari.MinariDataset(tmp_path / "exported" / case / "data")
    assert ds.total_episodes == 3 and ds.total_steps == sum(LENGTHS)
    assert ds.action_space == action_space
    single = len(obs_space.spaces) == 1
    expected_obs_space = next(iter(obs_space.spaces.values())) if single else obs_space
    assert ds.observation_space == expected_obs_space
    for minari_episode, episode in zip(ds.iterate_episodes(), episodes, strict=True):
        obs, actions, rewards, terminations, truncations = episode.to_transitions()
        got = (
            {next(iter(obs)): minari_episode.observations}
            if single
            else minari_episode.observations
        )
        assert sorted(got) == sorted(obs)
        for key in obs:
            assert got[key].dtype == obs[key].dtype
            np.testing.assert_array_equal(got[key], obs[key])  # images lossless
        np.testing.assert_array_equal(minari_episode.actions, actions)
        np.testing.assert_array_equal(minari_episode.rewards, rewards)
        np.testing.assert_array_equal(minari_episode.terminations, terminations)
        np.testing.assert_array_equal(minari_episode.truncations, truncations)
        assert minari_episode.infos == {}
        repr(minari_episode)


# EnvConfig.to_dict() of a default config: Atari-only options (sticky actions, no-ops) included.
DEFAULT_ENV_CONFIG = {
    "id": TINY_ENV_ID, "obs": "default", "size": [64, 64], "grayscale": False, "action_repeat": 0,
    "sticky_actions": 0.25, "noop_max": 30, "life_loss_terminal": False, "full_action_space": False,
    "time_limit": 0, "env_module": None, "kwargs": {},
}  # fmt: skip


def test_export_under_minari_root_loads_by_id_with_env_spec(
    minari_root: Path, tmp_path: Path
) -> None:
    obs_space = gym.spaces.Dict({"vector": TinyVecEnv.observation_space})
    write_dreamer(
        tmp_path / "src", obs_space, TinyVecEnv.action_space, TINY_ENV_ID, DEFAULT_ENV_CONFIG
    )
    summary = mi.export_minari(tmp_path / "src", minari_root / "dreamer" / "tiny-v2")
    assert summary["dataset_id"] == "dreamer/tiny-v2" and summary["env_spec"] is True
    ds = minari.load_dataset("dreamer/tiny-v2")
    assert ds.total_episodes == 3 and ds.env_spec.id == TINY_ENV_ID
    assert ds.spec.version == 2
    env = ds.recover_environment()
    assert isinstance(env.unwrapped, TinyVecEnv)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_round_trip_dreamer_minari_dreamer(tmp_path: Path, case: str) -> None:
    obs_space, action_space = EXPORT_CASES[case]
    episodes = write_dreamer(tmp_path / "src", obs_space, action_space)
    mi.export_minari(tmp_path / "src", tmp_path / "mid", dataset_id="ns/mid-v3")
    summary = mi.import_minari(tmp_path / "mid", tmp_path / "back")
    assert summary["dataset_id"] == "ns/mid-v3"
    back = Dataset(tmp_path / "back")
    original = Dataset(tmp_path / "src")
    assert spaces_equal(back.observation_space, original.observation_space)
    assert spaces_equal(back.action_space, original.action_space)
    assert back.env_ids == original.env_ids and back.env_config == original.env_config
    for got, want in zip(back.iter_episodes(), episodes, strict=True):
        assert sorted(got.obs) == sorted(want.obs)
        for key in want.obs:
            np.testing.assert_array_equal(got.obs[key], want.obs[key])
        for column in ("action", "reward", "is_first", "is_last", "is_terminal"):
            np.testing.assert_array_equal(getattr(got, column), getattr(want, column))


def test_round_trip_minari_dreamer_minari(minari_root: Path, tmp_path: Path) -> None:
    obs_space = gym.spaces.Box(-3, 3, (4,), np.float32)
    buffers = create_minari("rt-v0", obs_space, gym.spaces.Discrete(3))
    mi.import_minari("rt-v0", tmp_path / "dreamer")
    mi.export_minari(tmp_path / "dreamer", tmp_path / "again", dataset_id="rt-v1")
    ds = minari.MinariDataset(tmp_path / "again" / "data")
    assert ds.observation_space == obs_space
    for got, buffer in zip(ds.iterate_episodes(), buffers, strict=True):
        np.testing.assert_array_equal(got.observations, buffer.observations)
        np.testing.assert_array_equal(got.actions, buffer.actions)
        np.testing.assert_array_equal(got.rewards, np.asarray(buffer.rewards, np.float32))
        np.testing.assert_array_equal(got.terminations, buffer.terminations)
        np.testing.assert_array_equal(got.truncations, buffer.truncations)


# --- bad input --------------------------------------------------------------------------------


def test_import_bad_sources(minari_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        mi.import_minari(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a Minari dataset"):
        mi.import_minari(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DatasetError, match="No local Minari dataset 'ghost/x-v0'"):
        mi.import_minari("ghost/x-v0", tmp_path / "out")
    write_dreamer(tmp_path / "dreamer", *EXPORT_CASES["vector-discrete"])
    with pytest.raises(DatasetError, match="is a dreamer-core dataset"):
        mi.import_minari(tmp_path / "dreamer", tmp_path / "out")

    create_minari("ok-v0", VECTOR, gym.spaces.Discrete(2))
    data = minari_root / "ok-v0" / "data"
    broken = tmp_path / "broken"
    shutil.copytree(data.parent, broken)
    (broken / "data" / "main_data.hdf5").unlink()
    with pytest.raises(DatasetError, match="no main_data.hdf5"):
        mi.import_minari(broken, tmp_path / "out")
    (broken / "data" / "main_data.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="cannot be opened"):
        mi.import_minari(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def edit_metadata(path: Path, **changes) -> None:
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def test_import_unsupported_spaces(minari_root: Path, tmp_path: Path) -> None:
    create_minari("sp-v0", VECTOR, gym.spaces.Discrete(2))
    meta = minari_root / "sp-v0" / "data" / "metadata.json"
    text = {"type": "Text", "max_length": 5, "min_length": 1, "charset": "abc"}
    edit_metadata(meta, observation_space=json.dumps({"type": "Dict", "subspaces": {"note": text}}))
    with pytest.raises(DatasetError, match="Text observation \\(key 'note'\\)"):
        mi.import_minari("sp-v0", tmp_path / "out")
    edit_metadata(meta, observation_space=json.dumps(mi.space_to_minari_json(VECTOR)))
    edit_metadata(
        meta,
        action_space=json.dumps(
            {"type": "Tuple", "subspaces": [{"type": "Discrete", "n": 2, "start": 0}]}
        ),
    )
    with pytest.raises(DatasetError, match="action space"):
        mi.import_minari("sp-v0", tmp_path / "out")
    edit_metadata(meta, action_space=json.dumps({"type": "Graph"}))
    with pytest.raises(DatasetError, match="cannot be read"):
        mi.import_minari("sp-v0", tmp_path / "out")
    edit_metadata(meta, data_format="arrow")
    with pytest.raises(DatasetError, match="'arrow' storage"):
        mi.import_minari("sp-v0", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_corrupt_episode_and_skip(minari_root: Path, tmp_path: Path) -> None:
    create_minari("bad-v0", VECTOR, gym.spaces.Discrete(2))
    with h5py.File(minari_root / "bad-v0" / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/rewards"]
    with pytest.raises(DatasetError, match="episode_1 .* no 'rewards'"):
        mi.import_minari("bad-v0", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # all or nothing
    summary = mi.import_minari("bad-v0", tmp_path / "out", skip_corrupt=True)
    assert summary["episodes"] == 2 and [s["episode"] for s in summary["skipped"]] == ["episode_1"]
    assert Dataset(tmp_path / "out").num_steps == LENGTHS[0] + LENGTHS[2]


def _replace(group: h5py.Group, name: str, value: np.ndarray) -> None:
    del group[name]
    group[name] = value


BAD_EPISODES = {  # episode_1 (8 steps) of a Box(3) / Discrete(2) dataset, edited after creation
    "wider-obs": (
        lambda g: _replace(g, "observations", np.concatenate([g["observations"][()]] * 2, axis=1)),
        ["its observations in 'observations' have 6 values each", "has 3"],
    ),
    "action-out-of-range": (
        lambda g: _replace(g, "actions", np.array([0, 1, 1, 7, 0, 0, 1, 0])),
        ["action at step 3 (actions[3]) is 7", "outside the action space Discrete(2)"],
    ),
    "negative-action": (
        lambda g: _replace(g, "actions", np.array([0, -1, 1, 1, 0, 0, 1, 0])),
        ["action at step 1 (actions[1]) is -1"],
    ),
    "too-few-observations": (
        lambda g: _replace(g, "observations", g["observations"][:-1]),
        ["it has 8 observations in 'observations' for 8 actions and rewards (expected 9)",
         "N+1 observations", "N actions"],
    ),
    "too-many-actions": (
        lambda g: _replace(g, "actions", np.concatenate([g["actions"][()], [0]])),
        ["it has 9 actions for 8 rewards", "N+1 observations", "N actions"],
    ),
    "nan-reward": (
        lambda g: _replace(g, "rewards", np.where(np.arange(8) == 2, np.nan, g["rewards"][()])),
        ["the reward of step 2 (rewards[2]) is nan"],
    ),
    "inf-observation": (
        lambda g: _replace(g, "observations", np.where(np.arange(9)[:, None] == 4, np.inf, g["observations"][()])),
        ["observation 4 (observations[4], key 'vector') is inf"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_EPISODES))
def test_import_refuses_a_bad_episode_by_name_and_step(minari_root: Path, tmp_path: Path, case) -> None:
    breaks, words = BAD_EPISODES[case]
    create_minari("bad-v0", VECTOR, gym.spaces.Discrete(2))
    with h5py.File(minari_root / "bad-v0" / "data" / "main_data.hdf5", "a") as f:
        breaks(f["episode_1"])
    with pytest.raises(DatasetError) as info:
        mi.import_minari("bad-v0", tmp_path / "out")
    message = str(info.value)
    assert "Episode episode_1 of the Minari dataset" in message and "Nothing was written" in message
    for word in words:
        assert word in message
    assert "--skip-corrupt" not in message  # `dreamer data import-minari` has no such flag
    assert "skip_corrupt=True" in message
    assert not (tmp_path / "out").exists()  # all or nothing
    summary = mi.import_minari("bad-v0", tmp_path / "out", skip_corrupt=True)
    assert [s["episode"] for s in summary["skipped"]] == ["episode_1"] and summary["episodes"] == 2
    dataset = Dataset(tmp_path / "out")
    assert dataset.num_steps == LENGTHS[0] + LENGTHS[2]
    assert ColumnStore.from_datasets(dataset).num_rows == dataset.num_rows


def test_import_into_non_dataset_dir_is_refused(minari_root: Path, tmp_path: Path) -> None:
    create_minari("x-v0", VECTOR, gym.spaces.Discrete(2))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a dreamer-core dataset"):
        mi.import_minari("x-v0", tmp_path / "busy")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_import_path_without_minari_and_id_needs_it(
    minari_root: Path, tmp_path: Path, monkeypatch
) -> None:
    create_minari("nm-v0", VECTOR, gym.spaces.Discrete(2))
    for name in [m for m in sys.modules if m == "minari" or m.startswith("minari.")]:
        monkeypatch.setitem(sys.modules, name, None)
    assert mi.import_minari(minari_root / "nm-v0", tmp_path / "out")["episodes"] == 3
    with pytest.raises(MissingDependencyError, match="minari"):
        mi.import_minari("nm-v0", tmp_path / "out2")


def test_export_refuses_and_never_leaves_half_a_dataset(tmp_path: Path, monkeypatch) -> None:
    write_dreamer(tmp_path / "src", *EXPORT_CASES["vector-discrete"])
    with pytest.raises(DatasetError, match="No dataset at"):
        mi.export_minari(tmp_path / "missing", tmp_path / "dst")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="already exists and is not empty"):
        mi.export_minari(tmp_path / "src", busy)
    mi.export_minari(tmp_path / "src", tmp_path / "done")
    with pytest.raises(DatasetError, match="is a Minari dataset"):
        mi.export_minari(tmp_path / "src", tmp_path / "done")
    with pytest.raises(DatasetError, match="not a Minari dataset id"):
        mi.export_minari(tmp_path / "src", tmp_path / "dst", dataset_id="no version")

    calls = []

    def failing(group, index, episode, single_key):
        calls.append(index)
        if index == 1:
            raise RuntimeError("disk on fire")
        original(group, index, episode, single_key)

    original = mi._write_episode
    monkeypatch.setattr(mi, "_write_episode", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        mi.export_minari(tmp_path / "src", tmp_path / "dst")
    assert calls == [0, 1]
    assert not (tmp_path / "dst").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    (tmp_path / "empty").mkdir()  # an empty destination directory is fine
    monkeypatch.setattr(mi, "_write_episode", original)
    assert mi.export_minari(tmp_path / "src", tmp_path / "empty")["episodes"] == 3


@pytest.mark.parametrize(
    "change", [{"action_repeat": 2}, {"time_limit": 10}, {"kwargs": {"x": 1}}, {"obs": "both"}]
)
def test_export_records_no_env_spec_when_options_change_the_env(tmp_path: Path, change) -> None:
    obs_space = gym.spaces.Dict({"vector": TinyVecEnv.observation_space})
    config = {**DEFAULT_ENV_CONFIG, **change}
    write_dreamer(tmp_path / "src", obs_space, TinyVecEnv.action_space, TINY_ENV_ID, config)
    assert mi.export_minari(tmp_path / "src", tmp_path / "dst")["env_spec"] is False
    metadata = json.loads((tmp_path / "dst" / "data" / "metadata.json").read_text())
    assert "env_spec" not in metadata and metadata["dreamer_core"]["env_config"] == config
