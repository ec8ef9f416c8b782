"""Load what a run learned, for the stages that act with it (collect, evaluate, train).

``play_episode(env, policy, seed)`` plays one episode and keeps it in the dataset's row layout
(stage 04 and the dream views). ``load_agent(run)`` rebuilds the frozen world model and the actor-critic from ``RUN/world_model.pt``
and ``RUN/behavior.pt``; ``load_policy(spec, ...)`` turns a ``--policy`` value (``random`` or a
run directory) into a batched :class:`~dreamer_core.policies.Policy`, checking that the env's
spaces fit the agent.

Imports: behavior, world_model, policies, checkpoint, config, stages.train_world_model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dreamer_core import checkpoint
from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic
from dreamer_core.data.schema import Episode
from dreamer_core.errors import DreamerError
from dreamer_core.policies import AgentPolicy, Policy, RandomPolicy
from dreamer_core.stages.train_world_model import (
    WORLD_MODEL,
    resolve_device,
    world_model_from_checkpoint,
)
from dreamer_core.world_model import WorldModel

BEHAVIOR = "behavior.pt"


def load_agent(run: Path | str, device: str | torch.device = "cpu") -> tuple[WorldModel, ActorCritic, dict[str, Any]]:
    """The frozen world model and the actor-critic of a run.

    Returns (world_model, agent, behavior blob); the blob holds ``env_config``, ``update``,
    the config and the spaces.
    """
    from dreamer_core.stages.train_behavior import TrainBehaviorConfig, freeze

    run = Path(run)
    path = run / BEHAVIOR
    if not path.exists():
        raise DreamerError(
            f"The run {run} has no {BEHAVIOR}, so it has no agent. Train one with "
            f"`dreamer train-behavior --run {run}` (after `dreamer train-world-model`)."
        )
    blob = checkpoint.load(path, map_location=device)
    world_model, wm_blob = world_model_from_checkpoint(run / WORLD_MODEL, device)
    freeze(world_model)
    obs_space, act_space = checkpoint.spaces(blob)
    checkpoint.check_spaces(wm_blob, obs_space, act_space, f"The behavior {path}", run / WORLD_MODEL)
    cfg = config_lib.from_dict(TrainBehaviorConfig, blob["config"])
    agent = ActorCritic(cfg.behavior, world_model.rssm.feat_dim, act_space, world_model.rssm.feat_onehot).to(device)
    agent.load_state_dict(blob["agent"])
    agent.eval()
    return world_model, agent, blob


def load_policy(
    spec: str, observation_space: gym.spaces.Dict, action_space: gym.Space, num_envs: int,
    seed: int | None = None, device: str = "auto", mode: str = "sample",
) -> Policy:
    """Build the policy named by ``--policy``: ``random`` or a run directory with an agent."""
    if spec == "random":
        return RandomPolicy(action_space, num_envs, seed)
    run = Path(spec)
    if not run.is_dir():
        raise DreamerError(
            f"Unknown policy {spec!r}: it is neither 'random' nor an existing run directory. "
            "Use --policy random, or --policy runs/NAME for an agent trained with "
            "`dreamer train-behavior --run runs/NAME`."
        )
    dev = resolve_device(device)
    world_model, agent, blob = load_agent(run, dev)
    checkpoint.check_spaces(blob, observation_space, action_space, "The environment", run / BEHAVIOR)
    policy = AgentPolicy(world_model, agent, num_envs, mode=mode, seed=seed, device=dev)
    policy.name = f"agent:{run}"  # recorded in the dataset as the policy that produced it
    return policy


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
