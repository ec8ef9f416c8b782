"""Policies that act in K environments at once: the interface stage 01 collects with.

A policy receives the batched observations of K envs and a flag per env that says which of
them just started an episode (so a stateful agent can reset its latent state there), and
returns one action per env in the action space's dtype. ``RandomPolicy`` samples uniformly;
the trained agent (stage 03) plugs in through :func:`load_policy` with a run directory.

Imports: numpy, gymnasium, errors (the agent policy will add world_model and behavior).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import gymnasium as gym
import numpy as np

from dreamer_core.errors import DreamerError


class Policy(Protocol):
    """Batched policy interface.

    ``act(obs, is_first) -> actions``: ``obs`` maps keys to ``[K, ...]`` arrays, ``is_first``
    is bool ``[K]``; the result is ``[K, ...]`` (int64 for Discrete, float32 for Box, int8 for
    MultiBinary, int64 for MultiDiscrete).
    """

    name: str

    def act(self, obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray: ...


class RandomPolicy:
    """Uniform random actions for K envs from an explicit generator.

    Actions are drawn ``block`` steps at a time (one generator call per block instead of one
    per step: a numpy generator call costs more than a CartPole step). Unbounded Box
    dimensions are sampled from a standard normal.
    """

    name = "random"

    def __init__(self, action_space: gym.Space, num_envs: int, seed: int | None = None, block: int = 1024):
        self.action_space = action_space
        self.num_envs = num_envs
        self.rng = np.random.default_rng(seed)
        self._sample = self._make_sampler(action_space, block * num_envs)
        self._block: np.ndarray | None = None
        self._next = block

    def act(self, obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
        if self._block is None or self._next == len(self._block):
            flat = self._sample()
            self._block = flat.reshape(-1, self.num_envs, *flat.shape[1:])
            self._next = 0
        actions = self._block[self._next]
        self._next += 1
        return actions

    def _make_sampler(self, space: gym.Space, K: int):
        rng = self.rng
        if isinstance(space, gym.spaces.Discrete):
            low, high = int(space.start), int(space.start + space.n)
            return lambda: rng.integers(low, high, size=K, dtype=np.int64)
        if isinstance(space, gym.spaces.MultiBinary):
            shape = (K, *np.atleast_1d(space.n).tolist())
            return lambda: rng.integers(0, 2, size=shape, dtype=np.int8)
        if isinstance(space, gym.spaces.MultiDiscrete):
            nvec = space.nvec
            return lambda: rng.integers(0, nvec, size=(K, *nvec.shape), dtype=np.int64)
        if isinstance(space, gym.spaces.Box):
            low = np.asarray(space.low, np.float64)
            high = np.asarray(space.high, np.float64)
            bounded = np.isfinite(low) & np.isfinite(high)
            if bounded.all():
                return lambda: rng.uniform(low, high, size=(K, *space.shape)).astype(np.float32)

            def sample() -> np.ndarray:
                normal = rng.standard_normal((K, *space.shape))
                uniform = rng.uniform(np.where(bounded, low, 0), np.where(bounded, high, 1), size=(K, *space.shape))
                return np.where(bounded, uniform, normal).astype(np.float32)

            return sample
        raise DreamerError(f"RandomPolicy cannot sample the action space {space}.")


def load_policy(
    spec: str, observation_space: gym.spaces.Dict, action_space: gym.Space, num_envs: int,
    seed: int | None = None, device: str = "auto",
) -> Policy:
    """Build the policy named by ``--policy``: ``random`` or a run directory with an agent."""
    if spec == "random":
        return RandomPolicy(action_space, num_envs, seed)
    run = Path(spec)
    if not run.exists():
        raise DreamerError(
            f"Unknown policy {spec!r}: it is neither 'random' nor an existing run directory. "
            "Use --policy random, or --policy runs/NAME for an agent trained with "
            "`dreamer train-behavior --run runs/NAME`."
        )
    if not (run / "behavior.pt").exists():
        raise DreamerError(
            f"The run {run} has no behavior.pt, so it has no agent to collect with. Train one with "
            f"`dreamer train-behavior --run {run}` (after `dreamer train-world-model`), or use "
            "--policy random."
        )
    raise DreamerError(
        f"The run {run} has a behavior.pt, but this version of dreamer-core cannot load agents "
        "yet (stage 03 is not part of it). Use --policy random, or update dreamer-core."
    )
