"""Synthetic episodes and spaces for tests (no env needed)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dreamer_core.data.schema import Episode

IMAGE = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
VECTOR = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)

ACTION_SPACES = {
    "discrete": gym.spaces.Discrete(4),
    "box": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
    "multibinary": gym.spaces.MultiBinary(12),
    "multidiscrete": gym.spaces.MultiDiscrete([3, 5]),
}
OBS_SPACES = {
    "vector": gym.spaces.Dict({"vector": VECTOR}),
    "image": gym.spaces.Dict({"image": IMAGE}),
    "dict": gym.spaces.Dict({"image": IMAGE, "vector": VECTOR, "joints": gym.spaces.Box(-1, 1, (5,), np.float32)}),
}


def make_episode(
    obs_space: gym.spaces.Dict, action_space: gym.Space, steps: int, terminated: bool, episode_id: int = 0,
    rng: np.random.Generator | None = None,
) -> Episode:
    """An episode whose observations encode (episode_id, row) so alignment can be checked.

    vector[0] = row, vector[1] = episode_id; image pixel [0, 0] = (row % 256, episode_id % 256, 7).
    """
    rng = rng or np.random.default_rng(episode_id)
    rows = steps + 1
    obs = {}
    for key, space in obs_space.spaces.items():
        if space.dtype == np.uint8:
            value = rng.integers(0, 256, (rows, *space.shape), dtype=np.uint8)
            value[:, 0, 0, 0] = np.arange(rows) % 256
            value[:, 0, 0, 1] = episode_id % 256
        else:
            value = rng.standard_normal((rows, *space.shape)).astype(np.float32)
            value[:, 0] = np.arange(rows)
            if space.shape[0] > 1:
                value[:, 1] = episode_id
        obs[key] = value
    action_space.seed(int(rng.integers(2**31)))
    actions = np.stack([action_space.sample() for _ in range(steps)]) if steps else np.zeros((0,))
    if isinstance(action_space, gym.spaces.MultiBinary):
        actions = actions.astype(np.int8)
    elif isinstance(action_space, gym.spaces.Box):
        actions = actions.astype(np.float32)
    else:
        actions = actions.astype(np.int64)
    rewards = rng.standard_normal(steps).astype(np.float32)
    return Episode.from_transitions(obs, actions, rewards, terminated)
