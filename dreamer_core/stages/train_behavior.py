"""Stage 03: train the actor-critic purely in imagination from a frozen world model.

    dreamer train-behavior --run runs/cartpole --updates 5000

Rebuilds the world model from ``RUN/world_model.pt`` alone, freezes it, samples replay
windows from the run's datasets (or ``--dataset``), turns every posterior state into a start
state and trains ``behavior.ActorCritic`` on imagined rollouts. Writes into RUN/:
``behavior.pt`` (actor-critic weights, config, spaces and the env the data came from: what
stage 04 and ``--policy RUN`` load), ``checkpoints/behavior_latest.pt`` (everything needed
to resume), its section of ``config.yaml``, ``behavior_metrics.jsonl``, and what the trackers
``loggers`` names keep (``--logger``: ``tb/`` by default; W&B, MLflow: see trackers.py), which
also get the resolved config.

Defaults follow the world model: its batch shape, its MLP width and depth, and its variant
(a DreamerV1/V2 world model gets the V1/V2 behavior settings); ``--preset`` and ``--set``
override them.

Data-parallel under ``torchrun --nproc-per-node N`` (``distributed.py``), as stage 02:

    torchrun --nproc-per-node 2 -m dreamer_core -- train-behavior --run runs/cartpole

(the ``--`` keeps torchrun from reading ``--run`` as an abbreviation of its ``--run-path``). Every
rank loads the same world model, starts from rank 0's actor-critic, samples its own windows
(the sampler's rank streams) with ``--batch-size`` windows per rank, and imagines with its own
torch seed; the return normaliser reads every rank's returns, the gradients are averaged
before clipping (``updates.behavior_update``), and rank 0 alone writes the run. The
checkpoint keeps every rank's sampler and RNG state, so a resume with the same N continues each
rank's streams. A World Models run's stage 03 (the CMA-ES controller search) is not
data-parallel: it scores candidates over ``--workers`` processes (``refuse_data_parallel_controller``).

Imports: behavior, world_model, optim, data, checkpoint, config, runs (artifact names and
loading), runtime, distributed, and the stage kit (stages.common, stages.outputs, stages.updates).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dreamer_core import checkpoint, distributed, runtime, trackers, worldmodels
from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic, BehaviorConfig
from dreamer_core.data.dataset import Dataset, skipped_shards
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.errors import DreamerError
from dreamer_core.optim import make_optimizer
from dreamer_core.runs import (
    BEHAVIOR,
    BEHAVIOR_CONFIG,
    BEHAVIOR_LATEST,
    BEHAVIOR_METRICS,
    WORLD_MODEL,
    freeze,
)
from dreamer_core.stages.common import (
    Callback,
    NonFiniteGuard,
    TrainLoop,
    claim_run_dir,
    open_datasets,
    resume_or_refuse,
    run_id,
    truncate_metrics,
    write_config,
)
from dreamer_core.stages.updates import behavior_update
from dreamer_core.types import Batch
from dreamer_core.world_model import WorldModel, WorldModelConfig

LATEST = BEHAVIOR_LATEST
METRICS = BEHAVIOR_METRICS
HEADLINE = ("imag/return", "actor/entropy")  # the metric columns of TensorBoard's hparams view
MAX_NONFINITE = 5  # skipped updates in a row (data-parallel runs) before the run stops


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
    checkpoint_seconds: float = 600.0  # also checkpoint after this many seconds (whichever comes first); 0 = off
    memory_budget: int = 4 << 30
    skip_corrupt: bool = False
    loggers: str = "tensorboard"  # comma-separated trackers: tensorboard, wandb, mlflow, or none (trackers.py)
    project: str = ""  # W&B project / MLflow experiment; empty: WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME, else RUN's name


def world_model_defaults(run: Path) -> tuple[dict[str, Any], list[str]]:
    """Overrides and variant preset implied by the run's world model (see the module docstring)."""
    artifact = checkpoint.load(run / WORLD_MODEL, checkpoint.WorldModelArtifact)
    if worldmodels.is_family(artifact.model_config):
        raise DreamerError(
            f"{run / WORLD_MODEL} is a World Models (VAE + MDN-RNN) world model, whose stage 03 is the CMA-ES "
            f"controller search, not the actor-critic: run `dreamer train-behavior --run {run}` (it picks the "
            "controller search for this family; options --generations, --population, --scorer, ...), or "
            "stages.train_controller from Python.")
    model = config_lib.from_dict(WorldModelConfig, artifact.model_config)
    heads = model.heads
    overrides = {
        "batch_size": artifact.batch_size, "seq_len": artifact.seq_len, "datasets": list(artifact.datasets),
        "behavior.actor.units": heads.units, "behavior.actor.layers": heads.layers,
        "behavior.critic.units": heads.units, "behavior.critic.layers": heads.layers,
    }
    return overrides, _variant_of(model)


def refuse_data_parallel_controller(run: str) -> None:
    """Refuse, under ``torchrun``, the World Models controller search of ``run`` (its stage 03),
    before anything is written."""
    if distributed.launched():
        raise DreamerError(
            f"{run} holds a World Models (VAE + MDN-RNN) world model, whose stage 03 is the CMA-ES controller "
            "search, and that search does not run data-parallel under torchrun (every rank would run the whole "
            "search). CMA-ES parallelises over --workers instead: processes that score each generation's "
            "candidates. Run the same command without torchrun, with --workers N (0 = one per CPU). Nothing was "
            "written.")


def _variant_of(model: WorldModelConfig) -> list[str]:
    """The variant preset a world model was trained with, for its behavior defaults: V1 or V2 by
    its KL, the 2025 recipe when it has every world-model setting of ``dreamerv3-2025`` (sizes
    are not part of it), else none (the 2023 recipe, the default)."""
    variant = {"v1": ["dreamerv1"], "v2": ["dreamerv2"]}.get(model.kl.mode)
    if variant:
        return variant
    recipe = {key.partition(".")[2]: value for key, value in config_lib.PRESETS["dreamerv3-2025"].items()
              if key.startswith("model.")}
    if all(config_lib.get_field(model, key) == value for key, value in recipe.items()):
        return ["dreamerv3-2025"]
    return []


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
    cfg = config_lib.resolve(base, "train-behavior", presets, flags, sets)
    validate(cfg)
    return cfg


FLAGS = {"updates": "--updates", "batch_size": "--batch-size", "seq_len": "--seq-len",
         "behavior.horizon": "--horizon", "behavior.actor.grad": "--actor-grad", "device": "--device",
         "loggers": "--logger"}


def validate(cfg: TrainBehaviorConfig) -> None:
    """Every problem of a resolved config in one DreamerError (see ``config_lib.Problems``)."""
    p = config_lib.Problems("train-behavior", FLAGS)
    p.at_least("updates", cfg.updates, 1)
    p.at_least("batch_size", cfg.batch_size, 1)
    p.at_least("seq_len", cfg.seq_len, 1)
    p.device("device", cfg.device)
    p.at_least("threads", cfg.threads, 0, " (0 = torch's default)")
    p.at_least("log_every", cfg.log_every, 0, " (0 = only at the end)")
    p.at_least("checkpoint_every", cfg.checkpoint_every, 0, " (0 = only at the end)")
    p.at_least("checkpoint_seconds", cfg.checkpoint_seconds, 0, " (0 = by updates only)")
    p.at_least("memory_budget", cfg.memory_budget, 0)
    p.behavior("behavior", cfg.behavior)
    p.require(trackers.problem(cfg.loggers) is None, f"{p.name('loggers')} {trackers.problem(cfg.loggers)}")
    p.raise_any()
    trackers.check(cfg.loggers, FLAGS["loggers"])  # a tracker whose package is missing: how to install it


def _keep_on_resume(stored: TrainBehaviorConfig, given: TrainBehaviorConfig, updates: int | None,
                    ) -> TrainBehaviorConfig:
    return dataclasses.replace(stored, datasets=given.datasets or stored.datasets, updates=updates or stored.updates)


class BehaviorTrainer:
    """One behavior-learning run against a frozen world model (fresh or resumed)."""

    def __init__(self, cfg: TrainBehaviorConfig, resume: bool = False, progress: bool = True,
                 resume_updates: int | None = None, loggers: str | None = None,
                 callbacks: Sequence[Callback] = ()):
        """``resume_updates``: the new total when resuming (None: the run's own target);
        ``loggers``: new trackers for a resumed run (None: the run's own); ``callbacks``: the
        hooks of ``stages.common.Callback`` (step = updates; no evaluation here)."""
        self.run_dir = Path(cfg.run)
        self.progress = progress
        self.callbacks = list(callbacks)
        latest = self.run_dir / LATEST
        cfg, state = resume_or_refuse(cfg, latest, [self.run_dir / BEHAVIOR], resume,
                                      "train a world model into another run directory",
                                      keep=lambda stored, given: _keep_on_resume(stored, given, resume_updates),
                                      config_file=self.run_dir / BEHAVIOR_CONFIG)
        if loggers is not None:
            cfg = dataclasses.replace(cfg, loggers=loggers)
        trackers.check(cfg.loggers, FLAGS["loggers"])  # a stored config's trackers may be missing here
        self.cfg = cfg
        self.run_id = run_id(self.run_dir)  # made at the first write (run) for a new run
        self.dist = distributed.init(runtime.resolve_device(cfg.device))  # SINGLE without torchrun
        self.device = self.dist.device(runtime.resolve_device(cfg.device))  # cuda: this rank's GPU
        runtime.setup(cfg.threads)
        torch.manual_seed(cfg.seed)
        wm_path = self.run_dir / WORLD_MODEL
        self.world_model, wm_artifact = WorldModel.load(wm_path, self.device)
        freeze(self.world_model)
        self.world_model_update = wm_artifact.update
        if state is not None and int(state.counters.get("world_model_update", -1)) != self.world_model_update:
            raise DreamerError(
                f"{wm_path} changed since the behavior checkpoint {latest} was written (world-model update "
                f"{self.world_model_update} now, {state.counters.get('world_model_update')} then). Resuming would "
                f"mix two models; delete {self.run_dir / BEHAVIOR} and {latest} to train the behavior afresh."
            )
        datasets = self._open_datasets(cfg.datasets)
        self.observation_space, self.action_space = datasets[0].observation_space, datasets[0].action_space
        wm_artifact.check_spaces(self.observation_space, self.action_space, f"The dataset {datasets[0].path}",
                                 wm_path)
        self.env_config = datasets[0].env_config
        self.sampler = SequenceSampler(datasets, cfg.batch_size, cfg.seq_len, seed=cfg.seed,
                                       memory_budget=cfg.memory_budget, rank=self.dist.rank,
                                       world_size=self.dist.world_size)  # each rank its own stream
        self.skipped = skipped_shards(datasets)  # --skip-corrupt: complete once loaded
        self.agent = ActorCritic.for_world_model(cfg.behavior, self.world_model).to(self.device)
        groups = self.agent.parameter_groups()
        self.actor_optim = make_optimizer(groups["actor"], cfg.behavior.actor_optim)
        self.critic_optim = make_optimizer(groups["critic"], cfg.behavior.critic_optim)
        self.dist.broadcast_module(self.agent)  # every rank starts from rank 0's weights
        if self.dist.rank > 0:  # its own imagination noise; rank 0 keeps a one-process run's
            torch.manual_seed(self.dist.seed(cfg.seed))
        self.update = 0
        if state is not None:
            self._restore(state)
        elif self.dist.is_main:
            truncate_metrics(self.run_dir, 0, METRICS)  # a run restarted before its first checkpoint logs anew

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
        if self.dist.is_main:  # rank 0 alone writes the run
            self.run_id = self.run_id or run_id(self.run_dir, create=True)
            for shard in self.skipped:  # what --skip-corrupt left out, before any update
                print(f"skipped corrupt shard {shard['path']}: {shard['reason']}", file=sys.stderr)
            self._write_config()
        if self.dist.is_main and self.dist.active:
            print(f"data-parallel: {self.dist.world_size} ranks ({self.dist.backend}) x batch {cfg.batch_size} = "
                  f"global batch {self.dist.world_size * cfg.batch_size}", file=sys.stderr)
        last: dict[str, float] = {}
        with TrainLoop(self.run_dir, cfg.updates, self.update, "behavior", self.progress, metrics_name=METRICS,
                       log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                       checkpoint_seconds=cfg.checkpoint_seconds, callbacks=self.callbacks, dist=self.dist) as loop:
            loop.sink.track(cfg.loggers, "train-behavior", config_lib.to_dict(cfg), cfg.project, HEADLINE)
            guard = NonFiniteGuard(MAX_NONFINITE, self._nonfinite_message)
            while loop.running(self.update):
                metrics = self.train_step(self.sampler.sample())
                if not metrics:  # a data-parallel update every rank skipped (non-finite somewhere)
                    loop.log(self.update, {"behavior/nonfinite": 1.0})
                if not guard.check(bool(metrics)):  # raises after MAX_NONFINITE in a row
                    continue
                loop.mean.add(metrics)
                self.update += 1
                loop.updated(self.update, metrics)
                final = self.update == cfg.updates
                if loop.log_due(self.update, final):
                    last = loop.log_mean(self.update, **{"behavior/updates_per_second": loop.rate(self.update)})
                if loop.checkpoint_due(self.update, final):
                    self.save()
                    loop.checkpointed(self.update, self.run_dir / LATEST)
                loop.show(self.update, lambda last=last: f"imagined return {last.get('imag/return', float('nan')):.3f}")
            loop.show(self.update, force=True)
        return {"updates": self.update, **last}

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One actor and one critic update on a replay batch; returns metrics as floats ({}: a
        data-parallel update that every rank skipped, see ``updates.behavior_update``)."""
        return behavior_update(self.world_model, self.agent, self.actor_optim, self.critic_optim,
                               self.cfg.behavior, batch.to(self.device), update=self.update, dist=self.dist)

    def _nonfinite_message(self, count: int) -> str:
        return (f"Stopped after {count} non-finite actor-critic updates in a row at update {self.update} (every "
                f"rank skipped them). The last good checkpoint ({self.run_dir / LATEST}) is kept. Lower the learning "
                "rates (--set behavior.actor_optim.lr=... --set behavior.critic_optim.lr=...) or check the world "
                "model; then continue with --resume.")

    # --- checkpoints ----------------------------------------------------------------------

    def _write_config(self) -> None:
        extra: dict[str, Any] = {"skipped_shards": self.skipped} if self.skipped else {}
        if self.dist.active:
            extra["distributed"] = {"world_size": self.dist.world_size, "backend": self.dist.backend,
                                    "global_batch": self.dist.world_size * self.cfg.batch_size}
        write_config(self.run_dir / BEHAVIOR_CONFIG, "train-behavior", self.cfg, **extra)

    def save(self) -> None:
        """Write the resume checkpoint and ``behavior.pt``. In a data-parallel run every rank
        calls it (its sampler and torch RNG states go to rank 0) and rank 0 alone writes."""
        ranks = (self.dist.gather_object({"torch": torch.get_rng_state(), "sampler": self.sampler.state_dict()})
                 if self.dist.active else [])
        if not self.dist.is_main:
            return
        cfg_dict = config_lib.to_dict(self.cfg)
        meta = {"update": self.update, "world_model_update": self.world_model_update, "env_config": self.env_config}
        rng = {"torch": torch.get_rng_state(), "sampler": self.sampler.state_dict()}
        if ranks:
            rng["ranks"] = ranks  # rank r resumes from ranks[r]
        checkpoint.save(self.run_dir / LATEST, checkpoint.TrainState(
            **checkpoint.spaces_json(self.observation_space, self.action_space), stage_config=cfg_dict,
            stage="train-behavior", run_id=self.run_id, modules={"agent": self.agent.state_dict()},
            optimizers={"actor": self.actor_optim.state_dict(), "critic": self.critic_optim.state_dict()},
            counters=meta, rng=rng))
        self.agent.save(self.run_dir / BEHAVIOR, self.world_model, cfg_dict, **meta)

    def _restore(self, state: checkpoint.TrainState) -> None:
        self.agent.load_state_dict(state.modules["agent"])
        self.actor_optim.load_state_dict(state.optimizers["actor"])
        self.critic_optim.load_state_dict(state.optimizers["critic"])
        ranks = state.rng.get("ranks") or [{"sampler": state.rng["sampler"], "torch": state.rng["torch"]}]
        if self.dist.rank < len(ranks):  # a rank the saved run did not have keeps its fresh streams
            self.sampler.load_state_dict(ranks[self.dist.rank]["sampler"])
            torch.set_rng_state(ranks[self.dist.rank]["torch"])
        self.update = int(state.counters["update"])
        if self.dist.is_main:
            truncate_metrics(self.run_dir, self.update, METRICS)


def run(cfg: TrainBehaviorConfig, resume: bool = False, progress: bool = True,
        resume_updates: int | None = None, loggers: str | None = None,
        callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train (or resume) the behavior and return the final metrics; one writer per run directory
    (rank 0 of a ``torchrun`` launch, which alone checks and locks it; a refusal there stops
    every rank). ``loggers``: new trackers for a resumed run (None: the run's own);
    ``callbacks``: hooks called after each update and checkpoint (``stages.common.Callback``)."""
    dist = distributed.init(runtime.resolve_device(cfg.device))  # a torchrun launch: join its ranks
    try:
        loggers_used = cfg.loggers if loggers is None else loggers
        with claim_run_dir(dist, cfg.run, "--run", loggers_used, FLAGS["loggers"]):
            return BehaviorTrainer(cfg, resume=resume, progress=progress, resume_updates=resume_updates,
                                   loggers=loggers, callbacks=callbacks).run()
    finally:
        dist.close()
