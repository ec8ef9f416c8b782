"""The notebooks: stored without outputs and in sync with their generator, and every cell runs
headless (nbclient, kernel ``python3`` on this interpreter, working directory notebooks/ so
that ``demo.py`` beside them imports) against two tiny runs with image and vector observations
and an agent, passed in through DREAMER_RUN / DREAMER_DATASET: one built stage by stage, one
from ``dreamer train``. After the last cell, ``PANEL_CHECK`` goes over every figure the
notebook drew (Agg backend: none is closed) and lists the panels with nothing in them: no
line or point with a finite value, no image, bar or filled area (an ``axvline`` alone does
not count). Such a panel fails the test; a panel holding only a note (text) is reported.
``demo.demo_run``, which builds the notebooks' own small run when none is given, is tested
here on a toy env."""

import importlib
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from typer.testing import CliRunner

from dreamer_core.cli import app
from dreamer_core.data.dataset import Dataset
from dreamer_core.errors import DreamerError
from dreamer_core.runs import load_agent

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_dataset.ipynb", "02_world_model_dreams.ipynb", "03_behavior_in_imagination.ipynb"]
# The least number of figures each notebook draws on the tiny runs (a check over no figure
# would pass vacuously).
MIN_FIGURES = {"01_dataset.ipynb": 3, "02_world_model_dreams.ipynb": 8, "03_behavior_in_imagination.ipynb": 7}
runner = CliRunner()

# Run in the kernel after the notebook's own cells; prints one JSON line.
PANEL_CHECK = '''\
import json as _json

import matplotlib.pyplot as _plt
import numpy as _np


def _finite_points(xy):
    xy = _np.ma.filled(_np.ma.asarray(xy, dtype=float), _np.nan).reshape(-1, 2)
    return bool(_np.isfinite(xy).all(1).any())


def _has_data(ax):
    """Lines in data coordinates with a finite point, points, filled areas, images or bars."""
    for line in ax.lines:
        if line.get_transform() == ax.transData and _finite_points(_np.column_stack(
                [_np.ravel(line.get_xdata()).astype(float), _np.ravel(line.get_ydata()).astype(float)])):
            return True
    for collection in ax.collections:
        offsets = collection.get_offsets()
        if len(offsets) and _finite_points(offsets):
            return True
        if not len(offsets) and len(collection.get_paths()):
            return True
    if ax.images:
        return True
    for patch in ax.patches:
        height = getattr(patch, "get_height", lambda: 1.0)()
        if _np.isfinite(height) and height != 0:
            return True
    return False


def _panel_report():
    empty, notes, panels = [], [], 0
    for number in _plt.get_fignums():
        figure = _plt.figure(number)
        title = figure.get_suptitle()
        for ax in figure.axes:
            if not ax.get_visible() or getattr(ax, "_colorbar", None) is not None:
                continue
            panels += 1
            name = f"figure {number} {title!r}: panel {ax.get_title()!r}"
            if _has_data(ax):
                continue
            (notes if any(t.get_text().strip() for t in ax.texts) else empty).append(name)
    return {"figures": len(_plt.get_fignums()), "panels": panels, "empty": empty, "notes": notes}


print("PANELS " + _json.dumps(_panel_report()))
'''


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


def notebook_module(name):
    """Import ``notebooks/<name>.py`` (the folder is not a package, and not installed)."""
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(NOTEBOOKS))


@pytest.fixture(scope="module", params=["staged", "online"])
def tiny_run(request, tmp_path_factory):
    """DummyDict (16x16 image + state vector, Discrete actions): both kinds of views run, on a
    run built stage by stage and on one from `dreamer train` (its replay is the dataset)."""
    base = tmp_path_factory.mktemp("notebook_run")
    data, run = base / "data", base / "run"
    if request.param == "online":
        result = dreamer("train", "--env", "dreamer/DummyDict-v0", "--out", run, "--steps", 300, "--prefill", 100,
                         "--train-ratio", 8, "--eval-every", 0, "--preset", "tiny", "-q", "--set", "env.size=[16,16]",
                         "--set", "log_every=50")
        assert result.exit_code == 0, result.output
        return run, run / "replay"
    result = dreamer("collect", "--env", "dreamer/DummyDict-v0", "--size", 16, "--out", data, "--steps", 300, "-q")
    assert result.exit_code == 0, result.output
    result = dreamer("train-world-model", data, "--out", run, "--updates", 20, "--preset", "tiny", "-q",
                     "--set", "log_every=5", "--set", "eval_every=10")
    assert result.exit_code == 0, result.output
    result = dreamer("train-behavior", "--run", run, "--updates", 6, "--preset", "tiny", "-q", "--set", "log_every=2")
    assert result.exit_code == 0, result.output
    return run, data


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, name
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert nb.metadata.kernelspec.name == "python3"
    assert "DREAMER_RUN" in code[0].source and "DREAMER_DATASET" in code[0].source
    assert "import dreamer_core" in code[0].source or "from dreamer_core" in code[0].source
    assert "from demo import demo_run" in code[0].source
    # they compute through the library (runs, analysis, viz), never through a stage module
    assert not any("dreamer_core.stages" in c.source for c in code)


def test_notebooks_match_their_generator():
    assert notebook_module("make_notebooks").main(["--check"]) == 0


def test_demo_run_builds_once_and_redoes_an_unfinished_stage(tmp_path):
    demo = notebook_module("demo")
    kwargs = dict(env="dreamer/DummyDiscrete-v0", steps=150, world_model_updates=3, behavior_updates=2, progress=False)
    run, data = demo.demo_run(tmp_path, upto="world_model", **kwargs)
    assert (run / "world_model.pt").exists() and not (run / "behavior.pt").exists()
    assert Dataset(data).num_steps == 150
    stamp = (run / "world_model.pt").stat().st_mtime_ns
    (run / "behavior.pt").write_bytes(b"left by a killed notebook")
    run, data = demo.demo_run(tmp_path, **kwargs)
    assert (run / "world_model.pt").stat().st_mtime_ns == stamp  # reused
    load_agent(run)  # the unfinished behavior was trained again
    with pytest.raises(DreamerError, match="upto"):
        demo.demo_run(tmp_path, upto="everything")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless(name, tiny_run, monkeypatch):
    NotebookClient = pytest.importorskip("nbclient").NotebookClient
    pytest.importorskip("ipykernel")
    run, data = tiny_run
    monkeypatch.setenv("DREAMER_RUN", str(run))
    monkeypatch.setenv("DREAMER_DATASET", str(data))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PANEL_CHECK))
    # the kernel must be this interpreter (the venv), not some other python3 on the machine
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(nb, kernel_name="python3", timeout=240,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert os.path.realpath(printed.strip()) == os.path.realpath(sys.executable)
    assert str(run) in "".join(o.get("text", "") for o in nb.cells[1].outputs)  # the env vars were used
    report = panel_report(nb.cells[-2])
    assert report["figures"] >= MIN_FIGURES[name], report
    assert report["empty"] == [], report
    # every panel of these runs has data: notes are for runs that lack a kind of metric altogether
    assert report["notes"] == [], report


def panel_report(cell) -> dict:
    """The JSON line ``PANEL_CHECK`` printed in ``cell``."""
    text = "".join(o.get("text", "") for o in cell.outputs)
    line = next(line for line in text.splitlines() if line.startswith("PANELS "))
    return json.loads(line.removeprefix("PANELS "))


def test_the_panel_check_finds_empty_panels():
    """PANEL_CHECK flags a panel without data (bare, an axvline alone, only NaN points, an empty
    scatter, a histogram of nothing), passes panels with lines, points, images or bars, skips
    colorbars and tells a panel holding only a note apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plt.close("all")
    try:
        fig, axes = plt.subplots(2, 5)
        good, bare, vline, nan, noted = axes[0]
        scatter_nan, hist_empty, image, bars, points = axes[1]
        good.plot([0, 1], [1, 2])
        good.axvline(0.5)
        good.set_title("good")
        bare.set_title("bare")
        vline.axvline(3)
        vline.axhline(1)
        vline.set_title("vline")
        nan.plot([0, 1], [np.nan, np.nan])
        nan.set_title("nan")
        noted.text(0.5, 0.5, "no held-out split", transform=noted.transAxes)
        noted.set_title("noted")
        scatter_nan.scatter([np.nan], [1.0])
        scatter_nan.set_title("scatter_nan")
        hist_empty.hist(np.zeros(0), bins=3)
        hist_empty.set_title("hist_empty")
        fig.colorbar(image.imshow(np.zeros((2, 2))), ax=image)
        bars.bar([0, 1], [0.0, 2.0])
        points.scatter([1.0], [2.0])
        namespace: dict = {}
        exec(PANEL_CHECK.replace('print("PANELS " + _json.dumps(_panel_report()))', ""), namespace)
        report = namespace["_panel_report"]()
    finally:
        plt.close("all")
    assert report["figures"] == 1 and report["panels"] == 10
    assert [n.split("panel ")[1] for n in report["empty"]] == ["'bare'", "'vline'", "'nan'", "'scatter_nan'",
                                                               "'hist_empty'"]
    assert [n.split("panel ")[1] for n in report["notes"]] == ["'noted'"]
