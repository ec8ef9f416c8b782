"""Stage `dreamer plot`: learning curves from a run's metrics files, panels chosen by what was
logged, several runs overlaid, clear errors for runs or keys with nothing to draw."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dreamer_core.cli import app
from dreamer_core.errors import DreamerError
from dreamer_core.stages import online
from dreamer_core.stages.plot import plot_runs, series, smooth
from tests.stages.test_online import small_config

runner = CliRunner()


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def write_metrics(run, steps=40):
    run.mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(steps):
            f.write(json.dumps({"step": 10 * s, "train/return": float(s % 7), "wm/loss": 1.0 / (s + 1),
                                "eval/return": float(s), "eval/return_std": 0.5}) + "\n")
    with open(run / "behavior_metrics.jsonl", "w") as f:
        for s in range(5):
            f.write(json.dumps({"step": s, "imag/return": 0.1 * s}) + "\n")


def test_dreamer_plot_draws_the_logged_panels(tmp_path):
    """Metrics written by hand: 4 default panels have data (eval return, training return,
    world-model loss, stage 03's imagined return), drawn 2 x 2; --key picks others."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_metrics(a)
    write_metrics(b)
    result = runner.invoke(app, ["plot", str(a), str(b), "--out", str(tmp_path / "both.png"), "--title", "two"])
    assert result.exit_code == 0, result.output
    assert "both.png" in result.output and png_size(tmp_path / "both.png") == (1200, 720)
    assert png_size(plot_runs([a])) == (1200, 720) and (a / "curve.png").exists()
    assert png_size(plot_runs([a], tmp_path / "key.png", keys=["wm/loss"])) == (600, 360)
    with pytest.raises(DreamerError, match="--key"):
        plot_runs([a], keys=["no/such_key"])
    with pytest.raises(DreamerError, match="nothing to plot"):
        plot_runs([tmp_path / "missing"])
    with pytest.raises(DreamerError, match="at least one run"):
        plot_runs([])


def test_series_skips_missing_and_non_finite_values():
    records = [{"step": 0, "a": 1.0}, {"step": 5}, {"step": 10, "a": float("nan")}, {"step": 15, "a": 2}]
    steps, values = series(records, "a")
    np.testing.assert_array_equal(steps, [0, 15])
    np.testing.assert_array_equal(values, [1.0, 2.0])


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(smooth(np.array([1.0, 3.0, 5.0, 7.0]), 3), [1.0, 2.0, 3.0, 5.0])
    y = np.array([4.0, 2.0])
    assert smooth(y, 1) is y


def test_plot_overlays_runs_and_refuses_bad_input(tmp_path):
    run = tmp_path / "run"
    online.run(small_config(run, steps=150, eval_every=50), progress=False)
    out = plot_runs([run, run], tmp_path / "two.png")
    assert out.stat().st_size > 1000
    with pytest.raises(DreamerError, match="nothing to plot"):
        plot_runs([tmp_path / "missing"])
    with pytest.raises(DreamerError, match="--key"):
        plot_runs([run], keys=["no/such_key"])
    np.testing.assert_allclose(smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
