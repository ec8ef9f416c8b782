"""DeepMind Control Suite envs (dm_control 1.0.50 + mujoco 3.17.0, EGL rendering)."""

from __future__ import annotations

import numpy as np
import pytest

from dreamer_core.envs import EnvConfig, make_env, make_env_pool

pytestmark = pytest.mark.dmc
pytest.importorskip("dm_control")


@pytest.mark.parametrize(
    "obs, keys",
    [
        ("default", {"vector": (5,)}),
        ("pixels", {"image": (64, 64, 3)}),
        ("both", {"vector": (5,), "image": (64, 64, 3)}),
    ],
)
def test_observations(obs: str, keys: dict) -> None:
    env = make_env(EnvConfig("dmc:cartpole-balance", obs=obs), seed=0)
    try:
        assert {k: s.shape for k, s in env.observation_space.spaces.items()} == keys
        assert env.action_space.shape == (1,) and env.action_space.dtype == np.float32
        assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
        first, _ = env.reset()
        assert env.observation_space.contains(first)
        obs_, reward, *_ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs_) and isinstance(reward, float)
        if "image" in keys:
            assert first["image"].std() > 0  # a real picture, not a blank frame
    finally:
        env.close()


def test_episode_truncates_after_1000_env_steps() -> None:
    env = make_env(EnvConfig("dmc:cartpole-balance"), seed=0)
    env.reset()
    zero = np.zeros(1, np.float32)
    for step in range(1, 501):  # action repeat 2 -> 500 agent steps
        _, reward, terminated, truncated, _ = env.step(zero)
        assert not terminated
        assert truncated == (step == 500)
        assert 0.0 <= reward <= 2.0  # summed over the repeat
    env.close()


def test_domain_with_underscore_and_time_limit() -> None:
    env = make_env(EnvConfig("dmc:ball_in_cup-catch", time_limit=4, action_repeat=1), seed=0)
    env.reset()
    flags = [env.step(np.zeros(2, np.float32))[3] for _ in range(4)]
    assert flags == [False, False, False, True]
    env.close()


def test_seeding_and_render() -> None:
    def rollout(seed: int) -> list[np.ndarray]:
        env = make_env(EnvConfig("dmc:walker-walk"), seed=seed, render_mode="rgb_array")
        obs, _ = env.reset()
        out = [obs["vector"]]
        for _ in range(5):
            out.append(env.step(np.full(6, 0.3, np.float32))[0]["vector"])
        assert env.render().shape == (64, 64, 3)
        env.close()
        return out

    a, b, c = rollout(3), rollout(3), rollout(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_async_pool_uses_spawn() -> None:
    cfg = EnvConfig("dmc:cartpole-balance", obs="pixels")
    with make_env_pool(cfg, 2, seed=0, backend="async") as pool:
        obs = pool.reset()
        assert obs["image"].shape == (2, 64, 64, 3)
        obs, reward, terminated, truncated = pool.step(np.zeros((2, 1), np.float32))
        assert reward.shape == (2,) and not terminated.any()
