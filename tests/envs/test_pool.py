"""EnvPool: NEXT_STEP autoreset, seeding and shapes for the serial and async backends."""

from __future__ import annotations

import numpy as np
import pytest

from dreamer_core.envs import EnvConfig, EnvPool, make_env, make_env_pool
from dreamer_core.envs.pool import choose_backend
from dreamer_core.errors import DreamerError

DUMMY = EnvConfig("dreamer/DummyDiscrete-v0")


def rollout(pool: EnvPool, actions: np.ndarray, seed: int) -> list[tuple]:
    """Reset with ``seed`` and step through ``actions`` ``[T, K]``; returns every output."""
    out = [(pool.reset(seed=seed),)]
    for step_actions in actions:
        out.append(pool.step(step_actions))
    return out


@pytest.mark.parametrize("backend", ["serial", "async"])
def test_next_step_autoreset(backend: str) -> None:
    pool = make_env_pool(DUMMY, num_envs=2, seed=0, backend=backend)
    try:
        assert pool.num_envs == 2 and pool.observation_space["vector"].shape == (4,)
        obs = pool.reset(seed=3)
        assert obs["vector"].shape == (2, 4) and np.all(obs["vector"][:, 0] == 0)
        steps_in_episode = np.zeros(2, int)
        ends = {0: 0, 1: 0}
        pending_reset = np.zeros(2, bool)
        for _ in range(80):
            actions = np.array([0, 1])
            obs, reward, terminated, truncated = pool.step(actions)
            assert reward.dtype == np.float32 and reward.shape == (2,)
            assert terminated.dtype == bool and truncated.dtype == bool
            for i in range(2):
                if pending_reset[i]:
                    # The step after an episode end: first observation, no reward, no flags.
                    assert obs["vector"][i, 0] == 0
                    assert reward[i] == 0.0 and not terminated[i] and not truncated[i]
                    steps_in_episode[i] = 0
                    pending_reset[i] = False
                    continue
                steps_in_episode[i] += 1
                assert obs["vector"][i, 0] == steps_in_episode[i]  # the action was applied
                if terminated[i] or truncated[i]:
                    pending_reset[i] = True
                    ends[i] += 1
        assert ends[0] >= 2 and ends[1] >= 2
    finally:
        pool.close()


@pytest.mark.parametrize("backend", ["serial", "async"])
def test_action_on_reset_step_is_ignored(backend: str) -> None:
    # Find when env 0 first ends, then replay with a different action at the reset step.
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 3, size=(40, 2))
    pool = make_env_pool(DUMMY, num_envs=2, backend=backend)
    try:
        first = rollout(pool, actions, seed=11)
        end = next(t for t, out in enumerate(first[1:]) if out[2][0] or out[3][0])
        changed = actions.copy()
        changed[end + 1, 0] = (changed[end + 1, 0] + 1) % 3
        second = rollout(pool, changed, seed=11)
    finally:
        pool.close()
    for a, b in zip(first[1:], second[1:], strict=True):
        assert np.array_equal(a[0]["vector"], b[0]["vector"])
        assert np.array_equal(a[1], b[1])


@pytest.mark.parametrize("backend", ["serial", "async"])
def test_pool_seeding(backend: str) -> None:
    actions = np.random.default_rng(1).integers(0, 3, size=(30, 2))
    pool = make_env_pool(DUMMY, num_envs=2, backend=backend)
    try:
        a = rollout(pool, actions, seed=5)
        b = rollout(pool, actions, seed=5)
    finally:
        pool.close()
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x[0]["vector"], y[0]["vector"])
    # Env i of the pool is the single env seeded with seed + i.
    single = make_env(DUMMY, seed=6)
    obs, _ = single.reset()
    assert np.array_equal(obs["vector"], a[0][0]["vector"][1])
    for t in range(30):
        obs, reward, terminated, truncated, _ = single.step(actions[t, 1])
        assert np.array_equal(obs["vector"], a[t + 1][0]["vector"][1])
        assert reward == a[t + 1][1][1]
        if terminated or truncated:
            break


def test_seed_at_construction_applies_to_first_reset() -> None:
    actions = np.zeros((20, 1), np.int64)
    with make_env_pool(DUMMY, 1, seed=4) as one, make_env_pool(DUMMY, 1, seed=4) as two:
        a, b = rollout(one, actions, seed=None), rollout(two, actions, seed=None)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x[0]["vector"], y[0]["vector"])


def test_serial_k1_matches_k3() -> None:
    actions = np.random.default_rng(2).integers(0, 3, size=(50, 3))
    with make_env_pool(DUMMY, 3, backend="serial") as three:
        many = rollout(three, actions, seed=0)
    with make_env_pool(DUMMY, 1, backend="serial") as one:
        single = rollout(one, actions[:, :1], seed=0)
    for x, y in zip(many[1:], single[1:], strict=True):
        assert np.array_equal(x[0]["vector"][:1], y[0]["vector"])
        assert np.array_equal(x[1][:1], y[1]) and np.array_equal(x[2][:1], y[2])


def test_image_dict_and_continuous_pools() -> None:
    cfg = EnvConfig("dreamer/DummyDict-v0", size=(16, 16))
    with make_env_pool(cfg, 2, seed=0, backend="serial") as pool:
        obs = pool.reset()
        assert obs["image"].shape == (2, 16, 16, 3) and obs["image"].dtype == np.uint8
        assert obs["state"].shape == (2, 4)
        obs, *_ = pool.step(np.array([0, 1]))
        assert np.all(obs["image"][:, :, :, 0] == 1)
    with make_env_pool(EnvConfig("dreamer/DummyContinuous-v0"), 2, backend="async") as pool:
        pool.reset(seed=0)
        _, reward, _, _ = pool.step(np.zeros((2, 2), np.float32))
        assert reward.shape == (2,) and reward.dtype == np.float32


def test_backend_choice_and_errors() -> None:
    assert choose_backend(DUMMY, 1) == "serial"
    assert choose_backend(DUMMY, 4) == "async"
    assert choose_backend(EnvConfig("retro:Airstriker-Genesis-v0"), 1) == "serial"
    with pytest.raises(DreamerError, match="backend"):
        make_env_pool(DUMMY, 2, backend="threads")
    with pytest.raises(DreamerError, match="num_envs"):
        make_env_pool(DUMMY, 0)
    with pytest.raises(DreamerError, match="backend='async'"):
        make_env_pool(EnvConfig("retro:Airstriker-Genesis-v0"), 2, backend="serial")
    with pytest.raises(DreamerError, match="'ale' pool backend"):
        make_env_pool(DUMMY, 2, backend="ale")
