"""Stage 02: train the world model offline from one or more datasets.

    dreamer train-world-model data/cartpole --out runs/cartpole --updates 5000 --preset S

Owns what the model does not: the held-out episode split, the sampler, the optimizer and
gradient clipping, precision, logging cadence, loss-weight calibration, non-finite guards
and checkpoints. Writes into RUN/: ``config.yaml``, ``world_model.pt`` (weights + config +
spaces, what stage 03 loads), ``checkpoints/latest.pt`` (everything needed to resume),
``metrics.jsonl``, and what the trackers ``loggers`` names keep (``--logger``: ``tb/`` by
default; W&B, MLflow: see trackers.py), which also get the resolved config.

Two model families (``family``): ``rssm`` (DreamerV3, ``model.*``) and ``worldmodels`` (the
original World Models, ``--preset worldmodels``: VAE + MDN-RNN, ``worldmodels.*``). The latter
trains staged (V alone for ``vae_updates`` updates with ``vae_optim``, then M on V's latents
with ``memory_optim``; ``model.set_phase`` before each update) or joint (one ``vae_optim``
over everything; ``--balance calibrate`` implies it: ``worldmodels.calibrate``). Its held-out
metrics score every term with ``loss_terms(phase="joint")`` whatever the phase.

Data-parallel under ``torchrun --nproc-per-node N`` (``distributed.py``): every rank samples its
own windows (the sampler's rank streams) with ``--batch-size`` windows per rank, the gradients
are averaged before clipping, and rank 0 alone writes the run; the checkpoint keeps every rank's
sampler and RNG state, so a resume with the same N continues each rank's streams.

Imports: world_model, optim, data, checkpoint, config, runs (artifact names), runtime, distributed, and
the stage kit (stages.common: resume, config files, the training loop; stages.outputs: the
--out check; stages.updates).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamer_core import checkpoint, distributed, losses, runtime, trackers, worldmodels
from dreamer_core import config as config_lib
from dreamer_core.data.dataset import Dataset, skipped_shards
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.errors import DreamerError
from dreamer_core.optim import OptimConfig, make_optimizer
from dreamer_core.runs import WORLD_MODEL, WORLD_MODEL_CONFIG, WORLD_MODEL_LATEST
from dreamer_core.stages.common import (
    Callback,
    Every,
    NonFiniteGuard,
    TrainLoop,
    claim_run_dir,
    open_datasets,
    resume_or_refuse,
    run_id,
    truncate_metrics,
    write_config,
)
from dreamer_core.stages.updates import world_model_update
from dreamer_core.types import Batch
from dreamer_core.world_model import (
    LossScales,
    WorldModel,
    WorldModelConfig,
    network_problems,
    qualify_networks,
)
from dreamer_core.worldmodels import VaeMdnWorldModel, WorldModelsConfig

LATEST = WORLD_MODEL_LATEST
HEADLINE = ("wm/loss", "val/wm/loss")  # the metric columns of TensorBoard's hparams view
FAMILIES = ("rssm", "worldmodels")


@dataclass(frozen=True)
class TrainWorldModelConfig:
    """Everything `dreamer train-world-model` needs (config.py gives the resolution order)."""

    datasets: tuple[str, ...] = ()
    out: str = "runs/world_model"
    family: str = "rssm"  # rssm (DreamerV3: model, optim) | worldmodels (VAE + MDN-RNN: worldmodels, *_optim)
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    worldmodels: WorldModelsConfig = field(default_factory=WorldModelsConfig)
    vae_updates: int = 0  # worldmodels, staged: updates of V before M's (0: half of updates, fixed when resolved)
    vae_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, clip=1.0))  # V (and joint training)
    memory_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, clip=1.0))  # M + inverse (staged)
    batch_size: int = 16
    seq_len: int = 64
    updates: int = 5000
    seed: int = 0
    device: str = "auto"
    precision: str = "float32"  # float32 | bf16 (autocast; master weights and losses stay float32)
    threads: int = 0  # torch CPU threads; 0 = torch's default. Use 1 when other busy processes share the CPU:
    # OpenMP spin-waiting made a 2-thread update up to 180x slower under contention on 2 cores.
    val_fraction: float = 0.1  # share of episodes held out
    val_batches: int = 4
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 600.0  # also checkpoint after this many seconds (whichever comes first); 0 = off
    openloop_context: int = 5
    openloop_horizon: int = 15
    openloop_windows: int = 256  # held-out windows scored per evaluation (64 left the ratio noisy by +-30%)
    balance: str = "fixed"  # fixed (paper scales) | calibrate
    calibrate_updates: int = 50
    priority: tuple[str, ...] = ("recon", "reward", "cont", "dyn", "rep", "kl", "inverse")
    max_nonfinite: int = 5
    memory_budget: int = 4 << 30
    skip_corrupt: bool = False
    loggers: str = "tensorboard"  # comma-separated trackers: tensorboard, wandb, mlflow, or none (trackers.py)
    project: str = ""  # W&B project / MLflow experiment; empty: WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME, else RUN's name


def make_config(datasets: list[str], out: str, presets: list[str], sets: list[str],
                flags: dict[str, Any]) -> TrainWorldModelConfig:
    """Defaults, then presets in order, then the flags given (None = not given), then --set.

    For the worldmodels family, ``--inverse-model`` (``model.inverse.enabled``) means
    ``worldmodels.inverse.enabled``, ``--balance calibrate`` implies joint training (refused
    with an explicit ``worldmodels.training=staged``), ``vae_updates`` 0 becomes half the
    updates, and the RSSM's options are refused (and the other way round)."""
    base = TrainWorldModelConfig(datasets=tuple(datasets), out=out)
    cfg = config_lib.resolve(base, "train-world-model", presets, flags, sets)
    if cfg.family == "worldmodels":
        flags = dict(flags)
        inverse = flags.pop("model.inverse.enabled", None)
        if inverse is not None:
            flags["worldmodels.inverse.enabled"] = inverse
        cfg = config_lib.resolve(base, "train-world-model", presets, flags, sets)
        cfg = _worldmodels_defaults(cfg, flags, sets)
    validate(cfg)
    # A user's encoder or decoder as module:name, so a resume in another process imports its module.
    return dataclasses.replace(cfg, model=qualify_networks(cfg.model))


FLAGS = {"updates": "--updates", "batch_size": "--batch-size", "seq_len": "--seq-len", "balance": "--balance",
         "optim.name": "--optimizer", "precision": "--precision", "device": "--device", "loggers": "--logger"}


RSSM_ONLY = ("model", "optim", "priority")  # what the worldmodels family does not read
WORLDMODELS_ONLY = ("worldmodels", "vae_updates", "vae_optim", "memory_optim")


def _worldmodels_defaults(cfg: TrainWorldModelConfig, flags: dict[str, Any], sets: list[str],
                          ) -> TrainWorldModelConfig:
    """The worldmodels family's reading of the shared options (see ``make_config``)."""
    if cfg.balance == "calibrate" and cfg.worldmodels.training == "staged":
        if any(s.replace(" ", "").startswith("worldmodels.training=") for s in sets):
            raise DreamerError(
                "--balance calibrate weights the terms of one joint loss, but worldmodels.training=staged trains V "
                "and M apart with their own losses, so there is nothing to balance. Drop --balance calibrate for "
                "staged training, or use --set worldmodels.training=joint; nothing was written.")
        cfg = dataclasses.replace(cfg, worldmodels=dataclasses.replace(cfg.worldmodels, training="joint"))
    if cfg.worldmodels.training == "staged":
        cfg = dataclasses.replace(cfg, vae_updates=_vae_updates(cfg))
    return cfg


def _family_problems(cfg: TrainWorldModelConfig, p: config_lib.Problems) -> None:
    """A setting the run's family does not read is an error (an unused flag is a mistake)."""
    default = TrainWorldModelConfig()
    if cfg.family not in FAMILIES:
        return
    unused, own, flag = ((RSSM_ONLY, "worldmodels.*, vae_updates, vae_optim.*, memory_optim.*", "--preset worldmodels")
                         if cfg.family == "worldmodels" else (WORLDMODELS_ONLY, "model.*, optim.*",
                                                           "add --preset worldmodels for the World Models family"))
    changed = [k for k in unused if getattr(cfg, k) != getattr(default, k)]
    changed = [f"{k} ({p.name('optim.name')})" if k == "optim" and cfg.optim.name != default.optim.name else k
               for k in changed]
    if changed:
        p.add(f"{', '.join(changed)} {'is' if len(changed) == 1 else 'are'} not read by the {cfg.family} family "
              f"(family={cfg.family}, {flag}), whose model settings are {own}")
    if cfg.family == "worldmodels":
        wm = cfg.worldmodels
        p.one_of("worldmodels.training", wm.training, worldmodels.TRAININGS)
        p.one_of("worldmodels.vae.conv", wm.vae.conv, worldmodels.VAE_CONVS)
        p.one_of("worldmodels.vae.output", wm.vae.output, worldmodels.VAE_OUTPUTS)
        for key in ("vae.latent", "mdn.hidden", "mdn.mixtures"):
            p.at_least(f"worldmodels.{key}", config_lib.get_field(wm, key), 1)
        p.at_least("worldmodels.mdn.temperature", wm.mdn.temperature, 0)
        p.optimizer("vae_optim", cfg.vae_optim)
        p.optimizer("memory_optim", cfg.memory_optim)
        if wm.training == "staged":
            p.require(0 < _vae_updates(cfg) < cfg.updates,
                      f"vae_updates must be between 1 and --updates - 1 for staged training, so that V and then M "
                      f"both train (got {cfg.vae_updates} of {cfg.updates})")


def _vae_updates(cfg: TrainWorldModelConfig) -> int:
    """Staged training's updates of V: ``vae_updates``, or half the updates when it is 0."""
    return cfg.vae_updates or max(1, cfg.updates // 2)


def validate(cfg: TrainWorldModelConfig) -> None:
    """Every problem of a resolved config in one DreamerError (see ``config_lib.Problems``)."""
    p = config_lib.Problems("train-world-model", FLAGS)
    p.one_of("family", cfg.family, FAMILIES)
    _family_problems(cfg, p)
    p.at_least("updates", cfg.updates, 1)
    p.at_least("batch_size", cfg.batch_size, 1)
    p.at_least("seq_len", cfg.seq_len, 1)
    p.precision("precision", cfg.precision)
    p.device("device", cfg.device)
    p.at_least("threads", cfg.threads, 0, " (0 = torch's default)")
    p.optimizer("optim", cfg.optim)
    p.world_model("model", cfg.model)
    p.require(0 <= cfg.val_fraction < 1, f"val_fraction must be in [0, 1) (got {cfg.val_fraction})")
    p.at_least("val_batches", cfg.val_batches, 1)
    for key in ("log_every", "eval_every", "checkpoint_every"):
        p.at_least(key, getattr(cfg, key), 0, " (0 = only at the end)")
    p.at_least("checkpoint_seconds", cfg.checkpoint_seconds, 0, " (0 = by updates only)")
    p.at_least("openloop_context", cfg.openloop_context, 1)
    p.at_least("openloop_horizon", cfg.openloop_horizon, 1)
    p.at_least("openloop_windows", cfg.openloop_windows, 1)
    p.one_of("balance", cfg.balance, ("fixed", "calibrate"))
    p.at_least("calibrate_updates", cfg.calibrate_updates, 1)
    p.at_least("max_nonfinite", cfg.max_nonfinite, 1)
    p.at_least("memory_budget", cfg.memory_budget, 0)
    p.require(trackers.problem(cfg.loggers) is None, f"{p.name('loggers')} {trackers.problem(cfg.loggers)}")
    for problem in network_problems(cfg.model):
        p.add(problem)
    p.raise_any()
    trackers.check(cfg.loggers, FLAGS["loggers"])  # a tracker whose package is missing: how to install it


# --- data -------------------------------------------------------------------------------------


def split_episodes(datasets: list[Dataset], fraction: float, seed: int) -> tuple[list[Dataset], list[Dataset]]:
    """Hold out ``fraction`` of the episodes (at least one when there are two or more).

    Returns two lists of Dataset views (same files, filtered ``refs``)."""
    total = sum(d.num_episodes for d in datasets)
    n_val = 0 if total < 2 or fraction <= 0 else max(1, int(round(fraction * total)))
    rng = np.random.default_rng(seed)
    val_ids = set(rng.choice(total, size=n_val, replace=False).tolist()) if n_val else set()
    train, val, i = [], [], 0
    for ds in datasets:
        keep_train, keep_val = [], []
        for ref in ds.refs:
            (keep_val if i in val_ids else keep_train).append(ref)
            i += 1
        for refs, out in ((keep_train, train), (keep_val, val)):
            if refs:
                view = copy.copy(ds)
                view.refs = refs
                out.append(view)
    return train, val


def openloop_starts(sampler: SequenceSampler, length: int, count: int) -> np.ndarray:
    """Up to ``count`` window starts that stay inside one episode for ``length`` rows.

    Every valid offset of every held-out episode is a candidate (not only episode starts: a
    short held-out split then still gives hundreds of windows); ``count`` of them are taken
    evenly spaced, so the same windows are scored at every evaluation.
    """
    starts = np.asarray(sampler.episode_starts)
    rows = np.diff(np.append(starts, sampler.num_rows))
    candidates = [np.arange(s, s + r - length + 1) for s, r in zip(starts, rows) if r >= length]
    if not candidates:
        return np.zeros(0, dtype=np.int64)
    every = np.concatenate(candidates)
    idx = np.linspace(0, len(every) - 1, num=min(count, len(every))).round().astype(int)
    return every[idx].astype(np.int64)


# --- the run ----------------------------------------------------------------------------------


def _keep_on_resume(stored: TrainWorldModelConfig, given: TrainWorldModelConfig, updates: int | None,
                    ) -> TrainWorldModelConfig:
    """A resumed run keeps its stored config, except the datasets given now and a new budget."""
    return dataclasses.replace(stored, datasets=given.datasets or stored.datasets, updates=updates or stored.updates)


class Trainer:
    """One world-model training run (fresh or resumed)."""

    def __init__(self, cfg: TrainWorldModelConfig, resume: bool = False, progress: bool = True,
                 resume_updates: int | None = None, loggers: str | None = None,
                 callbacks: Sequence[Callback] = ()):
        """``resume_updates``: the new total when resuming (None: the run's own target);
        ``loggers``: new trackers for a resumed run (None: the run's own); ``callbacks``: the
        hooks of ``stages.common.Callback`` (step = updates)."""
        self.run_dir = Path(cfg.out)
        self.progress = progress
        self.callbacks = list(callbacks)
        latest = self.run_dir / LATEST
        cfg, state = resume_or_refuse(cfg, latest, [self.run_dir / WORLD_MODEL], resume, "choose another --out",
                                      keep=lambda stored, given: _keep_on_resume(stored, given, resume_updates),
                                      config_file=self.run_dir / WORLD_MODEL_CONFIG)
        if loggers is not None:
            cfg = dataclasses.replace(cfg, loggers=loggers)
        trackers.check(cfg.loggers, FLAGS["loggers"])  # a stored config's trackers may be missing here
        self.cfg = cfg
        self.run_id = run_id(self.run_dir)  # made at the first write (run) for a new run
        self.dist = distributed.init(runtime.resolve_device(cfg.device))  # SINGLE without torchrun
        self.device = self.dist.device(runtime.resolve_device(cfg.device))  # cuda: this rank's GPU
        runtime.setup(cfg.threads)
        torch.manual_seed(cfg.seed)
        datasets = open_datasets(cfg.datasets, cfg.skip_corrupt)
        self.observation_space, self.action_space = datasets[0].observation_space, datasets[0].action_space
        if state is not None:
            state.check_spaces(self.observation_space, self.action_space, "The dataset", latest)
        self._make_samplers(datasets)
        self.family = cfg.family
        if self.family == "worldmodels" and cfg.worldmodels.training == "staged" and not cfg.vae_updates:
            cfg = self.cfg = dataclasses.replace(cfg, vae_updates=_vae_updates(cfg))  # fixed for resumes
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if self.family == "worldmodels":
            self.model = VaeMdnWorldModel(cfg.worldmodels, self.observation_space, self.action_space).to(self.device)
            if cfg.worldmodels.training == "staged":
                groups = self.model.parameter_groups()
                self.optimizers = {"vae": make_optimizer(groups["vae"], cfg.vae_optim),
                                   "memory": make_optimizer(groups["memory"], cfg.memory_optim)}
            else:
                self.optimizers = {"joint": make_optimizer(self.model.parameters(), cfg.vae_optim)}
            self.optimizer = next(iter(self.optimizers.values()))
        else:
            self.model = WorldModel(cfg.model, self.observation_space, self.action_space).to(self.device)
            self.optimizer = make_optimizer(self.model.parameters(), cfg.optim)
        self.dist.broadcast_module(self.model)  # every rank starts from rank 0's weights
        if self.dist.rank > 0:  # its own latent-sampling noise; rank 0 keeps a one-process run's
            torch.manual_seed(self.dist.seed(cfg.seed))
        self.update = 0
        self.calibration: dict[str, Any] | None = None
        if state is not None:
            self._restore(state)
        elif self.dist.is_main:
            truncate_metrics(self.run_dir, 0)  # a run restarted before its first checkpoint logs anew

    def _make_samplers(self, datasets: list[Dataset]) -> None:
        """Training windows, held-out windows and held-out open-loop windows (when long enough)."""
        cfg = self.cfg
        train, val = split_episodes(datasets, cfg.val_fraction, cfg.seed)
        self.sampler = SequenceSampler(train, cfg.batch_size, cfg.seq_len, seed=cfg.seed,
                                       memory_budget=cfg.memory_budget, rank=self.dist.rank,
                                       world_size=self.dist.world_size)  # each rank its own stream
        val_rows = sum(v.num_rows for v in val)
        self.val_sampler = None
        if val and val_rows >= cfg.seq_len:
            self.val_sampler = SequenceSampler(val, cfg.batch_size, cfg.seq_len, seed=cfg.seed + 1,
                                               memory_budget=cfg.memory_budget)
        length = cfg.openloop_context + cfg.openloop_horizon
        self.openloop_sampler = None
        if val and val_rows >= length:
            self.openloop_sampler = SequenceSampler(val, cfg.batch_size, length, seed=cfg.seed + 2,
                                                    memory_budget=cfg.memory_budget)
        self.skipped = skipped_shards([*datasets, *train, *val])  # --skip-corrupt: complete once loaded

    # --- loop -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.run_id = self.run_id or run_id(self.run_dir, create=True)
            for shard in self.skipped:  # what --skip-corrupt left out, before any update
                print(f"skipped corrupt shard {shard['path']}: {shard['reason']}", file=sys.stderr)
        if self.update == 0 and cfg.balance == "calibrate" and self.calibration is None:
            self.calibrate()
            if self.dist.active:  # rank 0's weights on every rank
                self.cfg, self.calibration = self.dist.broadcast_object((self.cfg, self.calibration))
                self.model.cfg = self.cfg.worldmodels if self.family == "worldmodels" else self.cfg.model
        if main:
            self._write_config()
        if main and self.dist.active:
            print(f"data-parallel: {self.dist.world_size} ranks ({self.dist.backend}) x batch {cfg.batch_size} = "
                  f"global batch {self.dist.world_size * cfg.batch_size}", file=sys.stderr)
        last: dict[str, float] = {}
        with TrainLoop(self.run_dir, cfg.updates, self.update, "world model", self.progress,
                       log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                       checkpoint_seconds=cfg.checkpoint_seconds, callbacks=self.callbacks, dist=self.dist) as loop:
            loop.sink.track(cfg.loggers, "train-world-model", config_lib.to_dict(self.cfg), cfg.project, HEADLINE)
            guard = NonFiniteGuard(cfg.max_nonfinite, self._nonfinite_message)
            evaluation = Every(cfg.eval_every, self.update)
            while loop.running(self.update):
                ok, metrics = self.train_step(self.sampler.sample())
                if not ok:
                    loop.log(self.update, {"wm/nonfinite": 1.0})
                if not guard.check(ok):  # raises after max_nonfinite in a row
                    continue
                self.update += 1
                loop.mean.add(metrics)
                loop.updated(self.update, {f"wm/{k}": v for k, v in metrics.items()})
                final = self.update == cfg.updates
                if loop.log_due(self.update, final):
                    last = loop.log_mean(self.update, "wm/", **{"wm/updates_per_second": loop.rate(self.update)})
                if evaluation(self.update) or final:
                    held_out = self.evaluate() if main else {}  # rank 0 alone logs it
                    last.update(held_out)
                    loop.log(self.update, {k: v for k, v in last.items() if k.startswith("val/")})
                    if held_out:
                        loop.evaluated(self.update, held_out)
                if loop.checkpoint_due(self.update, final):
                    self.save()
                    loop.checkpointed(self.update, self.run_dir / LATEST)
                loop.show(self.update, lambda last=last: self._status(last, loop.start_count))
            loop.show(self.update, force=True)
        return {"updates": self.update, **last}

    def _status(self, last: dict[str, float], start_count: int) -> str:
        """The progress status: training loss, held-out loss once evaluated, updates this session."""
        held_out = f" | held-out {last['val/wm/loss']:.3f}" if "val/wm/loss" in last else ""
        return f"loss {last.get('wm/loss', float('nan')):.3f}{held_out} | {self.update - start_count} updates"

    def _nonfinite_message(self, count: int) -> str:
        return (f"Stopped after {count} non-finite losses in a row at update {self.update}. The last good "
                f"checkpoint ({self.run_dir / LATEST}) is kept. Lower the learning rate (--set optim.lr=...), "
                "use --precision float32, or check the dataset for extreme values; then continue with --resume.")

    def train_step(self, batch: Batch, scales: LossScales | None = None) -> tuple[bool, dict[str, float]]:
        """One update. Returns (finite, metrics as floats); a non-finite loss changes nothing."""
        if self.family == "worldmodels":
            return self._worldmodels_step(batch)
        ok, metrics, _ = world_model_update(self.model, self.optimizer, self.cfg.optim, self.update,
                                            batch.to(self.device), self.cfg.precision, dist=self.dist)
        return ok, metrics

    def phase(self, update: int | None = None) -> str:
        """The worldmodels phase of ``update`` (default: the next one): vae, memory or joint."""
        update = self.update if update is None else update
        if self.cfg.worldmodels.training == "joint":
            return "joint"
        return "vae" if update < self.cfg.vae_updates else "memory"

    def _worldmodels_step(self, batch: Batch) -> tuple[bool, dict[str, float]]:
        phase = self.phase()
        self.model.set_phase(phase)
        optim = {"vae": self.cfg.vae_optim, "memory": self.cfg.memory_optim, "joint": self.cfg.vae_optim}[phase]
        start = self.cfg.vae_updates if phase == "memory" else 0  # each optimizer warms up from its own start
        ok, metrics, _ = world_model_update(self.model, self.optimizers[phase], optim, self.update - start,
                                            batch.to(self.device), self.cfg.precision, dist=self.dist)
        if ok:
            metrics["phase_memory"] = float(phase == "memory")
        return ok, metrics

    # --- evaluation ---------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Held-out loss terms, latent usage, inverse accuracy and open-loop error vs baseline.

        Runs on a forked RNG, so evaluating never changes what training samples next (a resumed
        run reproduces an uninterrupted one whatever the evaluation cadence)."""
        if self.val_sampler is None:
            return {}
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        if self.family == "worldmodels":
            return self._evaluate_worldmodels()
        out: dict[str, float] = {}
        self.model.eval()
        sums: dict[str, float] = {}
        usage = []
        state = self.val_sampler.state_dict()
        for _ in range(self.cfg.val_batches):
            batch = self.val_sampler.sample().to(self.device)
            loss, metrics, post = self.model.loss(batch)
            sums["loss"] = sums.get("loss", 0.0) + float(loss)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            usage.append(float(self.model.latent_usage(post)))
            acc = self.model.inverse_accuracy(self.model.features(post), batch)
            if acc is not None:
                sums["inverse_metric"] = sums.get("inverse_metric", 0.0) + float(acc)
        self.val_sampler.load_state_dict(state)  # the same held-out windows every time
        out.update({f"val/wm/{k}": v / self.cfg.val_batches for k, v in sums.items()})
        out["val/wm/latent_usage"] = float(np.mean(usage))
        out.update(self._openloop())
        return out

    def _evaluate_worldmodels(self) -> dict[str, float]:
        """Every term of the joint loss (whatever the phase: held-out reconstruction, dynamics
        NLL, ...), the loss under the run's weights, inverse accuracy and the open-loop error."""
        self.model.eval()
        sums: dict[str, float] = {}
        state = self.val_sampler.state_dict()
        for _ in range(self.cfg.val_batches):
            batch = self.val_sampler.sample().to(self.device)
            terms, post, metrics = self.model.loss_terms(batch, phase="joint")
            weights = self.model.loss_weights(terms)
            values = {f"loss/{k}": float(v.mean()) for k, v in terms.items()}
            values["loss"] = sum(weights[k] * values[f"loss/{k}"] for k in terms)
            values.update({k: float(v) for k, v in metrics.items()})
            acc = self.model.inverse_accuracy(self.model.features(post), batch)
            if acc is not None:
                values["inverse_metric"] = float(acc)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
        self.val_sampler.load_state_dict(state)  # the same held-out windows every time
        out = {f"val/wm/{k}": v / self.cfg.val_batches for k, v in sums.items()}
        out.update(self._openloop())
        return out

    def _openloop(self) -> dict[str, float]:
        cfg = self.cfg
        if self.openloop_sampler is None:
            return {}
        starts = openloop_starts(self.openloop_sampler, cfg.openloop_context + cfg.openloop_horizon,
                                 cfg.openloop_windows)
        if len(starts) == 0:
            return {}
        batch = self.openloop_sampler.gather(starts).to(self.device)
        result = self.model.open_loop(batch, cfg.openloop_context, cfg.openloop_horizon)
        mode = self.model.open_loop(batch, cfg.openloop_context, cfg.openloop_horizon, sample=False)
        mse, base = result["mse"].cpu().numpy(), result["baseline"].cpu().numpy()
        mode_mse = mode["mse"].cpu().numpy()
        out = {
            "val/wm/openloop_mode_mse": float(mode_mse.mean()),
            "val/wm/openloop_mode_mse_last": float(mode_mse[-1]),
            "val/wm/openloop_mode_ratio_last": float(base[-1]) / max(float(mode_mse[-1]), 1e-12),
            "val/wm/openloop_mse": float(mse.mean()),
            "val/wm/openloop_mse_last": float(mse[-1]),
            "val/wm/openloop_baseline_mse": float(base.mean()),
            "val/wm/openloop_baseline_mse_last": float(base[-1]),
            "val/wm/openloop_reward_mse": float(result["reward_mse"].mean()),
            "val/wm/openloop_windows": float(len(starts)),
        }
        out["val/wm/openloop_ratio_last"] = out["val/wm/openloop_baseline_mse_last"] / max(out["val/wm/openloop_mse_last"], 1e-12)
        return out

    # --- loss-weight calibration ----------------------------------------------------------

    def calibrate(self) -> dict[str, Any]:
        """Measure each term with unit weights, then pick weights that order the weighted terms
        by ``priority`` within one order of magnitude (see seeds/004: the hand recipe).

        Trains a throwaway copy for ``calibrate_updates`` updates with unit weights, averages the
        terms over the second half, and restores model, optimizer and RNG state, so calibration
        does not change what the real run sees for a fixed seed.
        """
        cfg = self.cfg
        if self.family == "worldmodels":
            return self._calibrate_worldmodels()
        saved = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                 torch.get_rng_state(), self.sampler.state_dict())
        unit = dataclasses.replace(cfg.model.scales, **{f.name: 1.0 for f in dataclasses.fields(LossScales)})
        self.model.cfg = dataclasses.replace(cfg.model, scales=unit)
        sums: dict[str, float] = {}
        n = 0
        for i in range(cfg.calibrate_updates):
            ok, metrics = self.train_step(self.sampler.sample())
            if ok and i >= cfg.calibrate_updates // 2:
                n += 1
                for k, v in metrics.items():
                    if k.startswith("loss/"):
                        sums[k[5:]] = sums.get(k[5:], 0.0) + abs(v)
        self.model.load_state_dict(saved[0])
        self.optimizer.load_state_dict(saved[1])
        torch.set_rng_state(saved[2])
        self.sampler.load_state_dict(saved[3])
        magnitudes = {k: v / max(n, 1) for k, v in sums.items()}
        weights = balance_weights(magnitudes, cfg.priority)
        scales = dataclasses.replace(cfg.model.scales, **weights)
        self.cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scales=scales))
        self.model.cfg = self.cfg.model
        self.calibration = {"magnitudes": magnitudes, "weights": weights}
        lines = ", ".join(f"{k}: |{magnitudes[k]:.4g}| x {weights[k]:.4g}" for k in weights)
        if self.progress and self.dist.is_main:
            print(f"calibrated loss weights ({cfg.calibrate_updates} updates): {lines}")
        return self.calibration

    def _calibrate_worldmodels(self) -> dict[str, Any]:
        """``worldmodels.calibrate`` on a few training batches (a throwaway copy warms up for
        ``calibrate_updates`` updates); the sampler continues as if it had not run."""
        cfg = self.cfg
        saved = self.sampler.state_dict()
        batches = [self.sampler.sample().to(self.device) for _ in range(max(1, min(cfg.calibrate_updates, 8)))]
        self.sampler.load_state_dict(saved)
        record = worldmodels.calibrate(self.model, batches, warmup_updates=cfg.calibrate_updates,
                                       lr=cfg.vae_optim.lr)
        self.cfg = dataclasses.replace(cfg, worldmodels=self.model.cfg)  # the chosen weights, saved with the config
        self.calibration = {"magnitudes": record["magnitudes"], "weights": record["weights"]}
        if self.progress and self.dist.is_main:
            print(f"calibrated loss weights ({cfg.calibrate_updates} warm-up updates): "
                  f"{worldmodels.describe_calibration(record)}")
        return self.calibration

    # --- checkpoints ----------------------------------------------------------------------

    def _write_config(self) -> None:
        extra: dict[str, Any] = {} if self.calibration is None else {"calibration": self.calibration}
        if self.skipped:
            extra["skipped_shards"] = self.skipped
        if self.dist.active:
            extra["distributed"] = {"world_size": self.dist.world_size, "backend": self.dist.backend,
                                    "global_batch": self.dist.world_size * self.cfg.batch_size}
        write_config(self.run_dir / WORLD_MODEL_CONFIG, "train-world-model", self.cfg, **extra)

    def save(self) -> None:
        """Write the resume checkpoint and ``world_model.pt``. In a data-parallel run every rank
        calls it (its sampler and torch RNG states go to rank 0) and rank 0 alone writes."""
        ranks = (self.dist.gather_object({"torch": torch.get_rng_state(), "sampler": self.sampler.state_dict()})
                 if self.dist.active else [])
        if not self.dist.is_main:
            return
        cfg, cfg_dict = self.cfg, config_lib.to_dict(self.cfg)
        optimizers = ({name: opt.state_dict() for name, opt in self.optimizers.items()} if self.family == "worldmodels"
                      else {"model": self.optimizer.state_dict()})
        counters = {"update": self.update, "calibration": self.calibration}
        if self.family == "worldmodels":
            counters["phase"] = self.phase()
        rng = {"torch": torch.get_rng_state(), "sampler": self.sampler.state_dict()}
        if ranks:
            rng["ranks"] = ranks  # rank r resumes from ranks[r]
        checkpoint.save(self.run_dir / LATEST, checkpoint.TrainState(
            **checkpoint.spaces_json(self.observation_space, self.action_space), stage_config=cfg_dict,
            stage="train-world-model", run_id=self.run_id, modules={"model": self.model.state_dict()},
            optimizers=optimizers, counters=counters, rng=rng))
        self.model.save(self.run_dir / WORLD_MODEL, cfg_dict, update=self.update, calibration=self.calibration,
                        datasets=list(cfg.datasets), batch_size=cfg.batch_size, seq_len=cfg.seq_len)

    def _restore(self, state: checkpoint.TrainState) -> None:
        self.model.load_state_dict(state.modules["model"])
        if self.family == "worldmodels":
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state.optimizers[name])
        else:
            self.optimizer.load_state_dict(state.optimizers["model"])
        self.update = int(state.counters["update"])
        self.calibration = state.counters.get("calibration")
        ranks = state.rng.get("ranks") or [{"sampler": state.rng["sampler"], "torch": state.rng["torch"]}]
        if self.dist.rank < len(ranks):  # a rank the saved run did not have keeps its fresh streams
            self.sampler.load_state_dict(ranks[self.dist.rank]["sampler"])
            torch.set_rng_state(ranks[self.dist.rank]["torch"])
        if self.dist.is_main:
            truncate_metrics(self.run_dir, self.update)


def balance_weights(magnitudes: dict[str, float], priority: tuple[str, ...]) -> dict[str, float]:
    """The calibration rule (:func:`losses.balance_weights`): weighted terms in ``priority``
    order, spread evenly over one order of magnitude, total magnitude unchanged."""
    return losses.balance_weights(magnitudes, priority)


def run(cfg: TrainWorldModelConfig, resume: bool = False, progress: bool = True,
        resume_updates: int | None = None, loggers: str | None = None,
        callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train (or resume) and return the final metrics; one writer per run directory (rank 0 of
    a ``torchrun`` launch, which alone checks and locks it; a refusal there stops every rank).
    ``loggers``: new trackers for a resumed run (None: the run's own); ``callbacks``: hooks
    called after each update, evaluation and checkpoint (``stages.common.Callback``)."""
    dist = distributed.init(runtime.resolve_device(cfg.device))  # a torchrun launch: join its ranks
    try:
        loggers_used = cfg.loggers if loggers is None else loggers
        with claim_run_dir(dist, cfg.out, "--out", loggers_used, FLAGS["loggers"]):
            return Trainer(cfg, resume=resume, progress=progress, resume_updates=resume_updates, loggers=loggers,
                           callbacks=callbacks).run()
    finally:
        dist.close()
