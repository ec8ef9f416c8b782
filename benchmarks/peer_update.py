"""Time one DreamerV3 gradient step of the peer library sheeprl (run by the PEER venv's python).

    bash benchmarks/setup_peer.sh                     # once: /work/peer-venv with sheeprl 0.8.4, torch 2.13.0 CPU
    /work/peer-venv/bin/python benchmarks/peer_update.py --size XS --threads 2 --repeats 3 --json --count-flops

The configuration is composed by Hydra from sheeprl's own config tree, as its CLI does for
`sheeprl exp=dreamer_v3 algo=dreamer_v3_XS env=gym env.id=CartPole-v1 algo.cnn_keys.encoder=[]
algo.cnn_keys.decoder=[] algo.mlp_keys.encoder=[state] algo.mlp_keys.decoder=[state]
algo.per_rank_batch_size=16 algo.per_rank_sequence_length=64 fabric.accelerator=cpu
fabric.precision=32-true algo.compile.enabled=False`. The agent comes from
sheeprl's `build_agent` on the observation space of sheeprl's own CartPole env, the optimizers and
the return normalizer are made as `dreamer_v3.main` makes them, and the timed step is what
`main` does per gradient step: the target-critic EMA, then `dreamer_v3.train` (world-model update,
imagination, actor update, critic update) on a fixed random [T=64, B=16] batch in the layout of
sheeprl's replay buffer. Metrics stay on (`metric.log_level=1`, sheeprl's default), so the update
also computes the posterior/prior entropies and feeds the metric aggregator, as in training.

This file must not import dreamer_core: it runs in a separate venv.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
import warnings

import hydra
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from sheeprl.algos.dreamer_v3 import utils as dv3_utils
from sheeprl.algos.dreamer_v3.agent import build_agent
from sheeprl.algos.dreamer_v3.dreamer_v3 import train
from sheeprl.cli import check_configs
from sheeprl.utils.env import make_env
from sheeprl.utils.metric import MetricAggregator
from sheeprl.utils.timer import timer
from sheeprl.utils.utils import dotdict
from torch.distributions import Distribution

B, T = 16, 64


def make_cfg(size: str, threads: int) -> dotdict:
    overrides = [
        "exp=dreamer_v3", f"algo=dreamer_v3_{size}", "env=gym", "env.id=CartPole-v1",
        # exp=dreamer_v3 sets cnn_keys.encoder/decoder=[rgb] (Atari): both must be cleared
        "algo.cnn_keys.encoder=[]", "algo.cnn_keys.decoder=[]",
        "algo.mlp_keys.encoder=[state]", "algo.mlp_keys.decoder=[state]",
        f"algo.per_rank_batch_size={B}", f"algo.per_rank_sequence_length={T}",
        "fabric.accelerator=cpu", "fabric.devices=1", "fabric.precision=32-true",
        "algo.compile.enabled=False", f"num_threads={threads}", "model_manager.disabled=True",
    ]
    with initialize_config_module(config_module="sheeprl.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    # What `sheeprl.cli.run` and `run_algorithm` do before launching `dreamer_v3.main`
    cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    check_configs(cfg)
    Distribution.set_default_validate_args(cfg.distribution.validate_args)
    for key in set(cfg.metric.aggregator.metrics) - dv3_utils.AGGREGATOR_KEYS:
        cfg.metric.aggregator.metrics.pop(key)
    MetricAggregator.disabled = cfg.metric.log_level == 0 or len(cfg.metric.aggregator.metrics) == 0
    timer.disabled = cfg.metric.log_level == 0 or cfg.metric.disable_timer
    cfg.env.frame_stack = -1  # set by dreamer_v3.main
    return cfg


def random_batch(obs_space, n_actions: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch as `sample_batches` yields it: float32, [T, B, ...], one-hot actions."""
    g = torch.Generator().manual_seed(seed)
    (key, space), = obs_space.spaces.items()
    actions = torch.nn.functional.one_hot(torch.randint(0, n_actions, (T, B), generator=g), n_actions)
    is_first = torch.zeros(T, B, 1)
    is_first[0] = 1
    return {
        key: torch.randn(T, B, *space.shape, generator=g),
        "actions": actions.float(),
        "rewards": torch.ones(T, B, 1),  # CartPole pays 1 per step
        "terminated": torch.zeros(T, B, 1),
        "truncated": torch.zeros(T, B, 1),
        "is_first": is_first,
    }


def build(cfg: dotdict):
    fabric = hydra.utils.instantiate(cfg.fabric, strategy="auto", _convert_="all")
    fabric.seed_everything(cfg.seed)
    env = make_env(cfg, cfg.seed, 0, None, "train")()
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    actions_dim = (int(action_space.n),)
    world_model, actor, critic, target_critic, _player = build_agent(fabric, actions_dim, False, cfg, obs_space)
    optims = [
        hydra.utils.instantiate(part.optimizer, params=module.parameters(), _convert_="all")
        for part, module in ((cfg.algo.world_model, world_model), (cfg.algo.actor, actor), (cfg.algo.critic, critic))
    ]
    world_optimizer, actor_optimizer, critic_optimizer = fabric.setup_optimizers(*optims)
    m = cfg.algo.actor.moments
    moments = dv3_utils.Moments(m.decay, m.max, m.percentile.low, m.percentile.high)
    aggregator = None
    if not MetricAggregator.disabled:
        aggregator = hydra.utils.instantiate(cfg.metric.aggregator, _convert_="all").to(fabric.device)
    models = (world_model, actor, critic, target_critic, world_optimizer, actor_optimizer, critic_optimizer)
    return fabric, models, aggregator, moments, obs_space, actions_dim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["XS", "S"], default="XS")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps torch's default")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--count-flops", action="store_true", help="count the FLOPs of one more update")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    cfg = make_cfg(args.size, torch.get_num_threads())
    fabric, models, aggregator, moments, obs_space, actions_dim = build(cfg)
    world_model, actor, critic, target_critic = models[:4]
    batch = random_batch(obs_space, actions_dim[0])
    steps = 0

    def step() -> None:
        nonlocal steps
        data = {k: v.clone() for k, v in batch.items()}  # train() writes into data["is_first"]
        start = time.perf_counter()
        # The target-critic EMA that dreamer_v3.main runs before every train() (tau=1 at the first step)
        if steps % cfg.algo.critic.per_rank_target_network_update_freq == 0:
            tau = 1 if steps == 0 else cfg.algo.critic.tau
            for cp, tcp in zip(critic.module.parameters(), target_critic.parameters()):
                tcp.data.copy_(tau * cp.data + (1 - tau) * tcp.data)
        train(fabric, *models, data, aggregator, cfg, False, actions_dim, moments)
        steps += 1
        return (time.perf_counter() - start) * 1000

    for _ in range(args.warmup):
        step()
    ms = [step() for _ in range(args.repeats)]

    wm = cfg.algo.world_model
    result = {
        "size": args.size,
        "ms": [round(x, 1) for x in ms],
        "params": sum(p.numel() for p in world_model.parameters()),
        "actor_critic_params": sum(p.numel() for p in actor.parameters()) + sum(p.numel() for p in critic.parameters()),
        "torch": torch.__version__,
        "sheeprl": importlib.metadata.version("sheeprl"),
        "threads": torch.get_num_threads(),
        "B": cfg.algo.per_rank_batch_size, "T": cfg.algo.per_rank_sequence_length, "horizon": cfg.algo.horizon,
        "deter": wm.recurrent_model.recurrent_state_size, "hidden": wm.transition_model.hidden_size,
        "units": cfg.algo.dense_units, "layers": cfg.algo.mlp_layers,
        "stoch": f"{wm.stochastic_size}x{wm.discrete_size}",
    }
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        result["gflop"] = round(counter.get_total_flops() / 1e9, 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
