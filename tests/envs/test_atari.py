"""Atari (ALE) envs: Dreamer preprocessing, action sets, and the ale-py vector backend."""

from __future__ import annotations

import numpy as np
import pytest

from dreamer_core.envs import EnvConfig, make_env, make_env_pool
from dreamer_core.envs.atari import rom_name
from dreamer_core.envs.pool import choose_backend

pytestmark = pytest.mark.atari
pytest.importorskip("ale_py")
pytest.importorskip("cv2")

PONG = EnvConfig("ALE/Pong-v5")


@pytest.mark.parametrize("grayscale, channels", [(False, 3), (True, 1)])
def test_image_shapes(grayscale: bool, channels: int) -> None:
    env = make_env(EnvConfig("ALE/Pong-v5", grayscale=grayscale), seed=0)
    try:
        assert env.observation_space["image"].shape == (64, 64, channels)
        obs, _ = env.reset()
        assert obs["image"].shape == (64, 64, channels) and obs["image"].dtype == np.uint8
        obs, *_ = env.step(0)
        assert env.observation_space.contains(obs)
    finally:
        env.close()


@pytest.mark.parametrize("repeat, frames", [(0, 4), (2, 2)])
def test_action_repeat_in_frames(repeat: int, frames: int) -> None:
    env = make_env(EnvConfig("ALE/Pong-v5", action_repeat=repeat, sticky_actions=0.0), seed=0)
    try:
        _, info = env.reset()
        before = info["episode_frame_number"]
        for step in range(1, 4):
            _, _, _, _, info = env.step(0)
            assert info["episode_frame_number"] - before == step * frames
    finally:
        env.close()


def test_minimal_and_full_action_sets() -> None:
    minimal = make_env(PONG)
    full = make_env(EnvConfig("ALE/Pong-v5", full_action_space=True))
    assert minimal.action_space.n == 6 and full.action_space.n == 18
    minimal.close()
    full.close()


def test_time_limit_counts_agent_steps() -> None:
    env = make_env(EnvConfig("ALE/Pong-v5", time_limit=7), seed=0)
    env.reset()
    for step in range(1, 8):
        _, _, terminated, truncated, _ = env.step(0)
        assert truncated == (step == 7) and not terminated
    env.close()


def test_render_full_frames() -> None:
    env = make_env(PONG, render_mode="rgb_array")
    env.reset(seed=0)
    assert env.render().shape == (210, 160, 3)
    env.close()


def test_rom_names() -> None:
    assert rom_name("ALE/Pong-v5") == "pong"
    assert rom_name("ALE/MsPacman-v5") == "ms_pacman"


def test_ale_backend_matches_make_env_and_autoresets() -> None:
    assert choose_backend(PONG, 2) == "ale"
    cfg = EnvConfig("ALE/Pong-v5", time_limit=5)
    single = make_env(cfg)
    with make_env_pool(cfg, 2, seed=0, backend="ale") as pool:
        assert pool.observation_space == single.observation_space
        assert pool.action_space == single.action_space
        obs = pool.reset()
        assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
        for step in range(1, 6):
            obs, reward, terminated, truncated = pool.step(np.array([0, 1]))
            assert reward.dtype == np.float32 and terminated.dtype == bool
            assert np.all(truncated == (step == 5))
        # NEXT_STEP: the step after truncation returns first observations, reward 0, no flags.
        obs, reward, terminated, truncated = pool.step(np.array([2, 3]))
        assert np.all(reward == 0) and not terminated.any() and not truncated.any()
    single.close()


def test_ale_backend_grayscale_and_seeding() -> None:
    cfg = EnvConfig("ALE/Pong-v5", grayscale=True)
    with make_env_pool(cfg, 2, backend="ale") as pool:
        first = pool.reset(seed=3)["image"]
        assert first.shape == (2, 64, 64, 1)
        steps = [pool.step(np.array([1, 2]))[0]["image"] for _ in range(10)]
        again = pool.reset(seed=3)["image"]
        steps_again = [pool.step(np.array([1, 2]))[0]["image"] for _ in range(10)]
    assert np.array_equal(first, again)
    assert all(np.array_equal(a, b) for a, b in zip(steps, steps_again, strict=True))


def test_serial_seeding_is_deterministic() -> None:
    def frames(seed: int) -> list[np.ndarray]:
        env = make_env(PONG, seed=seed)
        obs, _ = env.reset()
        out = [obs["image"]]
        for t in range(30):
            out.append(env.step(t % 6)[0]["image"])
        env.close()
        return out

    assert all(np.array_equal(a, b) for a, b in zip(frames(1), frames(1), strict=True))


def test_life_loss_terminates_serial_and_ale() -> None:
    cfg = EnvConfig("ALE/Breakout-v5", life_loss_terminal=True, sticky_actions=0.0)
    rng = np.random.default_rng(0)
    env = make_env(cfg, seed=0)
    _, info = env.reset()
    assert info["lives"] == 5
    for _ in range(400):
        _, _, terminated, truncated, info = env.step(int(rng.integers(0, 4)))
        if terminated or truncated:
            break
    env.close()
    assert terminated and info["lives"] == 4
    with make_env_pool(cfg, 2, seed=0, backend="ale") as pool:
        pool.reset()
        ended = np.zeros(2, bool)
        for _ in range(400):
            _, _, terminated, _ = pool.step(rng.integers(0, 4, size=2))
            ended |= terminated
            if ended.all():
                break
    assert ended.all()
