"""Policies that act in K environments at once: the interface stage 01 collects with.

A policy receives the batched observations of K envs and a flag per env that says which of
them just started an episode (so a stateful agent can reset its latent state there), and
returns one action per env in the action space's dtype. ``RandomPolicy`` samples uniformly;
``SmoothRandomPolicy`` is a random walk (exploration data where uniform noise goes nowhere,
e.g. CarRacing: the original World Models collected with such actions); ``AgentPolicy`` runs a trained agent (stage 03): the world model filters the observations
into a latent state per env and the actor picks the action. Building either from a
``--policy`` string (``random``, ``smooth-random`` or a run directory) is ``runs.load_policy``;
``play_episode`` plays one episode and keeps it in the dataset's row layout.
``PolicySwitch`` changes the policy of K envs episode by episode (a collector following a
training run: each env takes the newest agent when its next episode starts).

Imports: numpy, gymnasium, torch, errors, interfaces, data.schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch

from dreamer_core.data.schema import Episode, PolicyVersion
from dreamer_core.errors import DreamerError
from dreamer_core.interfaces import ActorCriticInterface, LatentState, WorldModelInterface


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
    version: PolicyVersion | None = None  # no agent checkpoint

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


class SmoothRandomPolicy:
    """Random actions that change a little from step to step, for K envs.

    Bounded Box dimensions follow a random walk: a uniform draw when an episode starts, then
    ``a + step * (high - low) / 2 * N(0, 1)`` clipped to the bounds (``step`` 0.14 ~ the
    sqrt(1/50) Brownian increment of common World Models rollout scripts: the wheel turns and the
    gas moves over a second or two instead of flickering); unbounded dimensions walk with std
    ``step``. Discrete, multi-binary and multi-discrete actions repeat the previous one with
    probability ``repeat`` (else a uniform draw). Each env's walk restarts where ``is_first``.
    """

    name = "smooth-random"
    version: PolicyVersion | None = None  # no agent checkpoint

    def __init__(self, action_space: gym.Space, num_envs: int, seed: int | None = None, step: float = 0.14,
                 repeat: float = 0.9):
        self.action_space, self.num_envs = action_space, num_envs
        self.step, self.repeat = step, repeat
        self.uniform = RandomPolicy(action_space, num_envs, seed)  # fresh draws (its generator is ours too)
        self.rng = self.uniform.rng
        self._last: np.ndarray | None = None

    def act(self, obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
        fresh = self.uniform.act(obs, is_first)
        if self._last is None:
            self._last = fresh.copy()
            return fresh
        space, last = self.action_space, self._last
        if isinstance(space, gym.spaces.Box):
            low = np.asarray(space.low, np.float64)
            high = np.asarray(space.high, np.float64)
            scale = np.where(np.isfinite(low) & np.isfinite(high), (high - low) / 2, 1.0)  # unbounded: std step
            walked = last + self.step * scale * self.rng.standard_normal(last.shape)
            actions = np.clip(walked, low, high).astype(np.float32)  # an infinite bound clips nothing
        else:
            keep = self.rng.random(last.shape) < self.repeat
            actions = np.where(keep, last, fresh).astype(fresh.dtype)
        starts = np.asarray(is_first, bool).reshape(-1, *([1] * (actions.ndim - 1)))
        actions = np.where(starts, fresh, actions).astype(fresh.dtype)
        self._last = actions.copy()
        return actions


class AgentPolicy:
    """A trained agent acting in K envs: posterior filtering plus the actor.

    Per env it carries the posterior latent state and the last action (in the world model's
    encoding). At each call, row convention as in data/schema.py: the action taken last led to
    ``obs``, so ``obs_step(state, last_action, embed(obs), is_first)`` gives the new posterior,
    resetting to the initial state where ``is_first`` is set; the actor then picks the action.

    Args:
        mode: ``sample`` (draw from the policy, as when collecting) or ``mode`` (greedy).
        seed: seed of the sampling generator (None: nondeterministic).
    """

    name = "agent"
    version: PolicyVersion | None = None  # the run's checkpoint, set by runs.load_run_policy

    def __init__(self, world_model: WorldModelInterface, agent: ActorCriticInterface, num_envs: int,
                 mode: str = "sample",
                 seed: int | None = None, device: str | torch.device = "cpu"):
        if mode not in ("sample", "mode"):
            raise DreamerError(f"Unknown action mode {mode!r}; use sample or mode.")
        self.world_model, self.agent = world_model, agent
        self.num_envs, self.mode = num_envs, mode
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self.keys = list(world_model.observation_space.spaces)
        self.reset()

    def reset(self) -> None:
        self.state: LatentState = self.world_model.initial_state(self.num_envs)
        self.last_action = torch.zeros(self.num_envs, self.world_model.actions.dim, device=self.device)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise DreamerError(
                f"The env gives observation keys {sorted(obs)}, but the agent was trained on {self.keys}. "
                "Use the env options the training data was collected with (e.g. --pixels)."
            )
        current = {}
        for key in self.keys:
            value = torch.as_tensor(np.asarray(obs[key]), device=self.device)
            current[key] = value if value.dtype == torch.uint8 else value.float()  # [K, ...]
        first = torch.as_tensor(np.asarray(is_first, dtype=bool), device=self.device)
        self.state = self.world_model.step(self.state, self.last_action, current, first, generator=self.generator)
        policy = self.agent.policy(self.world_model.features(self.state))
        action = policy.mode if self.mode == "mode" else policy.sample(self.generator)
        actions = self.world_model.actions
        self.last_action = actions.to_model(action)
        return actions.to_env(action)


class PolicySwitch:
    """K envs that change policy between episodes: env i acts with the policy that was the
    newest when its current episode began, so every episode is played by one policy.

    ``offer(policy)`` makes ``policy`` the newest; each env takes it at its next episode start
    (``is_first``). While the envs disagree, every policy in use acts on all K envs (a
    stateful agent filters each env's latent state only if it sees every step; it resets an
    env's state where ``is_first`` is set, so an env that switches starts clean) and each env
    takes its own policy's action: the cost of two policies for at most one episode. A policy
    no env uses any more is dropped.
    """

    def __init__(self, policy: Policy, num_envs: int):
        self.name = policy.name
        self._policies: dict[int, Policy] = {0: policy}
        self._newest = 0
        self._env_policy = np.zeros(num_envs, dtype=np.int64)  # the policy id of each env's episode

    @property
    def newest(self) -> Policy:
        return self._policies[self._newest]

    def offer(self, policy: Policy) -> None:
        """Make ``policy`` the newest: envs start their next episodes with it."""
        self._newest += 1
        self._policies[self._newest] = policy
        self._drop_unused()

    def policy_of(self, env: int) -> Policy:
        """The policy playing env ``env``'s current (or just finished) episode."""
        return self._policies[int(self._env_policy[env])]

    def act(self, obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
        self._env_policy[np.asarray(is_first, dtype=bool)] = self._newest
        self._drop_unused()
        used = np.unique(self._env_policy)
        if len(used) == 1:
            return self._policies[int(used[0])].act(obs, is_first)
        actions = None
        for key in used:
            chosen = self._policies[int(key)].act(obs, is_first)
            if actions is None:
                actions = chosen.copy()
            mask = self._env_policy == key
            actions[mask] = chosen[mask]
        return actions

    def _drop_unused(self) -> None:
        keep = {int(k) for k in self._env_policy} | {self._newest}
        self._policies = {k: p for k, p in self._policies.items() if k in keep}


@dataclass
class PlayedEpisode:
    """One episode played by a policy: its rows (data/schema.py layout) and, when rendered,
    one ``env.render()`` frame per row."""

    episode: Episode
    ret: float  # summed in float64 as the env returned the rewards
    frames: list[np.ndarray] = field(default_factory=list)


def play_episode(env: gym.Env, policy: AgentPolicy, seed: int, max_steps: int = 0,
                 render: bool = False) -> PlayedEpisode:
    """Reset ``env`` with ``seed`` and play until it ends (or ``max_steps`` steps, 0: no cap)."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    observations, actions, rewards = [obs], [], []
    frames = [env.render()] if render else []
    is_first = np.ones(1, dtype=bool)
    terminated = truncated = False
    while not (terminated or truncated or (max_steps and len(actions) >= max_steps)):
        action = policy.act({k: np.asarray(v)[None] for k, v in obs.items()}, is_first)[0]
        obs, reward, terminated, truncated, _ = env.step(action)
        is_first[:] = False
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        if render:
            frames.append(env.render())
    stacked = {k: np.stack([np.asarray(o[k]) for o in observations]) for k in observations[0]}
    episode = Episode.from_transitions(stacked, np.stack(actions), np.asarray(rewards, np.float32), bool(terminated))
    return PlayedEpisode(episode, sum(rewards), frames)
