"""Stage 03: train the actor-critic purely in imagination from a frozen world model.

    dreamer train-behavior --run runs/cartpole --updates 5000

Rebuilds the world model from ``RUN/world_model.pt`` alone, freezes it, samples replay
windows from the run's datasets (or ``--dataset``), turns every posterior state into a start
state and trains ``behavior.ActorCritic`` on imagined rollouts. Writes into RUN/:
``behavior.pt`` (actor-critic weights, config, spaces and the env the data came from: what
stage 04 and ``--policy RUN`` load), ``checkpoints/behavior_latest.pt`` (everything needed
to resume), ``behavior_config.yaml``, ``behavior_metrics.jsonl`` and ``tb/``.

Defaults follow the world model: its batch shape, its MLP width and depth, and its variant
(a DreamerV1/V2 world model gets the V1/V2 behavior settings); ``--preset`` and ``--set``
override them.

Imports: behavior, world_model, stages.train_world_model (checkpoint loading, data split),
optim, data, checkpoint, config, logging.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from dreamer_core import checkpoint, runtime
from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic, BehaviorConfig
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.errors import DreamerError
from dreamer_core.files import atomic_write_bytes
from dreamer_core.logging import MetricsSink, ProgressBar
from dreamer_core.optim import clip_gradients, make_optimizer
from dreamer_core.stages.agents import BEHAVIOR
from dreamer_core.stages.train_world_model import (
    WORLD_MODEL,
    TrainWorldModelConfig,
    open_datasets,
    resolve_device,
    resume_or_refuse,
    truncate_metrics,
    world_model_from_checkpoint,
)
from dreamer_core.types import Batch
from dreamer_core.world_model import WorldModel

LATEST = Path("checkpoints") / "behavior_latest.pt"
METRICS = "behavior_metrics.jsonl"


@dataclass(frozen=True)
class TrainBehaviorConfig:
    """Everything `dreamer train-behavior` needs."""

    run: str = ""
    datasets: tuple[str, ...] = ()  # empty: the datasets the world model was trained on
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    batch_size: int = 16
    seq_len: int = 64
    updates: int = 5000
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default (see train-world-model)
    log_every: int = 100
    checkpoint_every: int = 1000
    memory_budget: int = 4 << 30
    skip_corrupt: bool = False


def world_model_defaults(run: Path) -> tuple[dict[str, Any], list[str]]:
    """Overrides and variant preset implied by the run's world model (see the module docstring)."""
    blob = checkpoint.load(run / WORLD_MODEL)
    wm = config_lib.from_dict(TrainWorldModelConfig, blob["config"])
    heads = wm.model.heads
    overrides = {
        "batch_size": wm.batch_size, "seq_len": wm.seq_len, "datasets": list(wm.datasets),
        "behavior.actor.units": heads.units, "behavior.actor.layers": heads.layers,
        "behavior.critic.units": heads.units, "behavior.critic.layers": heads.layers,
    }
    variant = {"v1": ["dreamerv1"], "v2": ["dreamerv2"]}.get(wm.model.kl.mode, [])
    return overrides, variant


def make_config(run: str, datasets: list[str], presets: list[str], sets: list[str],
                flags: dict[str, Any]) -> TrainBehaviorConfig:
    """Defaults, then what the world model implies, presets, flags, --set (in that order)."""
    run_dir = Path(run)
    if not (run_dir / WORLD_MODEL).exists():
        raise DreamerError(
            f"{run_dir} has no {WORLD_MODEL}. Train a world model into it first: "
            f"`dreamer train-world-model DATASET --out {run_dir}`."
        )
    overrides, variant = world_model_defaults(run_dir)
    base = config_lib.apply_overrides(TrainBehaviorConfig(run=str(run_dir)), overrides)
    base = config_lib.apply_presets(base, "train-behavior", variant)
    if datasets:
        base = dataclasses.replace(base, datasets=tuple(datasets))
    return config_lib.resolve(base, "train-behavior", presets, flags, sets)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """No parameter of ``model`` takes a gradient or changes (eval mode, requires_grad off)."""
    model.eval()
    model.requires_grad_(False)
    return model


class BehaviorTrainer:
    """One behavior-learning run against a frozen world model (fresh or resumed)."""

    def __init__(self, cfg: TrainBehaviorConfig, resume: bool = False, progress: bool = True,
                 resume_updates: int | None = None):
        self.run_dir = Path(cfg.run)
        self.progress = progress
        latest = self.run_dir / LATEST
        cfg, blob = resume_or_refuse(cfg, latest, self.run_dir / BEHAVIOR, resume, resume_updates,
                                     "train a world model into another run directory")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        runtime.setup(cfg.threads)
        torch.manual_seed(cfg.seed)
        wm_path = self.run_dir / WORLD_MODEL
        self.world_model, wm_blob = world_model_from_checkpoint(wm_path, self.device)
        freeze(self.world_model)
        self.world_model_update = int(wm_blob.get("update", 0))
        if blob is not None and int(blob.get("world_model_update", -1)) != self.world_model_update:
            raise DreamerError(
                f"{wm_path} changed since the behavior checkpoint {latest} was written (world-model update "
                f"{self.world_model_update} now, {blob.get('world_model_update')} then). Resuming would mix "
                f"two models; delete {self.run_dir / BEHAVIOR} and {latest} to train the behavior afresh."
            )
        datasets = self._open_datasets(cfg.datasets)
        self.observation_space, self.action_space = datasets[0].observation_space, datasets[0].action_space
        checkpoint.check_spaces(wm_blob, self.observation_space, self.action_space,
                                f"The dataset {datasets[0].path}", wm_path)
        self.env_config = datasets[0].env_config
        self.sampler = SequenceSampler(datasets, cfg.batch_size, cfg.seq_len, seed=cfg.seed,
                                       memory_budget=cfg.memory_budget)
        self.agent = ActorCritic(cfg.behavior, self.world_model.rssm.feat_dim, self.action_space,
                                  self.world_model.rssm.feat_onehot).to(self.device)
        groups = self.agent.parameter_groups()
        self.actor_optim = make_optimizer(groups["actor"], cfg.behavior.actor_optim)
        self.critic_optim = make_optimizer(groups["critic"], cfg.behavior.critic_optim)
        self.update = 0
        if blob is not None:
            self._restore(blob)

    def _open_datasets(self, paths: tuple[str, ...]) -> list[Dataset]:
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise DreamerError(
                f"The dataset {missing[0]} recorded in the run is not there (was it moved, or was the world "
                "model trained from another directory?). Pass the data explicitly with --dataset PATH."
            )
        return open_datasets(paths, self.cfg.skip_corrupt)

    # --- loop -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._write_config()
        sums: dict[str, float] = {}
        count = 0
        last: dict[str, float] = {}
        start, start_update = time.perf_counter(), self.update
        with MetricsSink(self.run_dir, name=METRICS) as sink, \
                ProgressBar(cfg.updates, "behavior", self.progress) as bar:
            bar.update(self.update, force=True)
            while self.update < cfg.updates:
                metrics = self.train_step(self.sampler.sample())
                self.update += 1
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if self.update % cfg.log_every == 0 or self.update == cfg.updates:
                    last = {k: v / count for k, v in sums.items()}
                    last["behavior/updates_per_second"] = (self.update - start_update) / (time.perf_counter() - start)
                    sink.log(self.update, last)
                    sums, count = {}, 0
                if self.update % cfg.checkpoint_every == 0 or self.update == cfg.updates:
                    self.save()
                if bar.due():
                    ret = last.get("imag/return", float("nan"))
                    bar.update(self.update, f"imagined return {ret:.3f}")
            bar.update(self.update, force=True)
        return {"updates": self.update, **last}

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One actor and one critic update on a replay batch; returns metrics as floats."""
        return behavior_update(self.world_model, self.agent, self.actor_optim, self.critic_optim,
                               self.cfg.behavior, batch.to(self.device))

    # --- checkpoints ----------------------------------------------------------------------

    def _write_config(self) -> None:
        data = {"stage": "train-behavior", "config": config_lib.to_dict(self.cfg)}
        atomic_write_bytes(self.run_dir / "behavior_config.yaml", yaml.safe_dump(data, sort_keys=False).encode())

    def save(self) -> None:
        cfg_dict = config_lib.to_dict(self.cfg)
        meta = {"update": self.update, "world_model_update": self.world_model_update, "env_config": self.env_config}
        state = {
            "agent": self.agent.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            **meta,
        }
        checkpoint.save(self.run_dir / LATEST, state, cfg_dict, self.observation_space, self.action_space)
        checkpoint.save(self.run_dir / BEHAVIOR, {"agent": self.agent.state_dict(), **meta}, cfg_dict,
                        self.observation_space, self.action_space)

    def _restore(self, blob: dict[str, Any]) -> None:
        self.agent.load_state_dict(blob["agent"])
        self.actor_optim.load_state_dict(blob["actor_optim"])
        self.critic_optim.load_state_dict(blob["critic_optim"])
        self.sampler.load_state_dict(blob["sampler"])
        torch.set_rng_state(blob["torch_rng"])
        self.update = int(blob["update"])
        truncate_metrics(self.run_dir, self.update, METRICS)


def start_states(world_model: WorldModel, batch: Batch):
    """Posterior states ``[B, T]`` of a replay batch (no gradient: the model only filters)."""
    with torch.no_grad():
        embed = world_model.encoder(batch.obs)
        action = world_model.codec.encode(batch.action)
        post, _ = world_model.rssm.observe(embed, action, batch.is_first)
    return post


def behavior_update(world_model: WorldModel, agent: ActorCritic, actor_optim: torch.optim.Optimizer,
                    critic_optim: torch.optim.Optimizer, cfg: BehaviorConfig, batch: Batch,
                    post=None) -> dict[str, float]:
    """One actor and one critic update from a replay batch (on the model's device).

    ``post``: the batch's posterior states when the caller has them already (the online loop
    takes them from the world-model update); otherwise the frozen world model filters the batch."""
    agent.train()
    if post is None:
        post = start_states(world_model, batch)
    actor_loss, critic_loss, metrics = agent.loss(world_model, post, batch)
    actor_optim.zero_grad(set_to_none=True)
    actor_loss.backward()
    actor_norm = clip_gradients(agent.actor.parameters(), cfg.actor_optim)
    actor_optim.step()
    # Dynamics backprop also sends actor-loss gradients into the critic's weights through the
    # values inside the returns; they must not train the critic, so clear them first.
    critic_optim.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_norm = clip_gradients(agent.critic.parameters(), cfg.critic_optim)
    critic_optim.step()
    agent.update_slow_critic()
    out = {k: float(v) for k, v in metrics.items()}  # one host sync per update
    out["actor/grad_norm"] = float(actor_norm)
    out["critic/grad_norm"] = float(critic_norm)
    return out


def run(cfg: TrainBehaviorConfig, resume: bool = False, progress: bool = True,
        resume_updates: int | None = None) -> dict[str, Any]:
    """Train (or resume) the behavior and return the final metrics."""
    return BehaviorTrainer(cfg, resume=resume, progress=progress, resume_updates=resume_updates).run()
