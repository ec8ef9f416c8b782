"""Behavior-learning speed: ms per actor-critic update per size and action kind.

    python benchmarks/bench_behavior.py [--sizes tiny XS S] [--updates 5] [--threads 0]

For each size (the world-model preset and the behavior preset of the same name), builds an
untrained DreamerV3 world model for a CartPole-like task (vector 4, Discrete(2): REINFORCE) and
a Pendulum-like one (vector 3, Box(1): dynamics backprop), and times the full update of stage
03 (`stages.updates.behavior_update`: posterior start states of a B=16, T=64 replay
batch -> imagination of H=15 from all 1024 of them -> returns, actor and critic losses ->
backward -> clip -> Adam -> slow critic). Then splits one XS update into its parts. Writes the
`behavior-speed` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from results import update_section

from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic
from dreamer_core.nets.layers import OneHotAwareLinear
from dreamer_core.optim import make_optimizer
from dreamer_core.runs import freeze
from dreamer_core.stages.train_behavior import TrainBehaviorConfig
from dreamer_core.stages.train_world_model import TrainWorldModelConfig
from dreamer_core.stages.updates import behavior_update
from dreamer_core.types import Batch
from dreamer_core.world_model import WorldModel

TASKS = {
    "discrete (REINFORCE)": (gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)}),
                             gym.spaces.Discrete(2)),
    "continuous (dynamics)": (gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)}),
                              gym.spaces.Box(-2.0, 2.0, (1,), np.float32)),
}


def build(size: str, obs_space, act_space):
    wm_cfg = config_lib.apply_presets(TrainWorldModelConfig(), "train-world-model", [size])
    cfg = config_lib.apply_presets(TrainBehaviorConfig(), "train-behavior", [size])
    world_model = freeze(WorldModel(wm_cfg.model, obs_space, act_space))
    agent = ActorCritic.for_world_model(cfg.behavior, world_model)
    groups = agent.parameter_groups()
    actor_optim = make_optimizer(groups["actor"], cfg.behavior.actor_optim)
    critic_optim = make_optimizer(groups["critic"], cfg.behavior.critic_optim)
    return world_model, agent, actor_optim, critic_optim, cfg.behavior


def batch_for(obs_space, act_space, B=16, T=64, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    dim = obs_space["vector"].shape[0]
    if isinstance(act_space, gym.spaces.Discrete):
        action = torch.randint(0, int(act_space.n), (B, T), generator=g)
    else:
        action = torch.rand(B, T, *act_space.shape, generator=g) * 4 - 2
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    return Batch(obs={"vector": torch.randn(B, T, dim, generator=g)}, action=action,
                 reward=torch.rand(B, T, generator=g), is_first=is_first,
                 is_last=torch.zeros(B, T, dtype=torch.bool), is_terminal=torch.zeros(B, T, dtype=torch.bool))


def time_update(size: str, task: str, updates: int) -> tuple[float, int]:
    obs_space, act_space = TASKS[task]
    world_model, agent, actor_optim, critic_optim, cfg = build(size, obs_space, act_space)
    batch = batch_for(obs_space, act_space)
    behavior_update(world_model, agent, actor_optim, critic_optim, cfg, batch)  # warm-up
    start = time.perf_counter()
    for _ in range(updates):
        behavior_update(world_model, agent, actor_optim, critic_optim, cfg, batch)
    ms = (time.perf_counter() - start) / updates * 1000
    params = sum(p.numel() for p in agent.actor.parameters()) + sum(p.numel() for p in agent.critic.parameters())
    return ms, params


def onehot_ab(size: str, rounds: int = 3) -> tuple[float, float]:
    """Interleaved A/B of one update with the gather-sum first layers on and off (min ms each)."""
    obs_space, act_space = TASKS["discrete (REINFORCE)"]
    world_model, agent, actor_optim, critic_optim, cfg = build(size, obs_space, act_space)
    batch = batch_for(obs_space, act_space)
    layers = [m for m in [*world_model.modules(), *agent.modules()] if isinstance(m, OneHotAwareLinear)]
    saved = [m.onehot for m in layers]
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds + 1):
        for on in (True, False):
            for layer, onehot in zip(layers, saved):
                layer.onehot = onehot if on else None
            start = time.perf_counter()
            behavior_update(world_model, agent, actor_optim, critic_optim, cfg, batch)
            if i:  # the first round warms up
                times[on].append((time.perf_counter() - start) * 1000)
    return min(times[True]), min(times[False])


def breakdown(size: str, repeats: int = 3) -> list[tuple[str, float]]:
    """Time the parts of one update (same work as behavior_update, in separate pieces)."""
    obs_space, act_space = TASKS["discrete (REINFORCE)"]
    world_model, agent, actor_optim, critic_optim, cfg = build(size, obs_space, act_space)
    batch = batch_for(obs_space, act_space)

    def timed(fn):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        return (time.perf_counter() - start) / repeats * 1000, out

    def observe():
        with torch.no_grad():  # the frozen world model only filters (as behavior_update does)
            return world_model.observe(batch)

    t_post, post = timed(observe)
    start = post.detach().flatten(0, 1)
    t_imag, (states, *_) = timed(lambda: agent.imagine(world_model, start, cfg.horizon, False))
    feat = world_model.features(states).detach()
    t_heads, _ = timed(lambda: (world_model.reward_dist(feat[:, 1:]).mean, world_model.cont_dist(feat[:, 1:]).mode,
                                agent.value(feat).mean, agent.value(feat, slow=True).mean))

    def loss_and_backward():
        actor_loss, critic_loss, _ = agent.loss(world_model, post, batch)
        actor_loss.backward()
        critic_loss.backward()

    t_loss, _ = timed(loss_and_backward)
    t_full, _ = timed(lambda: behavior_update(world_model, agent, actor_optim, critic_optim, cfg, batch))
    return [("posterior start states (observe, B=16 x T=64)", t_post),
            ("imagination, H=15 from 1024 starts (actor in the loop)", t_imag),
            ("reward + continue + critic + slow critic heads on [1024, 16]", t_heads),
            ("whole loss + backward", t_loss), ("whole update (+ clip, Adam, slow critic)", t_full)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["tiny", "XS", "S"])
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for size in args.sizes:
        for task in TASKS:
            ms, params = time_update(size, task, args.updates)
            rows.append(f"| {size} | {task} | {params / 1e6:.2f} M | {ms:.0f} |")
            print(rows[-1], flush=True)
    parts = breakdown("XS")
    for name, ms in parts:
        print(f"XS {name}: {ms:.0f} ms", flush=True)
    on, off = onehot_ab("XS")
    print(f"XS gather-sum first layers on {on:.0f} ms, off {off:.0f} ms", flush=True)
    command = f"python benchmarks/bench_behavior.py --sizes {' '.join(args.sizes)} --updates {args.updates}"
    if args.threads:
        command += f" --threads {args.threads}"
    lines = ["## Behavior-learning speed (stage 03)", "",
             f"Command: `{command}`. torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU. "
             "One update = posterior start states of a B=16, T=64 replay batch, imagination of H=15 from all "
             "1024 of them, lambda-returns, actor and critic losses, backward, clipping, Adam, slow-critic EMA. "
             "Untrained world models (speed does not depend on the weights).", "",
             "| size | actions | actor + critic params | ms / update |", "|---|---|---|---|", *rows, "",
             "Where the time goes in one XS update (discrete actions; parts timed separately):", "",
             "| part | ms |", "|---|---|", *[f"| {name} | {ms:.0f} |" for name, ms in parts], "",
             "Layers fed by the 32x32 categorical latents (RSSM input, reward, continue, actor, critic) take "
             "their one-hot block by a gather-sum (`nets.layers.OneHotAwareLinear`, same values and gradients). "
             f"Interleaved A/B on one XS update, best of 3: {on:.0f} ms with it, {off:.0f} ms with plain "
             f"matmuls ({off / on:.2f}x)."]
    update_section("behavior-speed", "\n".join(lines))


if __name__ == "__main__":
    main()
