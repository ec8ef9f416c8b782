"""Observation-space convention, wrappers and EnvConfig of the generic (gymnasium) suite."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.envs.dummy import ENVS
from dreamer_core.envs.wrappers import ActionRepeat, ObsAdapter
from dreamer_core.errors import DreamerError


def check_convention(env: gym.Env, steps: int = 3) -> dict[str, np.ndarray]:
    """Reset and step ``env``; every observation must fit its Dict space exactly."""
    space = env.observation_space
    assert isinstance(space, gym.spaces.Dict)
    for key, sub in space.spaces.items():
        assert isinstance(sub, gym.spaces.Box), key
        if sub.dtype == np.uint8:
            assert len(sub.shape) == 3 and sub.shape[-1] in (1, 3), (key, sub.shape)
        else:
            assert sub.dtype == np.float32 and len(sub.shape) == 1, (key, sub)
    obs, _ = env.reset()
    for _ in range(steps + 1):
        assert set(obs) == set(space.spaces)
        for key, value in obs.items():
            assert value.dtype == space[key].dtype and value.shape == space[key].shape, key
        assert space.contains(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return obs


@pytest.mark.parametrize(
    "env_id, obs, keys",
    [
        ("CartPole-v1", "default", {"vector": (4,)}),
        ("CartPole-v1", "pixels", {"image": (64, 64, 3)}),
        ("CartPole-v1", "both", {"vector": (4,), "image": (64, 64, 3)}),
        ("FrozenLake-v1", "default", {"vector": (16,)}),  # Discrete obs -> one-hot
        ("LunarLander-v3", "default", {"vector": (8,)}),  # Box2D
        ("LunarLander-v3", "pixels", {"image": (64, 64, 3)}),
        ("dreamer/DummyDiscrete-v0", "default", {"vector": (4,)}),
        ("dreamer/DummyContinuous-v0", "default", {"vector": (3,)}),
        ("dreamer/DummyMultiBinary-v0", "both", {"vector": (5,), "image": (64, 64, 3)}),
        ("dreamer/DummyImage-v0", "default", {"image": (64, 64, 3)}),
        ("dreamer/DummyImage-v0", "pixels", {"image": (64, 64, 3)}),
        ("dreamer/DummyDict-v0", "default", {"image": (64, 64, 3), "state": (4,)}),
        ("dreamer/DummyDict-v0", "pixels", {"image": (64, 64, 3)}),
    ],
)
def test_observation_convention(env_id: str, obs: str, keys: dict) -> None:
    env = make_env(EnvConfig(env_id, obs=obs), seed=0)
    try:
        assert {k: s.shape for k, s in env.observation_space.spaces.items()} == keys
        check_convention(env)
    finally:
        env.close()


def test_frozenlake_one_hot() -> None:
    env = make_env(EnvConfig("FrozenLake-v1"), seed=0)
    obs, _ = env.reset()
    assert obs["vector"].sum() == 1.0 and obs["vector"][0] == 1.0  # starts in cell 0
    env.close()


@pytest.mark.parametrize("grayscale, channels", [(False, 3), (True, 1)])
def test_image_size_and_grayscale(grayscale: bool, channels: int) -> None:
    env = make_env(EnvConfig("dreamer/DummyImage-v0", size=(32, 24), grayscale=grayscale))
    assert env.observation_space["image"].shape == (32, 24, channels)
    check_convention(env)
    env.close()


def test_action_spaces_are_kept() -> None:
    expected = {
        "dreamer/DummyDiscrete-v0": gym.spaces.Discrete(3),
        "dreamer/DummyContinuous-v0": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        "dreamer/DummyMultiBinary-v0": gym.spaces.MultiBinary(4),
    }
    for env_id, space in expected.items():
        env = make_env(EnvConfig(env_id))
        assert env.action_space == space
        env.close()


class _OddSpaces(gym.Env):
    """An env with a 2-D float Box and a Dict holding a Discrete and a 2-D Box."""

    def __init__(self, kind: str):
        self.action_space = gym.spaces.Discrete(2)
        if kind == "box2d":
            self.observation_space = gym.spaces.Box(-1, 1, (3, 4), np.float64)
        else:
            self.observation_space = gym.spaces.Dict(
                {
                    "mode": gym.spaces.Discrete(5, start=1),
                    "grid": gym.spaces.Box(0, 9, (2, 3), np.int64),
                    "cam": gym.spaces.Box(0, 255, (20, 20, 3), np.uint8),
                }
            )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_box_with_two_dims_is_flattened() -> None:
    env = ObsAdapter(_OddSpaces("box2d"))
    assert env.observation_space["vector"].shape == (12,)
    check_convention(env)


def test_dict_keeps_its_keys() -> None:
    env = ObsAdapter(_OddSpaces("dict"), size=(8, 8))
    spaces = env.observation_space.spaces
    assert {k: s.shape for k, s in spaces.items()} == {"mode": (5,), "grid": (6,), "cam": (8, 8, 3)}
    obs = check_convention(env)
    assert obs["mode"].sum() == 1.0  # one-hot of a Discrete with start=1


def test_dummy_observations_encode_the_step() -> None:
    env = make_env(EnvConfig("dreamer/DummyDict-v0", size=(16, 16)), seed=1)
    obs, _ = env.reset()
    for t in range(1, 40):
        assert obs["state"][0] == t - 1
        assert np.all(obs["image"][..., 0] == t - 1)
        obs, _, terminated, truncated, _ = env.step(0)
        if terminated or truncated:
            assert obs["state"][0] == t
            break
    else:
        pytest.fail("dummy episode did not end")
    # Resizing keeps the uniform channels exact.
    big = make_env(EnvConfig("dreamer/DummyImage-v0"), seed=1)
    obs, _ = big.reset()
    obs, *_ = big.step(0)
    assert obs["image"].shape == (64, 64, 3) and np.all(obs["image"][..., 0] == 1)


def test_dummy_reward_depends_on_action() -> None:
    env = make_env(EnvConfig("dreamer/DummyDiscrete-v0"), seed=0)
    obs, _ = env.reset()
    target = int(np.argmax(obs["vector"][1:]))
    rewards = []
    for action in range(3):
        env.reset(seed=0)
        rewards.append(env.step(action)[1])
    assert rewards[target] == 1.0 and sum(rewards) == 1.0


def test_dummy_episodes_terminate_and_truncate() -> None:
    env = make_env(EnvConfig("dreamer/DummyContinuous-v0"), seed=0)
    ends = set()
    env.reset()
    for _ in range(2000):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            ends.add("terminated" if terminated else "truncated")
            env.reset()
    assert ends == {"terminated", "truncated"}


def test_action_repeat_sums_rewards_and_time_limit_counts_agent_steps() -> None:
    env = make_env(EnvConfig("CartPole-v1", action_repeat=3, time_limit=5), seed=0)
    assert isinstance(env.unwrapped, gym.Env)
    env.reset()
    for step in range(1, 6):
        _, reward, terminated, truncated, _ = env.step(step % 2)
        if terminated:
            break
        assert reward == 3.0
        assert truncated == (step == 5)
    # The env's own limit is lifted past ours.
    long = make_env(EnvConfig("dreamer/DummyDiscrete-v0", time_limit=40), seed=0)
    long.reset()
    truncated = False
    for _ in range(40):
        _, _, terminated, truncated, _ = long.step(0)
        if terminated or truncated:
            break
    assert terminated and not truncated  # episodes of <= 30 steps now end by themselves


def test_action_repeat_stops_at_episode_end() -> None:
    env = ActionRepeat(gym.make("dreamer/DummyDiscrete-v0", max_episode_steps=3), 4)
    env.reset(seed=0)
    _, _, _, truncated, _ = env.step(0)
    assert truncated


@pytest.mark.parametrize("env_id", ["CartPole-v1", "dreamer/DummyDiscrete-v0"])
def test_render_rgb_array(env_id: str) -> None:
    env = make_env(EnvConfig(env_id), render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[-1] == 3
    env.close()


def test_seeding_is_deterministic() -> None:
    def rollout(env_id: str, seed: int) -> list[np.ndarray]:
        env = make_env(EnvConfig(env_id), seed=seed)
        obs, _ = env.reset()
        out = [obs["vector"]]
        for t in range(60):
            obs, _, terminated, truncated, _ = env.step(t % 2)
            out.append(obs["vector"])
            if terminated or truncated:
                obs, _ = env.reset()
                out.append(obs["vector"])
        env.close()
        return out

    for env_id in ("CartPole-v1", "dreamer/DummyDiscrete-v0"):
        first, second = rollout(env_id, 7), rollout(env_id, 7)
        assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(rollout("CartPole-v1", 7)[0], rollout("CartPole-v1", 8)[0])


def test_config_json_round_trip() -> None:
    cfg = EnvConfig("ALE/Pong-v5", grayscale=True, size=(84, 84), kwargs=(("mode", 0),))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["size"] == [84, 84]
    assert EnvConfig.from_dict(data) == cfg


@given(
    obs=st.sampled_from(["default", "pixels", "both"]),
    size=st.tuples(st.integers(1, 256), st.integers(1, 256)),
    repeat=st.integers(0, 8),
    sticky=st.floats(0.0, 1.0),
    limit=st.integers(0, 10_000),
    module=st.one_of(st.none(), st.just("my_envs")),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), max_size=3),
)
def test_config_round_trip_property(obs, size, repeat, sticky, limit, module, kwargs) -> None:
    cfg = EnvConfig(
        "CartPole-v1",
        obs=obs,
        size=size,
        action_repeat=repeat,
        sticky_actions=sticky,
        time_limit=limit,
        env_module=module,
        kwargs=kwargs,
    )
    assert EnvConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_validation_and_defaults() -> None:
    assert EnvConfig("ALE/Pong-v5").effective_action_repeat == 4
    assert EnvConfig("dmc:walker-walk").effective_action_repeat == 2
    assert EnvConfig("CartPole-v1", action_repeat=3).effective_action_repeat == 3
    assert EnvConfig("x", size=[32, 32]).size == (32, 32)
    with pytest.raises(DreamerError, match="obs must be one of"):
        EnvConfig("CartPole-v1", obs="rgb")
    with pytest.raises(DreamerError, match="Valid keys are"):
        EnvConfig.from_dict({"id": "CartPole-v1", "frame_skip": 4})


def test_pixels_need_rgb_array_render_mode() -> None:
    with pytest.raises(DreamerError, match="render_mode"):
        make_env(EnvConfig("CartPole-v1", obs="pixels"), render_mode="human")


def test_every_dummy_is_registered() -> None:
    for env_id in ENVS:
        assert env_id in gym.registry


def test_pillow_fallback_matches_opencv_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    from dreamer_core.envs import wrappers

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    with_cv = wrappers.image_converter((20, 15), grayscale=True)(image)
    monkeypatch.setattr(wrappers, "_opencv", lambda: None)
    with_pil = wrappers.image_converter((20, 15), grayscale=True)(image)
    assert with_pil.shape == with_cv.shape == (20, 15, 1) and with_pil.dtype == np.uint8
    assert np.abs(with_pil.astype(int) - with_cv.astype(int)).max() <= 2
    rgb = wrappers.image_converter((10, 10), grayscale=False)(image)
    assert rgb.shape == (10, 10, 3)
