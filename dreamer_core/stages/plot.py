"""Learning curves from a run's metrics (`dreamer plot RUN [RUN...]`).

    dreamer plot runs/cartpole-online                      # -> runs/cartpole-online/curve.png
    dreamer plot runs/seed0 runs/seed1 runs/seed2 --out cartpole.png            # one line per run
    dreamer plot runs/lr3-s* runs/lr4-s* --group --out lr.png   # mean and 95% CI per setting

Reads ``metrics.jsonl`` (online runs: step = env steps; stage 02: step = updates) and
``behavior_metrics.jsonl`` (stage 03), picks the panels whose metrics exist and draws one line
per run, so several seeds overlay in one figure. ``--key`` plots chosen metrics instead.
An online run's evaluation return (greedy or sampled actions, ``--eval-mode``, as its
config says) and its training-episode return (sampled actions: what the DreamerV3
paper plots) are drawn side by side.

``--group`` (``group=True``) draws one line per *setting* instead: runs whose stored configs
(``runs.read_config``: each command's config in the run) are equal once the keys in
``NOT_THE_SETTING`` (seed, run directory, length, threads, device, cadences) are left out are
seeds of one setting. Such a group is drawn as the mean over its runs with a 95% percentile
bootstrap confidence interval of that mean (``bootstrap_mean``: the runs resampled with
replacement ``BOOTSTRAP_SAMPLES`` times); a run without a readable config, or alone in its
setting, keeps its own line. Runs logged at different steps (e.g. training episodes end at
different env steps) are first put on common steps where all of them have data, by linear
interpolation (``align``); the training return is smoothed per run before.

This module reads the metrics and turns them into lines (``series``, ``smooth``, ``align``,
``bootstrap_mean``); drawing the figure is ``viz.plot_curves``.

Imports: logging (read_metrics), errors, runs (read_config: a run's stored configs), viz, the
stage kit (stages.outputs: the --out check). No other stage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dreamer_core import viz
from dreamer_core.errors import DreamerError
from dreamer_core.logging import read_metrics
from dreamer_core.runs import read_config
from dreamer_core.stages.outputs import check_output_file

# (title, x label, metrics file, keys); a panel is drawn when one of its keys was logged.
PANELS = [
    ("Evaluation return", "env steps", "metrics.jsonl", ["eval/return"]),  # + the runs' eval modes
    ("Training episode return (sampled actions)", "env steps", "metrics.jsonl", ["train/return"]),
    ("World-model loss", "steps", "metrics.jsonl", ["wm/loss", "val/wm/loss"]),
    ("Open-loop MSE@15 / repeat-last", "updates", "metrics.jsonl", ["val/wm/openloop_ratio_last"]),
    ("Imagined return", "steps", "metrics.jsonl", ["imag/return"]),
    ("Actor entropy", "steps", "metrics.jsonl", ["actor/entropy"]),
    ("Imagined return (stage 03)", "behavior updates", "behavior_metrics.jsonl", ["imag/return"]),
    ("Actor entropy (stage 03)", "behavior updates", "behavior_metrics.jsonl", ["actor/entropy"]),
]
# Top-level config keys that do not change what a run learns: runs equal in everything else
# are seeds of one setting (--group).
NOT_THE_SETTING = ("seed", "out", "run", "steps", "updates", "threads", "device", "backend",
                   "checkpoint_seconds", "checkpoint_every", "shard_seconds", "log_every")
COMMANDS = ("train", "train-world-model", "train-behavior")  # the commands whose configs make a setting
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
MAX_POINTS = 400  # common steps of runs logged at different steps (align)


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key`` where it was logged with a finite number."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and np.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_runs(runs: list[Path | str], out: Path | str | None = None, keys: list[str] | None = None,
              title: str | None = None, group: bool = False) -> Path:
    """Draw the curves of one or more runs into a PNG; returns its path.

    ``out`` defaults to ``RUN/curve.png`` of the first run. ``group``: one line per setting,
    the mean over its seeds with a 95% bootstrap confidence band (see the module docstring).
    Raises DreamerError when a run has no metrics or none of the asked-for keys was logged.
    """
    runs = [Path(r) for r in runs]
    panels = build_panels(runs, keys, group)
    out = check_output_file(out if out is not None else runs[0] / "curve.png", (".png", ".pdf", ".svg"))
    return viz.plot_curves(panels, out, title)


def build_panels(runs: list[Path], keys: list[str] | None = None, group: bool = False) -> list[viz.CurvePanel]:
    """The panels ``plot_runs`` draws (the lines as numbers, for a notebook or a test)."""
    if not runs:
        raise DreamerError("Give at least one run directory: `dreamer plot RUN [RUN...]`.")
    data = {}
    for run in runs:
        files = {name: read_metrics(run, name) for name in ("metrics.jsonl", "behavior_metrics.jsonl")}
        if not any(files.values()):
            raise DreamerError(
                f"{run} has no metrics.jsonl or behavior_metrics.jsonl, so there is nothing to plot. Pass a run "
                "directory written by `dreamer train`, `train-world-model` or `train-behavior`."
            )
        data[run] = files
    if keys:
        panels = [(k, "step", "metrics.jsonl", [k]) for k in keys]
    else:
        panels = PANELS
    drawn = [p for p in panels if any(len(series(data[r][p[2]], k)[0]) for r in runs for k in p[3])]
    if not drawn:
        logged = sorted({k for r in runs for recs in data[r].values() for rec in recs for k in rec} - {"step"})
        raise DreamerError(
            f"None of the metrics {', '.join(k for p in panels for k in p[3])} was logged in {', '.join(map(str, runs))}. "
            f"Logged keys include: {', '.join(logged[:12])}. Choose some with --key."
        )
    modes = sorted({mode for mode in map(eval_mode, runs) if mode})
    if modes and not keys:
        drawn = [(f"{p[0]} ({' / '.join(modes)} actions)", *p[1:]) if p[3] == ["eval/return"] else p for p in drawn]
    groups = group_seeds(runs) if group else [[run] for run in runs]
    labels = group_labels(groups)
    return [_curves(panel, groups, labels, data) for panel in drawn]


def _stored_config(run: Path, command: str) -> dict[str, Any] | None:
    """The config ``command`` ran with in ``run``; None when it has none or it is unreadable."""
    try:
        stored = read_config(run, command)
    except (DreamerError, OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return stored if isinstance(stored, dict) else None


def eval_mode(run: Path) -> str | None:
    """How a `dreamer train` run's evaluation episodes chose actions: greedy or sample (greedy in
    runs from before ``eval_mode`` existed); None for other runs or an unreadable config."""
    stored = _stored_config(run, "train")
    if stored is None:
        return None
    mode = stored.get("eval_mode", "greedy")
    return "greedy" if mode == "mode" else mode


def setting(run: Path) -> dict[str, Any] | None:
    """What a run's stored configs say about its setting (``NOT_THE_SETTING`` left out), by
    command; None when the run has no readable config."""
    found = {}
    for command in COMMANDS:
        stored = _stored_config(run, command)
        if stored is not None:
            found[command] = {k: v for k, v in stored.items() if k not in NOT_THE_SETTING}
    return found or None


def group_seeds(runs: list[Path]) -> list[list[Path]]:
    """Runs of equal settings together (in the order they first appear); a run without a
    readable config is a group of its own."""
    groups: dict[str, list[Path]] = {}
    for i, run in enumerate(runs):
        found = setting(run)
        key = json.dumps(found, sort_keys=True, default=str) if found else f"#{i}"
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for name, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{name}" if prefix else name).items()}


def group_labels(groups: list[list[Path]]) -> list[str]:
    """A legend label per group: a lone run's name; for seeds, the config keys in which the
    groups differ (up to three, e.g. ``optim.lr=0.0003``), else the runs' common name."""
    flat = []
    for runs in groups:
        found = setting(runs[0]) if len(runs) > 1 else None
        flat.append({k: v for stored in found.values() for k, v in _flat(stored).items()} if found else None)
    known = [f for f in flat if f is not None]
    keys = sorted({k for f in known for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in known}) > 1]
    labels = []
    for runs, f in zip(groups, flat):
        if f is None:
            labels.append(runs[0].name)
        elif differ and len(differ) <= 3:
            labels.append(", ".join(f"{k}={f.get(k)}" for k in differ))
        else:
            common = os.path.commonprefix([r.name for r in runs]).rstrip("-_. ")
            labels.append(common or runs[0].name)
    return labels


def align(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Several runs' ``(steps, values)`` on common steps: ``(x [P], Y [n, P])``. Runs logged at
    the same steps are stacked as they are; otherwise each is linearly interpolated (values at
    a repeated step averaged first) onto the steps any of them logged inside the range all of
    them cover (at most ``MAX_POINTS``, else evenly spaced). None when the ranges do not overlap."""
    xs = [np.asarray(x, float) for x, _ in curves]
    if all(x.shape == xs[0].shape and np.array_equal(x, xs[0]) for x in xs):
        return xs[0], np.stack([np.asarray(y, float) for _, y in curves])
    lo, hi = max(x.min() for x in xs), min(x.max() for x in xs)
    if lo > hi:
        return None
    grid = np.unique(np.concatenate(xs))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if len(grid) > MAX_POINTS:
        grid = np.linspace(lo, hi, MAX_POINTS)
    rows = []
    for x, y in zip(xs, (np.asarray(y, float) for _, y in curves)):
        steps, where = np.unique(x, return_inverse=True)
        mean = np.bincount(where, weights=y) / np.bincount(where)
        rows.append(np.interp(grid, steps, mean))
    return grid, np.stack(rows)


def bootstrap_mean(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean over runs and its percentile bootstrap confidence interval.

    The n runs (rows of ``values``) are resampled with replacement ``samples`` times (the
    draws: ``numpy.random.default_rng(seed).integers(0, n, (samples, n))``, whole curves at
    once); the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles
    (numpy's linear interpolation) of the resamples' means, at each step.

    Shapes:
        values: ``[n, P]``      returns: mean, lower, upper, each ``[P]``
    """
    values = np.asarray(values, float)
    n = len(values)
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    counts = np.zeros((samples, n))
    np.add.at(counts, (np.arange(samples)[:, None], draws), 1.0)
    means = counts @ values / n  # [samples, P]: each resample's mean
    alpha = (1.0 - confidence) / 2
    lower, upper = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return values.mean(0), lower, upper


def _curves(panel: tuple, groups: list[list[Path]], labels: list[str],
            data: dict[Path, dict[str, list[dict]]]) -> viz.CurvePanel:
    """The lines of one panel: one colour per group (a run, or the seeds of a setting), dashed
    for its second key; the training return smoothed over 20 episodes (a run's raw points faint
    behind it), a run's evaluation return with a band of one standard deviation, a group's
    mean with its bootstrap confidence band."""
    panel_title, xlabel, name, panel_keys = panel
    curves = []
    for i, (runs, label) in enumerate(zip(groups, labels)):
        for j, key in enumerate(panel_keys):
            named = label if len(panel_keys) == 1 else f"{label} {key}"
            lines = [(run, *series(data[run][name], key)) for run in runs]
            lines = [(run, x, y) for run, x, y in lines if len(x)]
            aligned = align([(x, smooth(y, 20) if key == "train/return" else y) for _, x, y in lines]) \
                if len(lines) > 1 else None
            if aligned is None:
                for run, x, y in lines:
                    curves.append(_run_curve(run, x, y, data[run][name], key, i,
                                             named if len(runs) == 1 else f"{run.name}", j > 0))
                continue
            x, values = aligned
            mean, lower, upper = bootstrap_mean(values)
            curves.append(viz.Curve(x, mean, i, f"{named} (mean of {len(lines)} seeds, {CONFIDENCE:.0%} CI)",
                                    dashed=j > 0, lower=lower, upper=upper))
    legend = len(groups) > 1 or len(panel_keys) > 1 or any(c.lower is not None for c in curves)
    return viz.CurvePanel(panel_title, xlabel, curves, legend=legend)


def _run_curve(run: Path, x: np.ndarray, y: np.ndarray, records: list[dict], key: str, color: int, label: str,
               dashed: bool) -> viz.Curve:
    """One run's line (the training return smoothed, the evaluation return's std as a band)."""
    raw = band = None
    if key == "train/return":
        raw, y = y, smooth(y, 20)
    if key == "eval/return":
        _, std = series(records, "eval/return_std")
        if len(std) == len(y):
            band = std
    return viz.Curve(x, y, color, label, dashed=dashed, raw=raw, band=band)
