"""Stage 03 of the World Models family: the CMA-ES controller search against a frozen V + M.

    dreamer train-behavior --run runs/carracing --generations 100 --population 16 --scorer real

`dreamer train-behavior` runs this stage when the run's ``world_model.pt`` is a World Models
(VAE + MDN-RNN) model (``runs.world_model_family``); its config is the section
``train-controller`` of ``RUN/config.yaml``. The controller (``controller.Controller``: linear,
or one tanh hidden layer with ``--hidden``) is searched by ``controller.ControllerSearch``
(CMA-ES from the ``cma`` package), each candidate scored as its mean return over ``rollouts``
episodes in the real env (``--scorer real``: V and M filter the observations) or inside the
dream (``--scorer dream``: M rolled out at temperature ``tau`` from the encoded first rows of
up to ``start_episodes`` stored episodes). Candidates are scored in ``search.workers`` worker
processes (``--workers``; 1: in this process).

Writes into RUN/: ``behavior.pt`` (the best candidate so far as a controller artifact, with the
env the data came from: what stage 04 and ``collect --policy RUN`` load through
``runs.load_agent``), ``checkpoints/behavior_latest.pt`` (the search state each generation:
``--resume`` continues it exactly, even after ``kill -9``), ``behavior_metrics.jsonl``
(``cma/*`` per generation, the generation as the step) and what the trackers keep (``tb/``).

Imports: controller, worldmodels, analysis (first rows of episodes), envs, checkpoint, config,
runs (artifact names), runtime, trackers, the stage kit (stages.common, stages.outputs).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dreamer_core import analysis, checkpoint, runtime, trackers
from dreamer_core import config as config_lib
from dreamer_core.controller import (
    CONTROLLER_INPUTS,
    DONES,
    KEEP,
    STAGE,
    Controller,
    ControllerConfig,
    ControllerSearch,
    DreamScorer,
    GenerationRecord,
    RealEnvScorer,
    SearchConfig,
    start_states,
    state_arrays,
)
from dreamer_core.data.dataset import Dataset, skipped_shards
from dreamer_core.envs import EnvConfig
from dreamer_core.errors import DreamerError
from dreamer_core.runs import (
    BEHAVIOR,
    BEHAVIOR_LATEST,
    BEHAVIOR_METRICS,
    CONFIG,
    WORLD_MODEL,
    freeze,
)
from dreamer_core.stages.common import (
    Callback,
    RunLock,
    TrainLoop,
    open_datasets,
    resume_or_refuse,
    run_id,
    truncate_metrics,
    write_config,
)
from dreamer_core.stages.outputs import check_run_dir
from dreamer_core.worldmodels import VaeMdnState, VaeMdnWorldModel

COMMAND = "train-controller"  # its section of RUN/config.yaml (the command is `dreamer train-behavior`)
LATEST = BEHAVIOR_LATEST
METRICS = BEHAVIOR_METRICS
HEADLINE = ("cma/best", "cma/best_ever")
SCORERS = ("real", "dream")
DREAM_STEPS = 1000  # a dream's length cap when max_steps is 0


@dataclass(frozen=True)
class TrainControllerConfig:
    """Everything the controller search needs (`dreamer train-behavior` on a World Models run)."""

    run: str = ""
    datasets: tuple[str, ...] = ()  # empty: the datasets the world model was trained on (env, dream starts)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    generations: int = 20
    rollouts: int = 4  # episodes (real) or dreams (dream) per candidate
    scorer: str = "real"  # real | dream
    tau: float = 1.0  # dream: M's temperature
    done: str = "mode"  # dream: mode | sample (controller.DreamEnv)
    max_steps: int = 0  # cap per episode (real: 0 = the env's own limit; dream: 0 = 1000)
    stall_steps: int = 0  # real: end an episode once its return has not risen for this many steps (0: never)
    start_episodes: int = 64  # dream: stored episodes whose first rows start the dreams
    env_id: str = ""  # real: env id; empty: the env the run's data came from (with its options)
    threads: int = 0
    skip_corrupt: bool = False
    loggers: str = "tensorboard"
    project: str = ""


FLAGS = {"generations": "--generations", "search.population": "--population", "scorer": "--scorer",
         "tau": "--tau", "search.workers": "--workers", "rollouts": "--rollouts", "controller.hidden": "--hidden",
         "search.keep": "--keep", "loggers": "--logger"}
# The options of `dreamer train-behavior` that only this stage reads (config keys).
OWN_FLAGS = ("generations", "search.population", "scorer", "tau", "search.workers", "rollouts", "controller.hidden",
             "search.keep")


def make_config(run: str, datasets: list[str], presets: list[str], sets: list[str],
                flags: dict[str, Any]) -> TrainControllerConfig:
    """Defaults, presets, flags, --set (in that order)."""
    run_dir = Path(run)
    if not (run_dir / WORLD_MODEL).exists():
        raise DreamerError(f"{run_dir} has no {WORLD_MODEL}. Train a world model into it first: "
                           f"`dreamer train-world-model DATASET --out {run_dir} --preset worldmodels`.")
    base = TrainControllerConfig(run=str(run_dir), datasets=tuple(datasets))
    cfg = config_lib.resolve(base, "train-behavior", presets, flags, sets)
    validate(cfg)
    return cfg


def validate(cfg: TrainControllerConfig) -> None:
    p = config_lib.Problems("train-behavior", FLAGS)
    p.at_least("generations", cfg.generations, 1)
    p.at_least("search.population", cfg.search.population, 2)
    p.positive("search.sigma", cfg.search.sigma)
    p.at_least("search.workers", cfg.search.workers, 0, " (0 = one per CPU)")
    p.one_of("search.start_method", cfg.search.start_method, ("spawn", "fork", "forkserver"))
    p.at_least("rollouts", cfg.rollouts, 1)
    p.one_of("scorer", cfg.scorer, SCORERS)
    p.at_least("tau", cfg.tau, 0)
    p.one_of("done", cfg.done, DONES)
    p.at_least("max_steps", cfg.max_steps, 0)
    p.at_least("stall_steps", cfg.stall_steps, 0, " (0 = never)")
    p.require(cfg.stall_steps == 0 or cfg.scorer == "real",
              f"stall_steps applies to the real-env scorer only (got --scorer {cfg.scorer}); leave it at 0 "
              "for dreams, whose length max_steps caps.")
    p.at_least("start_episodes", cfg.start_episodes, 1)
    p.at_least("controller.hidden", cfg.controller.hidden, 0, " (0 = linear)")
    p.one_of("controller.inputs", cfg.controller.inputs, CONTROLLER_INPUTS)
    p.one_of("search.keep", cfg.search.keep, KEEP)
    p.at_least("threads", cfg.threads, 0, " (0 = torch's default)")
    p.require(trackers.problem(cfg.loggers) is None, f"{p.name('loggers')} {trackers.problem(cfg.loggers)}")
    p.raise_any()
    trackers.check(cfg.loggers, FLAGS["loggers"])


# What a resume may change: the new total of generations, the number of workers (a search scores
# the same with any number) and what behavior.pt holds (not part of the search).
RESUMABLE = ("generations", "search.workers", "search.keep")


def _keep_on_resume(stored: TrainControllerConfig, changes: Mapping[str, Any] | None) -> TrainControllerConfig:
    """The stored config with the given (not None) ``changes``, keyed by RESUMABLE's keys."""
    unknown = set(changes or {}) - set(RESUMABLE)
    if unknown:
        raise ValueError(f"a resume cannot change {sorted(unknown)}; only {RESUMABLE}")
    cfg = config_lib.apply_given(stored, changes or {})
    validate(cfg)
    return cfg


class ControllerTrainer:
    """One controller search against a frozen World Models world model (fresh or resumed)."""

    def __init__(self, cfg: TrainControllerConfig, resume: bool = False, progress: bool | float = True,
                 resume_changes: Mapping[str, Any] | None = None, loggers: str | None = None,
                 callbacks: Sequence[Callback] = ()):
        self.run_dir = Path(cfg.run)
        self.progress = progress
        self.callbacks = list(callbacks)
        latest = self.run_dir / LATEST
        cfg, state = resume_or_refuse(cfg, latest, [self.run_dir / BEHAVIOR], resume,
                                      "train a world model into another run directory",
                                      keep=lambda stored, given: _keep_on_resume(stored, resume_changes),
                                      config_file=self.run_dir / CONFIG, command=COMMAND)
        if state is not None and state.stage != STAGE:
            raise DreamerError(f"{latest} is a {state.stage or 'unknown'} resume state, not a controller search; "
                               "nothing was changed.")
        if loggers is not None:
            cfg = dataclasses.replace(cfg, loggers=loggers)
        trackers.check(cfg.loggers, FLAGS["loggers"])
        self.cfg = cfg
        self.run_id = run_id(self.run_dir)
        runtime.setup(cfg.threads)
        torch.manual_seed(cfg.search.seed)
        wm_path = self.run_dir / WORLD_MODEL
        self.world_model, wm_artifact = VaeMdnWorldModel.load(wm_path)
        freeze(self.world_model)
        self.world_model_update = wm_artifact.update
        if state is not None and int(state.counters.get("world_model_update", -1)) != self.world_model_update:
            raise DreamerError(
                f"{wm_path} changed since the controller checkpoint {latest} was written (world-model update "
                f"{self.world_model_update} now, {state.counters.get('world_model_update')} then). Resuming would "
                f"mix two models; delete {self.run_dir / BEHAVIOR} and {latest} to search afresh.")
        datasets = self._open_datasets(cfg.datasets or tuple(wm_artifact.datasets))
        self.observation_space = self.world_model.observation_space
        wm_artifact.check_spaces(datasets[0].observation_space, datasets[0].action_space,
                                 f"The dataset {datasets[0].path}", wm_path)
        self.skipped = skipped_shards(datasets)
        recorded = dict(datasets[0].env_config or {})
        if cfg.env_id:
            recorded["id"] = cfg.env_id
        if not recorded:
            raise DreamerError("The run's data does not record which env it came from. Pass the env id with "
                               "--set env_id=ID.")
        self.env_config = EnvConfig.from_dict(recorded)
        self.controller = Controller.for_world_model(cfg.controller, self.world_model)
        scorer = self._scorer(str(wm_path), datasets)
        self.search = ControllerSearch(cfg.search, self.controller, scorer,
                                       state=state.optimizers["cma"] if state is not None else None)
        if state is None:
            truncate_metrics(self.run_dir, 0, METRICS)
        else:
            truncate_metrics(self.run_dir, self.search.generation, METRICS)

    def _open_datasets(self, paths: tuple[str, ...]) -> list[Dataset]:
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise DreamerError(
                f"The dataset {missing[0]} recorded in the run is not there (was it moved, or was the world "
                "model trained from another directory?). Pass the data explicitly with --dataset PATH.")
        return open_datasets(paths, self.cfg.skip_corrupt)

    def _scorer(self, wm_path: str, datasets: list[Dataset]) -> RealEnvScorer | DreamScorer:
        cfg = self.cfg
        if cfg.scorer == "real":
            return RealEnvScorer(wm_path, self.env_config, cfg.rollouts, cfg.max_steps, cfg.search.seed,
                                 cfg.stall_steps)
        start = self._start_states(datasets)
        return DreamScorer(wm_path, state_arrays(start), cfg.rollouts, cfg.max_steps or DREAM_STEPS, cfg.tau,
                           cfg.done, cfg.search.seed)

    @torch.no_grad()
    def _start_states(self, datasets: list[Dataset]) -> VaeMdnState:
        """The encoded first rows of up to ``start_episodes`` episodes (seeded: a resumed search
        dreams from the same states)."""
        states = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.search.seed)
            for dataset in datasets:
                for episode in range(dataset.num_episodes):
                    if len(states) >= self.cfg.start_episodes:
                        break
                    batch = analysis.load_episode_batch(dataset, episode, 0, 1)
                    states.append(start_states(self.world_model, batch))
        return VaeMdnState.cat(states, 0)

    # --- loop -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.run_id = self.run_id or run_id(self.run_dir, create=True)
        for shard in self.skipped:
            print(f"skipped corrupt shard {shard['path']}: {shard['reason']}", file=sys.stderr)
        write_config(self.run_dir / CONFIG, COMMAND, cfg, **({"skipped_shards": self.skipped} if self.skipped else {}))
        last: dict[str, float] = {}
        with TrainLoop(self.run_dir, cfg.generations, self.search.generation, f"controller ({cfg.scorer})",
                       self.progress, metrics_name=METRICS, callbacks=self.callbacks) as loop:
            loop.sink.track(cfg.loggers, COMMAND, config_lib.to_dict(cfg), cfg.project, HEADLINE)

            def on_generation(search: ControllerSearch, record: GenerationRecord) -> None:
                metrics = record.metrics()
                last.clear()
                last.update(metrics)
                loop.updated(record.generation, metrics)
                loop.log(record.generation, metrics)
                self.save()
                loop.checkpointed(record.generation, self.run_dir / LATEST)
                loop.show(record.generation, lambda: f"best {record.best:.3f} | mean {record.mean:.3f} | best ever "
                                                      f"{record.best_ever:.3f}")

            with self.search:
                self.search.run(cfg.generations, on_generation, should_stop=lambda: loop.stopped)
            if self.search.generation and not self._behavior_current():
                self.save_behavior()  # killed between the two writes of the last generation
            loop.show(self.search.generation, force=True)
        return {"generations": self.search.generation, "best_score": self.search.best_score, **last}

    # --- checkpoints ----------------------------------------------------------------------

    def save(self) -> None:
        """The search state, then ``behavior.pt`` with the best candidate (both written atomically)."""
        self.search.save_checkpoint(self.run_dir / LATEST, self.observation_space, config_lib.to_dict(self.cfg),
                                    self.run_id or "", world_model_update=self.world_model_update)
        self.save_behavior()

    def save_behavior(self) -> None:
        """``behavior.pt``: the controller set to the best candidate so far, or to the search's
        mean (``search.keep``)."""
        self.controller.set_params(self.search.kept_params)
        self.controller.save(self.run_dir / BEHAVIOR, self.world_model, config_lib.to_dict(self.cfg),
                             update=self.search.generation, world_model_update=self.world_model_update,
                             env_config=self.env_config.to_dict())

    def _behavior_current(self) -> bool:
        """Whether ``behavior.pt`` holds the search's current generation and the parameters it
        hands out. A kill after the search state's write and before behavior.pt's leaves it
        missing or a generation behind, and a resume that only changes ``--keep`` searches
        nothing; a resume that redoes nothing must write behavior.pt itself then."""
        path = self.run_dir / BEHAVIOR
        if not path.exists():
            return False
        artifact = checkpoint.load(path, checkpoint.BehaviorArtifact)
        self.controller.set_params(self.search.kept_params)
        return artifact.update == self.search.generation and all(
            torch.equal(artifact.weights[k], v) for k, v in self.controller.state_dict().items())


def run(cfg: TrainControllerConfig, resume: bool = False, progress: bool | float = True,
        resume_changes: Mapping[str, Any] | None = None, loggers: str | None = None,
        callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Search (or resume) and return the final metrics; one writer per run directory.
    ``callbacks``: ``on_update`` and ``on_checkpoint`` once per generation (step = generation).
    ``resume_changes``: what a resume changes, keyed by RESUMABLE's config keys (a None value or
    a missing key: as stored)."""
    trackers.check(cfg.loggers if loggers is None else loggers, FLAGS["loggers"])
    check_run_dir(cfg.run, "--run")
    with RunLock(Path(cfg.run)):
        return ControllerTrainer(cfg, resume=resume, progress=progress, resume_changes=resume_changes,
                                 loggers=loggers, callbacks=callbacks).run()
