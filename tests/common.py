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


# --- tiny models and batches (imports inside the helpers: the data tests need no torch models) ---


def space_of(space: str | gym.Space, table: dict[str, gym.Space]) -> gym.Space:
    """A space given by its name in ``table`` (ACTION_SPACES, OBS_SPACES) or as itself."""
    return table[space] if isinstance(space, str) else space


def tiny_world_model_config(latent: str = "categorical", **changes):
    """A WorldModelConfig small enough for unit tests (``changes``: top-level fields). Gaussian
    latents come with the V1 KL (3 free nats): the V2/V3 KLs need categorical logits."""
    import dataclasses

    from dreamer_core.nets.rssm import RSSMConfig
    from dreamer_core.world_model import EncoderConfig, HeadConfig, KLConfig, WorldModelConfig

    cfg = WorldModelConfig(rssm=RSSMConfig(deter=16, hidden=16, stoch=4, classes=4, latent=latent),
                           encoder=EncoderConfig(cnn_depth=4, mlp_units=16, mlp_layers=1),
                           heads=HeadConfig(units=16, layers=1),
                           kl=KLConfig(mode="v1", free_nats=3.0) if latent == "gaussian" else KLConfig())
    return dataclasses.replace(cfg, **changes)


def tiny_world_model(obs: str | gym.Space = "vector", action: str | gym.Space = "discrete", seed: int | None = 0,
                     latent: str = "categorical", **changes):
    """A freshly initialised tiny WorldModel (``seed``: torch's global seed before building)."""
    import torch

    from dreamer_core.world_model import WorldModel

    if seed is not None:
        torch.manual_seed(seed)
    return WorldModel(tiny_world_model_config(latent, **changes), space_of(obs, OBS_SPACES),
                      space_of(action, ACTION_SPACES))


def tiny_behavior_config(grad: str = "auto", **changes):
    """A BehaviorConfig with 16-unit one-layer actor and critic and horizon 5."""
    import dataclasses

    from dreamer_core.behavior import ActorConfig, BehaviorConfig

    cfg = BehaviorConfig(horizon=5, actor=ActorConfig(units=16, layers=1, grad=grad),
                         critic=dataclasses.replace(BehaviorConfig().critic, units=16, layers=1))
    return dataclasses.replace(cfg, **changes)


def episode_batch(obs: str | gym.Space = "vector", action: str | gym.Space = "discrete", B: int = 2, T: int = 6,
                  terminated: bool = True, steps: int | None = None):
    """A ``[B, T]`` Batch of rows ``0..T-1`` of B synthetic episodes (make_episode, ids 0..B-1),
    in the dtypes the sampler gives (vectors float32, frames uint8, bool flags)."""
    import torch

    from dreamer_core.types import Batch

    obs_space, action_space = space_of(obs, OBS_SPACES), space_of(action, ACTION_SPACES)
    eps = [make_episode(obs_space, action_space, steps or T, terminated=terminated, episode_id=i) for i in range(B)]

    def stack(column: str) -> torch.Tensor:
        return torch.as_tensor(np.stack([getattr(e, column)[:T] for e in eps]))

    return Batch(obs={k: torch.as_tensor(np.stack([e.obs[k][:T] for e in eps])) for k in eps[0].obs},
                 action=stack("action"), reward=stack("reward").float(), is_first=stack("is_first").bool(),
                 is_last=stack("is_last").bool(), is_terminal=stack("is_terminal").bool())


def mounted_tmpfs(where, size: str):
    """Mount a tmpfs of ``size`` (e.g. ``"1m"``) at the new folder ``where`` for a test: a
    generator for pytest fixtures (``yield from mounted_tmpfs(...)``). Skips the test where it
    cannot mount (not root, not Linux); unmounts afterwards (lazily when busy)."""
    import os
    import shutil
    import subprocess
    import sys

    import pytest

    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    where.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)  # busy: detach it
