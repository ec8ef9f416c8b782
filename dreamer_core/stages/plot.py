"""Learning curves from a run's metrics (`dreamer plot RUN [RUN...]`).

    dreamer plot runs/cartpole-online                      # -> runs/cartpole-online/curve.png
    dreamer plot runs/seed0 runs/seed1 runs/seed2 --out cartpole.png

Reads ``metrics.jsonl`` (online runs: step = env steps; stage 02: step = updates) and
``behavior_metrics.jsonl`` (stage 03), picks the panels whose metrics exist and draws one line
per run, so several seeds overlay in one figure. ``--key`` plots chosen metrics instead.
An online run's evaluation return (greedy or sampled actions, ``--eval-mode``, as its
``train_config.yaml`` says) and its training-episode return (sampled actions: what the DreamerV3
paper plots) are drawn side by side.

This module reads the metrics and turns them into lines (``series``, ``smooth``); drawing
the figure is ``viz.plot_curves``.

Imports: logging (read_metrics), errors, runs (file names), viz, the stage kit (stages.outputs:
the --out check). No other stage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from dreamer_core import viz
from dreamer_core.errors import DreamerError
from dreamer_core.logging import read_metrics
from dreamer_core.runs import ONLINE_CONFIG
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
              title: str | None = None) -> Path:
    """Draw the curves of one or more runs into a PNG; returns its path.

    ``out`` defaults to ``RUN/curve.png`` of the first run. Raises DreamerError when a run has
    no metrics or none of the asked-for keys was logged.
    """
    runs = [Path(r) for r in runs]
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
    out = check_output_file(out if out is not None else runs[0] / "curve.png", (".png", ".pdf", ".svg"))
    return viz.plot_curves([_curves(panel, runs, data) for panel in drawn], out, title)


def eval_mode(run: Path) -> str | None:
    """How a `dreamer train` run's evaluation episodes chose actions: greedy or sample (greedy in
    runs from before ``eval_mode`` existed); None for other runs or an unreadable config."""
    try:
        stored = yaml.safe_load((run / ONLINE_CONFIG).read_text())["config"]
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return None
    mode = stored.get("eval_mode", "greedy") if isinstance(stored, dict) else None
    return "greedy" if mode == "mode" else mode


def _curves(panel: tuple, runs: list[Path], data: dict[Path, dict[str, list[dict]]]) -> viz.CurvePanel:
    """The lines of one panel: one colour per run, dashed for its second key; the training
    return smoothed over 20 episodes (raw points faint behind it), the evaluation return with
    a band of one standard deviation."""
    panel_title, xlabel, name, panel_keys = panel
    curves = []
    for i, run in enumerate(runs):
        for j, key in enumerate(panel_keys):
            x, y = series(data[run][name], key)
            if not len(x):
                continue
            label = run.name if len(panel_keys) == 1 else f"{run.name} {key}"
            raw = band = None
            if key == "train/return":
                raw, y = y, smooth(y, 20)
            if key == "eval/return":
                _, std = series(data[run][name], "eval/return_std")
                if len(std) == len(y):
                    band = std
            curves.append(viz.Curve(x, y, i, label, dashed=j > 0, raw=raw, band=band))
    return viz.CurvePanel(panel_title, xlabel, curves, legend=len(runs) > 1 or len(panel_keys) > 1)
