"""Retro envs through stable-retro (only Airstriker-Genesis-v0 ships its ROM)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from dreamer_core.envs import EnvConfig, make_env, make_env_pool
from dreamer_core.errors import DreamerError

pytestmark = pytest.mark.retro
pytest.importorskip("stable_retro")

AIRSTRIKER = EnvConfig("retro:Airstriker-Genesis-v0")


def test_multibinary_actions_and_image() -> None:
    env = make_env(AIRSTRIKER, seed=0, render_mode="rgb_array")
    try:
        assert env.action_space == gym.spaces.MultiBinary(12)
        assert env.observation_space["image"].shape == (64, 64, 3)
        obs, _ = env.reset()
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert env.render().shape == (224, 320, 3)
    finally:
        env.close()


def test_id_without_version_and_options() -> None:
    cfg = EnvConfig("retro:Airstriker-Genesis", grayscale=True, action_repeat=2, time_limit=3)
    env = make_env(cfg, seed=0)
    try:
        assert env.observation_space["image"].shape == (64, 64, 1)
        env.reset()
        truncated = [env.step(np.zeros(12, np.int8))[3] for _ in range(3)]
        assert truncated == [False, False, True]
    finally:
        env.close()


def test_one_emulator_per_process() -> None:
    env = make_env(AIRSTRIKER)
    try:
        with pytest.raises(DreamerError, match="close"):
            make_env(AIRSTRIKER)
    finally:
        env.close()
    make_env(AIRSTRIKER).close()  # works again once the first is closed


def test_async_pool_runs_several_emulators() -> None:
    with make_env_pool(AIRSTRIKER, 2, seed=0) as pool:
        assert pool.backend == "async"
        obs = pool.reset()
        assert obs["image"].shape == (2, 64, 64, 3)
        obs, reward, *_ = pool.step(np.zeros((2, 12), np.int8))
        assert reward.shape == (2,)
