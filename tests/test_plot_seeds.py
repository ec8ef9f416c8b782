"""`dreamer plot --group`: runs whose configs differ only in the seed become one line, the mean
over seeds with a 95% percentile bootstrap confidence band, checked against a plain numpy
reference on synthetic metrics.jsonl files; the one-line-per-run plot stays the default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from dreamer_core.stages import plot

STEPS = np.arange(0, 1001, 100)


def write_run(run, seed, lr, eval_returns, episode_steps, episode_returns, config=True):
    """A run directory as `dreamer train` leaves it, as far as `dreamer plot` reads it: the
    metrics and (``config``) the stored config in the layout of dreamer-core 0.3.0."""
    run.mkdir(parents=True)
    records = [{"step": int(s), "eval/return": float(r), "eval/return_std": 1.0} for s, r in zip(STEPS, eval_returns)]
    records += [{"step": int(s), "train/return": float(r)} for s, r in zip(episode_steps, episode_returns)]
    records.sort(key=lambda r: r["step"])
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config:
        stored = {"out": str(run), "seed": seed, "steps": 1000, "threads": 1, "eval_mode": "greedy",
                  "env": {"id": "CartPole-v1"}, "optim": {"lr": lr, "eps": 1e-8}}
        (run / "train_config.yaml").write_text(yaml.safe_dump({"stage": "train", "config": stored}))


@pytest.fixture
def seeds(tmp_path):
    """Two settings (optim.lr 1e-3: 4 seeds, 3e-4: 3 seeds) and a run without a config. Each
    seed logs its evaluations at the same steps and its training episodes at its own steps."""
    rng = np.random.default_rng(123)
    groups = {"fast": (1e-3, 4, 50.0), "slow": (3e-4, 3, 20.0)}
    runs = {}
    for name, (lr, count, scale) in groups.items():
        runs[name] = []
        for seed in range(count):
            run = tmp_path / f"{name}-s{seed}"
            episodes = np.sort(rng.choice(np.arange(5, 1000), size=40, replace=False))
            write_run(run, seed, lr, scale * STEPS / 1000 + rng.normal(0, 5, len(STEPS)), episodes,
                      rng.normal(scale, 5, len(episodes)))
            runs[name].append(run)
    lone = tmp_path / "lone"
    write_run(lone, 0, 1e-3, STEPS / 10, [10, 500], [1.0, 2.0], config=False)
    return runs, lone


def reference_band(values: np.ndarray, samples: int = 2000, seed: int = 0):
    """Mean and 95% percentile bootstrap interval, one resample at a time."""
    n = len(values)
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    means = np.array([values[d].mean(axis=0) for d in draws])
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return values.mean(axis=0), low, high


def test_runs_that_differ_only_in_the_seed_form_a_group(seeds):
    runs, lone = seeds
    order = [*runs["fast"][:2], lone, *runs["slow"], *runs["fast"][2:]]
    groups = plot.group_seeds(order)
    assert groups == [runs["fast"], [lone], runs["slow"]]
    assert plot.group_labels(groups) == ["optim.lr=0.001", "lone", "optim.lr=0.0003"]
    assert plot.group_labels([runs["fast"]]) == ["fast-s"]  # one setting: the runs' common name


def test_the_band_is_the_bootstrap_interval_of_the_mean_over_seeds(seeds):
    runs, lone = seeds
    panels = plot.build_panels([*runs["fast"], *runs["slow"], lone], group=True)
    assert [p.title for p in panels] == ["Evaluation return (greedy actions)", "Training episode return (sampled actions)"]
    evaluation, training = panels
    assert [c.label for c in evaluation.curves] == ["optim.lr=0.001 (mean of 4 seeds, 95% CI)",
                                                    "optim.lr=0.0003 (mean of 3 seeds, 95% CI)", "lone"]
    for curve, name in zip(evaluation.curves[:2], ("fast", "slow")):
        values = np.stack([plot.series(plot.read_metrics(r), "eval/return")[1] for r in runs[name]])
        mean, low, high = reference_band(values)
        np.testing.assert_array_equal(curve.x, STEPS)
        np.testing.assert_allclose(curve.y, mean, rtol=1e-12)
        np.testing.assert_allclose(curve.lower, low, rtol=1e-12)
        np.testing.assert_allclose(curve.upper, high, rtol=1e-12)
        assert np.all(curve.lower <= curve.y) and np.all(curve.y <= curve.upper) and np.all(curve.upper > curve.lower)
        assert curve.band is None and curve.raw is None
    alone = evaluation.curves[2]
    np.testing.assert_array_equal(alone.y, STEPS / 10)
    assert alone.lower is None and np.all(alone.band == 1.0)  # a lone run keeps its std band

    # Training episodes end at each seed's own steps: smoothed per run, then interpolated onto
    # the steps any seed logged inside the range all of them cover.
    curve = training.curves[0]
    lines = [plot.series(plot.read_metrics(r), "train/return") for r in runs["fast"]]
    lo, hi = max(x.min() for x, _ in lines), min(x.max() for x, _ in lines)
    grid = np.unique(np.concatenate([x for x, _ in lines]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    values = np.stack([np.interp(grid, x, np.convolve(y, np.ones(20))[:len(y)] / np.minimum(np.arange(1, len(y) + 1), 20))
                       for x, y in lines])
    mean, low, high = reference_band(values)
    np.testing.assert_allclose(curve.x, grid)
    np.testing.assert_allclose(curve.y, mean, rtol=1e-12)
    np.testing.assert_allclose(curve.lower, low, rtol=1e-12)
    np.testing.assert_allclose(curve.upper, high, rtol=1e-12)


def test_bootstrap_mean_edge_cases():
    same = np.tile(np.array([[1.0, 2.0, 3.0]]), (5, 1))
    mean, low, high = plot.bootstrap_mean(same)
    np.testing.assert_allclose([mean, low, high], [same[0]] * 3)
    # Many seeds: the interval approaches mean +- 1.96 standard errors.
    values = np.random.default_rng(0).normal(10.0, 2.0, (400, 1))
    mean, low, high = plot.bootstrap_mean(values)
    se = values.std() / np.sqrt(len(values))
    assert abs((high - low)[0] / (2 * 1.96 * se) - 1) < 0.1
    assert plot.align([(np.array([0, 10]), np.array([1.0, 2.0])), (np.array([20, 30]), np.array([1.0, 2.0]))]) is None


def test_group_writes_a_png_and_one_line_per_run_stays_the_default(seeds, tmp_path):
    runs, lone = seeds
    everything = [*runs["fast"], *runs["slow"], lone]
    out = plot.plot_runs(everything, tmp_path / "grouped.png", group=True, title="seeds")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1200, 360)
    per_run = plot.build_panels(everything)
    assert [c.label for c in per_run[0].curves] == [r.name for r in everything]
    assert all(c.lower is None for p in per_run for c in p.curves)
    assert plot.plot_runs(everything, tmp_path / "lines.png").exists()


def test_cli_group_option(seeds, tmp_path):
    """`dreamer plot --group` once the option is wired into the CLI."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from dreamer_core.cli import app

    command = get_command(app).commands["plot"]
    if "group" not in {p.name for p in command.params}:
        pytest.skip("dreamer plot has no --group option yet")
    runs, _ = seeds
    out = tmp_path / "cli.png"
    result = CliRunner().invoke(app, ["plot", *map(str, runs["fast"]), "--group", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists()
