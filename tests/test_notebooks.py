"""The notebooks: stored without outputs and in sync with their generator, and every cell runs
headless (nbclient, kernel ``python3`` on this interpreter) against one tiny run with image
and vector observations and an agent, passed in through DREAMER_RUN / DREAMER_DATASET."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from typer.testing import CliRunner

from dreamer_core.cli import app

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from nbclient import NotebookClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_dataset.ipynb", "02_world_model_dreams.ipynb", "03_behavior_in_imagination.ipynb"]
runner = CliRunner()


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


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


def test_notebooks_match_their_generator():
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(NOTEBOOKS))
    assert make_notebooks.main(["--check"]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless(name, tiny_run, monkeypatch):
    run, data = tiny_run
    monkeypatch.setenv("DREAMER_RUN", str(run))
    monkeypatch.setenv("DREAMER_DATASET", str(data))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
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
