"""Hyperparameter sweeps with optuna (`dreamer sweep SWEEP_DIR --param ... -- TRAIN OPTIONS`).

    dreamer sweep runs/lr-sweep --param optim.lr=float:1e-4:3e-3:log --param batch_size=choice:8,16,32 \\
        --trials 20 -- --env CartPole-v1 --steps 3000 --eval-every 500 --threads 1
    dreamer sweep runs/lr-sweep --space space.yaml --trials 20 -- --env CartPole-v1 --steps 3000
    # more workers: the same command in more shells, or on more machines with a shared --storage URL

Each trial is a normal `dreamer train` run in ``SWEEP_DIR/trial-NNNN/`` (NNNN: the trial's
number in the study), started as a subprocess with the options after ``--`` and one
``--set KEY=VALUE`` per sampled parameter. While it runs, the sweep reads the metric
(``--metric``, default ``eval/return``) from the run's ``metrics.jsonl`` as it is appended,
reports each value to optuna (``trial.report(value, env_step)``) and stops the run (SIGTERM:
it checkpoints and exits, so it stays resumable) when the pruner says so
(``trial.should_prune()``). A finished run's objective is its last, best or mean logged value
(``--objective``). A run that exits with an error, or logs no value, is a FAIL trial; its
stderr is kept in the trial directory (``stderr.log``, with the tail in ``failure.txt``).

The search space: repeated ``--param`` specs, or a YAML file (``--space``), or both::

    KEY=float:LOW:HIGH        uniform              optim.lr=float:1e-5:1e-3:log  (log-uniform)
    KEY=int:LOW:HIGH          integers             batch_size=int:8:64:8         (step 8)
    KEY=choice:A,B,...        one of the values    model.act=choice:silu,elu

    # space.yaml: one entry per key, the same spec strings, a list (choices) or a mapping
    optim.lr: float:1e-5:1e-3:log
    batch_size: [8, 16, 32]
    model.rssm.deter: {type: int, low: 32, high: 256, step: 32}

The study lives in ``--storage`` (default ``sqlite:///SWEEP_DIR/study.db``; any database URL
optuna takes, e.g. ``postgresql://user@host/db``, so workers on several machines share one
study) under ``--study`` (default: SWEEP_DIR's name). Running the same command again
continues the study: ``--trials`` is the number of finished (complete or pruned) trials the
study should hold, so a rerun after a stop or a crash runs only what is missing, and several
workers stop together (each may finish one trial more than the total). A trial whose worker
died is marked FAIL by the next worker after a few minutes without a heartbeat. The study
remembers its search space, metric, objective, direction and train options, and a worker
with others is refused (a new ``--study`` name starts a new study).

After its trials a worker writes ``SWEEP_DIR/summary.csv`` (one row per trial: number, state,
value, parameters, last step, run directory, note), prints the same table, and draws
``history.png`` (each trial's value and the best so far), ``curves.png`` (every trial's
metric against env steps; pruned ones dashed) and, with at least ``MIN_IMPORTANCE_TRIALS``
complete trials and two parameters or more, ``importance.png`` (optuna's parameter
importances).

Ctrl-C or SIGTERM stops a worker cleanly: its running trial's run is stopped (and recorded as
FAIL, interrupted), the summary is written, and the same command continues later. A worker
killed with SIGKILL cannot stop its run: that `dreamer train` goes on to its end on its own.

optuna is imported only here, when a sweep runs (``pip install 'dreamer-core[sweep]'``).

Imports: config (checking keys against the train config), data.store (what a dataset is),
files, runs (file names), viz, errors, the stage kit (stages.outputs: the SWEEP_DIR check). No
other stage: the CLI passes the train config class (``config_class``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dreamer_core import config as config_lib
from dreamer_core import viz
from dreamer_core.data.store import is_dataset_dir
from dreamer_core.errors import DreamerError, MissingDependencyError
from dreamer_core.files import atomic_write_bytes
from dreamer_core.runs import METRICS
from dreamer_core.stages.outputs import check_writable, looks_like_run, visible_entries

KINDS = ("float", "int", "choice")
SPEC_FORMS = "KEY=float:LOW:HIGH[:log|:STEP], KEY=int:LOW:HIGH[:log|:STEP] or KEY=choice:A,B,..."
SAMPLERS = ("tpe", "random", "qmc", "cmaes", "gp")
PRUNERS = ("median", "percentile", "halving", "hyperband", "threshold", "none")
OBJECTIVES = ("last", "best", "mean")
DIRECTIONS = ("maximize", "minimize")
# Options of `dreamer train` the sweep sets itself, so they cannot be among the train options.
OWN_TRAIN_OPTIONS = ("--out", "--resume")
MIN_IMPORTANCE_TRIALS = 4
SWEEP_FILE = "sweep.yaml"  # what this SWEEP_DIR sweeps (for people; the study holds the truth)
SUMMARY = "summary.csv"
TRIAL_PREFIX = "trial-"
HEARTBEAT_SECONDS = 60  # a running trial's worker records a heartbeat this often ...
GRACE_SECONDS = 180  # ... and the next worker fails the trial after this long without one
TAIL_LINES = 30  # of a failed run's stderr, in failure.txt and the study


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a float or int range (``log``: log-uniform; ``step``:
    a grid) or a list of ``choices`` (int, float, bool, str or None)."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Sample this parameter in an optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def spec(self) -> str:
        """The canonical spec text (the study stores these to recognise its space)."""
        if self.kind == "choice":
            return f"{self.key}=choice:" + ",".join(set_text(c) for c in self.choices)
        number = (lambda v: str(int(v))) if self.kind == "int" else repr
        tail = ":log" if self.log else (f":{number(self.step)}" if self.step is not None else "")
        return f"{self.key}={self.kind}:{number(self.low)}:{number(self.high)}{tail}"


def set_text(value: Any) -> str:
    """A sampled value as `dreamer train --set KEY=VALUE` reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _bad_spec(where: str, problem: str) -> DreamerError:
    return DreamerError(
        f"Cannot read the search-space entry {where}: {problem}. Write each parameter as {SPEC_FORMS}, e.g. "
        "--param optim.lr=float:1e-5:1e-3:log --param batch_size=int:8:64:8 --param model.act=choice:silu,elu."
    )


def _number(text: Any, kind: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise _bad_spec(where, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise _bad_spec(where, f"{what} must be finite (got {text!r})")
    if kind == "int" and not value.is_integer():
        raise _bad_spec(where, f"{what} {text!r} is not a whole number, but the type is int (use float for fractions)")
    return value


def _choice_value(text: str) -> Any:
    """``16`` -> 16, ``1e-3`` -> 0.001, anything else stays text (`--set` converts it)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def make_param(key: str, kind: str, low: Any = None, high: Any = None, log: bool = False, step: Any = None,
               choices: Iterable[Any] = (), where: str = "") -> Param:
    """Check one parameter's fields and build it (``where`` names the entry in errors)."""
    where = where or repr(key)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key or ""):
        raise _bad_spec(where, f"the key {key!r} is not a config key like optim.lr or model.rssm.deter")
    if kind not in KINDS:
        raise _bad_spec(where, f"the type {kind!r} is none of {', '.join(KINDS)}")
    if kind == "choice":
        values = tuple(choices)
        for value in values:
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise _bad_spec(where, f"the choice {value!r} is not a single value (write a list as text, e.g. "
                                       "'[64,64]')")
        if len(values) < 2:
            raise _bad_spec(where, f"a choice needs two values or more (got {len(values)}); fix a single value "
                                   "with --set KEY=VALUE among the train options after --")
        texts = [set_text(v) for v in values]
        if len(set(texts)) < len(texts):
            raise _bad_spec(where, f"the choices {', '.join(texts)} repeat a value")
        return Param(key, kind, choices=values)
    if low is None or high is None:
        raise _bad_spec(where, f"a {kind} range needs LOW and HIGH")
    lo, hi = _number(low, kind, "LOW", where), _number(high, kind, "HIGH", where)
    if not lo < hi:
        raise _bad_spec(where, f"LOW ({low}) must be below HIGH ({high})")
    if log and step is not None:
        raise _bad_spec(where, "a range is either log-uniform or stepped, not both")
    if log and lo <= 0:
        raise _bad_spec(where, f"a log-uniform range needs LOW above 0 (got {low})")
    size = None
    if step is not None:
        size = _number(step, kind, "STEP", where)
        if size <= 0:
            raise _bad_spec(where, f"STEP must be positive (got {step})")
        if kind == "int" and (hi - lo) % size:
            raise _bad_spec(where, f"HIGH - LOW ({int(hi - lo)}) is not a multiple of STEP ({int(size)})")
    if kind == "int":
        return Param(key, kind, int(lo), int(hi), bool(log), None if size is None else int(size))
    return Param(key, kind, lo, hi, bool(log), size)


def parse_param(text: str) -> Param:
    """A ``--param`` spec: ``KEY=float:LOW:HIGH[:log|:STEP]``, ``KEY=int:...`` or ``KEY=choice:A,B,...``."""
    where = f"--param {text!r}"
    key, sep, spec = text.partition("=")
    if not sep:
        raise _bad_spec(where, "there is no '=' between the config key and its range")
    return _parse_spec(key.strip(), spec.strip(), where)


def _parse_spec(key: str, spec: str, where: str) -> Param:
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "choice":
        return make_param(key, kind, choices=[_choice_value(v.strip()) for v in rest.split(",") if v.strip()],
                          where=where)
    if kind not in KINDS:
        raise _bad_spec(where, f"the type {kind!r} is none of {', '.join(KINDS)} (the spec starts with the type)")
    fields = [f.strip() for f in rest.split(":")]
    if len(fields) not in (2, 3):
        raise _bad_spec(where, f"a {kind} range is {kind}:LOW:HIGH with an optional :log or :STEP "
                               f"(got {len(fields)} field{'' if len(fields) == 1 else 's'} after the type)")
    low, high, *extra = fields
    log = bool(extra) and extra[0].lower() == "log"
    step = extra[0] if extra and not log else None
    return make_param(key, kind, low, high, log, step, where=where)


def load_space(path: Path | str) -> list[Param]:
    """A YAML search-space file: ``KEY: SPEC`` (the ``--param`` text after ``=``), ``KEY: [A, B]``
    (choices) or ``KEY: {type: float|int|choice, low, high, log, step, values}``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DreamerError(f"Cannot read the search space --space {path}: {exc.strerror or exc}. Check the "
                           "path.") from None
    except yaml.YAMLError as exc:
        raise DreamerError(f"--space {path} is not valid YAML ({exc}). Write one `KEY: SPEC` entry per line, "
                           "e.g. `optim.lr: float:1e-5:1e-3:log`.") from None
    if not isinstance(data, dict) or not data:
        raise DreamerError(f"--space {path} holds no `KEY: SPEC` entries. Write one per line, e.g. "
                           "`optim.lr: float:1e-5:1e-3:log` and `batch_size: [8, 16, 32]`.")
    params = []
    for key, spec in data.items():
        where = f"{key!r} in {path}"
        if isinstance(spec, str):
            params.append(_parse_spec(str(key), spec, where))
        elif isinstance(spec, list):
            params.append(make_param(str(key), "choice", choices=spec, where=where))
        elif isinstance(spec, dict):
            unknown = set(spec) - {"type", "low", "high", "log", "step", "values"}
            if unknown:
                raise _bad_spec(where, f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; the fields are "
                                       "type, low, high, log, step and values")
            if spec.get("log") not in (None, True, False):
                raise _bad_spec(where, f"log must be true or false (got {spec['log']!r})")
            params.append(make_param(str(key), str(spec.get("type", "")), spec.get("low"), spec.get("high"),
                                     bool(spec.get("log")), spec.get("step"), spec.get("values") or (), where))
        else:
            raise _bad_spec(where, f"{spec!r} is neither a spec string, a list of choices nor a mapping")
    return params


@dataclass(frozen=True)
class SweepConfig:
    """Everything `dreamer sweep` needs (``train_args``: the `dreamer train` options after ``--``)."""

    out: str = "runs/sweep"
    params: tuple[str, ...] = ()  # --param specs
    space: str = ""  # a YAML search-space file
    train_args: tuple[str, ...] = ()
    trials: int = 20  # finished trials the study should hold
    study: str = ""  # default: the name of `out`
    storage: str = ""  # default: sqlite:///OUT/study.db
    sampler: str = "tpe"
    seed: int | None = None  # the sampler's seed
    pruner: str = "median"  # median[:STARTUP[:WARMUP]] | percentile:P[:STARTUP[:WARMUP]] | halving | hyperband | threshold:LIMIT | none
    metric: str = "eval/return"
    objective: str = "last"  # last | best | mean of the metric's logged values
    direction: str = "maximize"
    max_failures: int = 3  # a worker stops after this many failed trials in a row
    poll_seconds: float = 1.0  # how often a running trial's metrics are read
    stop_seconds: float = 60.0  # a stopped run's time to checkpoint before it is killed


FLAGS = {"trials": "--trials", "sampler": "--sampler", "pruner": "--pruner", "metric": "--metric",
         "objective": "--objective", "direction": "--direction", "max_failures": "--max-failures",
         "poll_seconds": "--poll-seconds"}


def search_space(cfg: SweepConfig, config_class: type | None = None) -> list[Param]:
    """The parameters of ``--param`` and ``--space``, each key once; with ``config_class`` (the
    train config) every key and value range is checked against it before any trial runs."""
    params = [parse_param(p) for p in cfg.params] + (load_space(cfg.space) if cfg.space else [])
    if not params:
        raise DreamerError(f"Give the search space: --param {SPEC_FORMS.split(', ')[0]} (repeatable) or --space "
                           "FILE.yaml, e.g. --param optim.lr=float:1e-5:1e-3:log.")
    keys = [p.key for p in params]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise DreamerError(f"The search space gives {', '.join(twice)} more than once (--param and --space "
                           "together count). Keep one range per key.")
    fixed = set(config_lib.parse_sets(_option_values(cfg.train_args, "--set")))
    both = sorted(fixed & set(keys))
    if both:
        raise DreamerError(f"{', '.join(both)} is both swept and fixed by --set among the train options. Drop the "
                           "--set after -- or the parameter.")
    if config_class is not None:
        for p in params:
            values = p.choices if p.kind == "choice" else (p.low, p.high)
            for value in values:
                try:
                    config_lib.apply_overrides(config_class(), {p.key: set_text(value)})
                except DreamerError as exc:
                    raise DreamerError(f"The search-space entry {p.spec()!r} does not fit `dreamer train`'s "
                                       f"config: {exc}") from None
    return params


def _option_values(args: Iterable[str], option: str) -> list[str]:
    """The values of ``option`` (``--set a=1`` or ``--set=a=1``) among command-line words."""
    args, out = list(args), []
    for i, word in enumerate(args):
        if word == option and i + 1 < len(args):
            out.append(args[i + 1])
        elif word.startswith(option + "="):
            out.append(word[len(option) + 1:])
    return out


def validate(cfg: SweepConfig) -> None:
    """Every problem of the options in one DreamerError (see ``config_lib.Problems``)."""
    p = config_lib.Problems("sweep", FLAGS)
    p.at_least("trials", cfg.trials, 0)
    p.one_of("sampler", cfg.sampler, SAMPLERS)
    p.require(cfg.pruner.partition(":")[0] in PRUNERS,
              f"--pruner must be one of {', '.join(PRUNERS)} (got {cfg.pruner!r}; e.g. median, median:5:1000, "
              "percentile:25, hyperband, threshold:100, none)")
    p.require(bool(cfg.metric), "--metric must name a metric of metrics.jsonl (e.g. eval/return)")
    p.one_of("objective", cfg.objective, OBJECTIVES)
    p.one_of("direction", cfg.direction, DIRECTIONS)
    p.at_least("max_failures", cfg.max_failures, 1)
    p.positive("poll_seconds", cfg.poll_seconds)
    p.at_least("stop_seconds", cfg.stop_seconds, 0)
    own = [w for w in cfg.train_args if w.split("=")[0] in OWN_TRAIN_OPTIONS]
    p.require(not own, f"the train options after -- cannot hold {', '.join(own)}: the sweep gives each trial its "
                       f"own run directory SWEEP_DIR/{TRIAL_PREFIX}NNNN")
    p.raise_any()


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError("optuna", "sweep", "`dreamer sweep`") from None
    return optuna


def make_sampler(optuna: Any, name: str, seed: int | None) -> Any:
    needs = {"cmaes": ("cmaes", "cmaes"), "gp": ("scipy", "scipy")}
    if name in needs and importlib.util.find_spec(needs[name][0]) is None:
        raise DreamerError(f"--sampler {name} needs the package {needs[name][0]}, which is not installed. Install "
                           f"it (pip install {needs[name][1]}) or use --sampler tpe.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the experimental-feature notes of some samplers
        return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed),
                "qmc": lambda: optuna.samplers.QMCSampler(seed=seed),
                "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
                "gp": lambda: optuna.samplers.GPSampler(seed=seed)}[name]()


def make_pruner(optuna: Any, spec: str, direction: str) -> Any:
    """``median[:STARTUP[:WARMUP]]`` (optuna's MedianPruner: STARTUP complete trials before any
    pruning, default 5; no pruning before env step WARMUP, default 0), ``percentile:P[:STARTUP[:WARMUP]]``
    (prune below the P-th percentile), ``halving`` (successive halving), ``hyperband``,
    ``threshold:LIMIT`` (prune once the metric is worse than LIMIT: below it when maximizing)
    or ``none``."""
    name, _, rest = spec.partition(":")
    fields = rest.split(":") if rest else []

    def numbers(count: int, kinds: tuple[type, ...], form: str) -> list[Any]:
        if len(fields) > count:
            raise DreamerError(f"--pruner {spec!r} has too many fields: write it as --pruner {form}.")
        try:
            return [kind(f) for kind, f in zip(kinds, fields)]
        except ValueError:
            raise DreamerError(f"--pruner {spec!r} has a field that is not a number: write it as --pruner "
                               f"{form}.") from None

    if name == "median":
        startup, warmup = numbers(2, (int, int), "median[:STARTUP_TRIALS[:WARMUP_STEPS]]") + [5, 0][len(fields):]
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "percentile":
        form = "percentile:P[:STARTUP_TRIALS[:WARMUP_STEPS]], e.g. percentile:25"
        if not fields:
            raise DreamerError(f"--pruner percentile needs the percentile: write it as --pruner {form}.")
        got = numbers(3, (float, int, int), form)
        percentile, startup, warmup = got + [5, 0][len(got) - 1:]
        if not 0 <= percentile <= 100:
            raise DreamerError(f"--pruner {spec!r}: the percentile must be in [0, 100] (got {percentile:g}).")
        return optuna.pruners.PercentilePruner(percentile, n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "threshold":
        form = "threshold:LIMIT (e.g. threshold:50: prune runs whose metric falls below 50)"
        if not fields:
            raise DreamerError(f"--pruner threshold needs the limit: write it as --pruner {form}.")
        (limit,) = numbers(1, (float,), form)
        side = {"lower": limit} if direction == "maximize" else {"upper": limit}
        return optuna.pruners.ThresholdPruner(**side)
    if fields:
        raise DreamerError(f"--pruner {name} takes no fields (got {spec!r}).")
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def storage_url(cfg: SweepConfig) -> str:
    return cfg.storage or f"sqlite:///{(Path(cfg.out) / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """A storage URL without its password (for printing and sweep.yaml)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(optuna: Any, url: str, attempts: int = 4) -> Any:
    """optuna's RDBStorage at ``url`` with heartbeats (a dead worker's trial becomes FAIL).

    Workers that start together on a new database race to create its tables; the losers see a
    database error and try again (``attempts`` times, a little later each time)."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    error: Exception | None = None
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeats are an experimental optuna feature
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                                  grace_period=GRACE_SECONDS)
        except Exception as exc:  # noqa: BLE001 - a bad URL, a missing driver, an unreachable server
            error = exc
            if type(exc).__name__ not in ("IntegrityError", "OperationalError"):
                break
            time.sleep(0.5 * (attempt + 1))
    raise DreamerError(
        f"optuna cannot open the study storage {shown_url(url)} ({type(error).__name__}: {error}). Give a database "
        "URL it can reach, e.g. --storage sqlite:///sweeps/study.db (a file) or "
        "postgresql://user:password@host/db (with its driver installed)."
    )


STUDY_ATTRS = ("space", "metric", "objective", "direction", "train_args")


def check_study(study: Any, recorded: dict[str, Any], url: str) -> None:
    """A study continued by this command must be the same sweep: refuse another space, metric,
    objective, direction or train options (its trials would not compare)."""
    stored = study.user_attrs
    if not stored:
        for key in STUDY_ATTRS:
            study.set_user_attr(key, recorded[key])
        return
    differ = [key for key in STUDY_ATTRS if stored.get(key) != recorded[key]]
    if differ:
        lines = "; ".join(f"{key}: the study has {stored.get(key)!r}, this command {recorded[key]!r}"
                          for key in differ)
        raise DreamerError(
            f"The study {study.study_name!r} in {shown_url(url)} was started with other settings ({lines}), so its "
            "trials would not compare with this command's. Repeat its settings to continue it, or start a new "
            "study with another --study name (or another SWEEP_DIR)."
        )


def check_sweep_dir(out: Path) -> None:
    """SWEEP_DIR: new, empty or a sweep directory; not a file, a run or a dataset."""
    if out.exists() and not out.is_dir():
        raise DreamerError(f"SWEEP_DIR {out} is a file. Choose a new directory for the sweep; nothing was changed.")
    if is_dataset_dir(out) or looks_like_run(out):
        what = "a dataset" if is_dataset_dir(out) else "a run directory"
        raise DreamerError(f"SWEEP_DIR {out} is {what}. A sweep directory holds one run per trial: choose a new "
                           "directory for it (e.g. runs/NAME-sweep); nothing was changed.")
    if out.is_dir():
        entries = visible_entries(out)
        ours = [e for e in entries if e in (SWEEP_FILE, SUMMARY, "study.db") or e.startswith(TRIAL_PREFIX)
                or e.endswith(".png")]
        if entries and not ours:
            raise DreamerError(f"SWEEP_DIR {out} exists and is not a sweep directory (it holds "
                               f"{', '.join(entries[:5])}). Choose a new or empty directory; nothing was changed.")
    check_writable(out, f"SWEEP_DIR {out}")


class TrialFailed(Exception):
    """A trial's run failed (the message says why); optuna records the trial as FAIL."""


class MetricTail:
    """The values of one metric that a running trial appends to its metrics.jsonl, read as they
    come (whole lines only; a value that is not a finite number is skipped)."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        self.offset, self.partial = 0, b""

    def read(self) -> list[tuple[int, float]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        found = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            value = record.get(self.key) if isinstance(record, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and isinstance(record.get("step"), (int, float)):
                found.append((int(record["step"]), float(value)))
        return found


def objective_value(values: list[float], objective: str, direction: str) -> float:
    """The trial's value from its logged metric values: the last, the best or their mean."""
    if objective == "last":
        return values[-1]
    if objective == "best":
        return max(values) if direction == "maximize" else min(values)
    return sum(values) / len(values)


def _stop(proc: subprocess.Popen, seconds: float) -> None:
    """SIGTERM (the run checkpoints and exits), then SIGKILL after ``seconds``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_trial(trial: Any, optuna: Any, cfg: SweepConfig, params: list[Param], command: list[str],
              log: Callable[[str], None]) -> float:
    """The objective optuna calls: sample, run `dreamer train` as a subprocess while reporting
    the metric to optuna, stop it when pruned; the trial's value (or TrialPruned / TrialFailed)."""
    values = {p.key: p.suggest(trial) for p in params}
    run_dir = Path(cfg.out) / f"{TRIAL_PREFIX}{trial.number:04d}"
    sets = [word for key, value in values.items() for word in ("--set", f"{key}={set_text(value)}")]
    args = ["train", "--out", str(run_dir), *cfg.train_args, *sets]
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("command", "dreamer " + shlex.join(args))
    if run_dir.is_dir() and visible_entries(run_dir):
        raise _failed(trial, run_dir, f"{run_dir} exists already (from a study in another storage?); trial "
                                      "directories are never reused. Use a new SWEEP_DIR for a new study.",
                      write=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Hidden while the run starts (a run directory must be new or empty), shown when it ends.
    stdout, stderr = run_dir / ".stdout.log", run_dir / ".stderr.log"
    tail = MetricTail(run_dir / METRICS, cfg.metric)
    curve: list[tuple[int, float]] = []
    shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
    log(f"trial {trial.number}: {shown} -> {run_dir}")
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen([*command, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            while True:
                finished = proc.poll() is not None
                for step, value in tail.read():
                    if not curve or step > curve[-1][0]:  # optuna takes one value per step
                        trial.report(value, step)
                        if not finished and trial.should_prune():
                            curve.append((step, value))
                            trial.set_user_attr("note", f"pruned at step {step} ({cfg.metric} {value:.4g})")
                            _stop(proc, cfg.stop_seconds)
                            raise optuna.TrialPruned(f"{cfg.metric} {value:.4g} at step {step}")
                    curve.append((step, value))
                if finished:
                    break
                time.sleep(cfg.poll_seconds)
        except KeyboardInterrupt:
            trial.set_user_attr("note", "interrupted (the sweep was stopped)")
            raise
        finally:
            _stop(proc, cfg.stop_seconds)
            for path in (stdout, stderr):
                path.replace(run_dir / path.name[1:])
    if proc.returncode != 0:
        raise _failed(trial, run_dir, f"`dreamer train` exited with code {proc.returncode}",
                      _tail(run_dir / stderr.name[1:]))
    if not curve:
        raise _failed(trial, run_dir, f"the run logged no {cfg.metric} in its {METRICS}: let `dreamer train` "
                                      "evaluate within its steps (e.g. --eval-every below --steps after --), or "
                                      "choose another --metric")
    return objective_value([v for _, v in curve], cfg.objective, cfg.direction)


def _failed(trial: Any, run_dir: Path, reason: str, tail: str = "", write: bool = True) -> TrialFailed:
    """Record why a trial failed (the study's note; with ``write`` also RUN/failure.txt) and
    return the exception."""
    last = tail.splitlines()[-1] if tail else ""
    trial.set_user_attr("note", f"{reason}: {last}" if last else reason)
    text = f"{reason}\ncommand: {trial.user_attrs.get('command', '')}\n"
    if tail:
        text += f"\nlast lines of stderr ({run_dir / 'stderr.log'}):\n{tail}\n"
    if write:
        atomic_write_bytes(run_dir / "failure.txt", text.encode())
    return TrialFailed(reason + (f"\n{tail}" if tail else ""))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else set_text(value)


@dataclass
class SweepResult:
    """What a worker leaves: the study's trials as rows, the best one, the files written."""

    study: str
    storage: str
    out: Path
    metric: str
    objective: str
    direction: str
    rows: list[dict[str, Any]]
    keys: list[str]
    files: list[Path]
    ran: int = 0  # trials this worker ran
    interrupted: bool = False

    @property
    def best(self) -> dict[str, Any] | None:
        complete = [r for r in self.rows if r["state"] == "COMPLETE" and r["value"] is not None]
        if not complete:
            return None
        pick = max if self.direction == "maximize" else min
        return pick(complete, key=lambda r: r["value"])

    def table(self) -> str:
        """The trials as a text table (what summary.csv holds)."""
        head = ["trial", "state", "value", *self.keys, "step", "run", "note"]
        body = [[str(r["number"]), r["state"], "-" if r["value"] is None else f"{r['value']:.4g}",
                 *("-" if k not in r["params"] else _short(r["params"][k]) for k in self.keys),
                 "-" if r["step"] is None else str(r["step"]), r["run_dir"], r["note"]] for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
        return "\n".join(("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]).rstrip()
                         for row in [head, *body])

    def summary_line(self) -> str:
        counts = {s: sum(r["state"] == s for r in self.rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        text = (f"study {self.study!r} ({shown_url(self.storage)}): {len(self.rows)} trials, "
                + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) + f"; this worker ran {self.ran}")
        best = self.best
        if best:
            sets = " ".join(f"--set {k}={set_text(v)}" for k, v in best["params"].items())
            text += (f"\nbest: trial {best['number']}, {self.metric} ({self.objective}) {best['value']:.4g}: "
                     f"{sets} -> {best['run_dir']}")
        if self.interrupted:
            text += "\n[interrupted; run the same command again to continue the study]"
        return text + "\nwrote " + ", ".join(map(str, self.files))


def run(cfg: SweepConfig, config_class: type | None = None, command: list[str] | None = None,
        log: Callable[[str], None] | None = None) -> SweepResult:
    """Run trials until the study holds ``cfg.trials`` finished ones, then write the summary.

    ``config_class``: the config class of `dreamer train` (the CLI passes it), to check the
    search space before any trial. ``command``: what runs `dreamer train` (default this Python's
    ``-m dreamer_core``; tests pass a stand-in). ``log``: where progress lines go (stderr)."""
    validate(cfg)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    command = command or [sys.executable, "-m", "dreamer_core"]
    params = search_space(cfg, config_class)
    out = Path(cfg.out)
    check_sweep_dir(out)
    optuna = _import_optuna()
    url = storage_url(cfg)
    name = cfg.study or out.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    sampler = make_sampler(optuna, cfg.sampler, cfg.seed)
    try:
        pruner = make_pruner(optuna, cfg.pruner, cfg.direction)
    except ValueError as exc:  # optuna's own checks, e.g. a negative number of startup trials
        raise DreamerError(f"--pruner {cfg.pruner!r}: {exc} Fix the pruner's fields.") from None
    recorded = {"space": sorted(p.spec() for p in params), "metric": cfg.metric, "objective": cfg.objective,
                "direction": cfg.direction, "train_args": list(cfg.train_args)}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this stage prints its own lines
    try:
        storage = open_storage(optuna, url)
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=cfg.direction, load_if_exists=True)
        check_study(study, recorded, url)
        if not study.get_trials(deepcopy=False) and any(e.startswith(TRIAL_PREFIX) for e in visible_entries(out)):
            raise DreamerError(
                f"{out} holds trial directories, but the study {name!r} in {shown_url(url)} has no trials, so those "
                "runs belong to another study. Pass the --storage and --study they were run with to continue it, "
                "or choose a new SWEEP_DIR."
            )
        atomic_write_bytes(out / SWEEP_FILE, yaml.safe_dump(
            {"study": name, "storage": shown_url(url), **recorded}, sort_keys=False).encode())
        ran, failures, interrupted = _optimize(optuna, study, cfg, params, command, log)
        result = summarize(optuna, study, cfg, url, params, ran, interrupted)
    finally:
        optuna.logging.set_verbosity(verbosity)
    if failures >= cfg.max_failures:
        last = next(r for r in reversed(result.rows) if r["state"] == "FAIL")
        raise DreamerError(
            f"The last {failures} trials failed, so this worker stopped (--max-failures {cfg.max_failures}). The "
            f"last one: {last['note']}. See {Path(last['run_dir']) / 'failure.txt'} and its stderr.log; fix the "
            f"train options or the search space, then run the same command again. The summary is in "
            f"{out / SUMMARY}."
        )
    return result


def _finished(optuna: Any, study: Any) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _optimize(optuna: Any, study: Any, cfg: SweepConfig, params: list[Param], command: list[str],
              log: Callable[[str], None]) -> tuple[int, int, bool]:
    """Run trials (optuna's optimize loop: heartbeats, stale trials) until the study holds
    ``cfg.trials`` finished ones or too many fail in a row; (trials run, failures in a row,
    interrupted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    done = _finished(optuna, study)
    if done >= cfg.trials:
        log(f"the study {study.study_name!r} holds {done} finished trials (--trials {cfg.trials}): nothing to run")
        return 0, 0, False
    counts = {"ran": 0, "failures": 0}

    def after_trial(study: Any, trial: Any) -> None:
        counts["ran"] += 1
        state = trial.state.name
        counts["failures"] = counts["failures"] + 1 if state == "FAIL" else 0
        value = f": {cfg.metric} {trial.value:.4g}" if state == "COMPLETE" and trial.value is not None else ""
        note = trial.user_attrs.get("note", "")
        log(f"trial {trial.number} {state.lower()}{value}{'; ' + note if note else ''}")
        if _finished(optuna, study) >= cfg.trials or counts["failures"] >= cfg.max_failures:
            study.stop()

    def objective(trial: Any) -> float:
        return run_trial(trial, optuna, cfg, params, command, log)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # stop the running trial's run and write the summary, as for Ctrl-C

    try:
        previous, installed = signal.signal(signal.SIGTERM, on_sigterm), True
    except ValueError:  # not the main thread: leave signals alone
        previous, installed = None, False
    try:
        study.optimize(objective, callbacks=[after_trial], catch=(TrialFailed,), gc_after_trial=False)
    except KeyboardInterrupt:
        log("interrupted: the running trial was stopped (recorded as FAIL); run the same command to continue")
        return counts["ran"] + 1, 0, True
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return counts["ran"], counts["failures"], False


def summarize(optuna: Any, study: Any, cfg: SweepConfig, url: str, params: list[Param], ran: int = 0,
              interrupted: bool = False) -> SweepResult:
    """The study's trials as rows, written to SWEEP_DIR/summary.csv, and its plots."""
    out = Path(cfg.out)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    keys = [p.key for p in params]
    rows = []
    for t in trials:
        steps = t.intermediate_values
        rows.append({"number": t.number, "state": t.state.name, "value": t.value if t.values else None,
                     "params": dict(t.params), "step": max(steps) if steps else None,
                     "run_dir": t.user_attrs.get("run_dir", ""), "note": t.user_attrs.get("note", "")})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "state", "value", *keys, "step", "run_dir", "note"])
    for r in rows:
        writer.writerow([r["number"], r["state"], "" if r["value"] is None else repr(r["value"]),
                         *(set_text(r["params"][k]) if k in r["params"] else "" for k in keys),
                         "" if r["step"] is None else r["step"], r["run_dir"], r["note"]])
    atomic_write_bytes(out / SUMMARY, buffer.getvalue().encode())
    result = SweepResult(study.study_name, url, out, cfg.metric, cfg.objective, cfg.direction, rows, keys,
                         [out / SUMMARY], ran, interrupted)
    result.files += _plots(optuna, study, trials, cfg, out)
    return result


def _plots(optuna: Any, study: Any, trials: list[Any], cfg: SweepConfig, out: Path) -> list[Path]:
    """history.png, curves.png and (with enough complete trials) importance.png."""
    shown = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and t.values]
    if not shown:
        return []
    label = f"{cfg.metric} ({cfg.objective})"
    files = [viz.plot_sweep_history([t.number for t in shown], [t.value for t in shown],
                                    [t.state.name == "PRUNED" for t in shown], cfg.direction == "maximize",
                                    out / "history.png", f"{study.study_name}: {label}, {cfg.direction}")]
    curves = []
    for t in trials:
        if t.intermediate_values:
            steps, values = np.array(sorted(t.intermediate_values.items()), dtype=float).T
            state = t.state.name
            note = {"PRUNED": " (pruned)", "FAIL": " (failed)", "RUNNING": " (running)"}.get(state, "")
            curves.append(viz.Curve(steps, values, t.number, f"trial {t.number}{note}", dashed=state != "COMPLETE"))
    panel = viz.CurvePanel(f"{cfg.metric} of each trial", "env steps", curves, legend=len(curves) <= 12)
    files.append(viz.plot_curves([panel], out / "curves.png", study.study_name))
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if len(complete) >= MIN_IMPORTANCE_TRIALS and len(complete[-1].params) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError, ImportError):  # e.g. trials that do not share their parameters, or
            # an older optuna whose default evaluator needs scikit-learn
            importances = {}
        if importances:
            files.append(viz.plot_importances(list(importances), list(importances.values()),
                                              out / "importance.png", f"{study.study_name}: what moves {label}"))
    return files
