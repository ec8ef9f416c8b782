"""`dreamer dream` end to end through the real CLI: the videos and error plots for vector and
pixel data, the summary line, and its refusals of bad input (each a one-paragraph user
error, exit code 2, nothing written)."""

import pytest
from PIL import Image
from typer.testing import CliRunner

from dreamer_core import checkpoint
from dreamer_core.cli import app
from dreamer_core.data.dataset import Dataset

runner = CliRunner()
TINY = ["--preset", "tiny", "-q"]


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    """DummyDiscrete data with a briefly trained world model and a 4-update behavior (the
    command's output does not depend on how good the model is)."""
    base = tmp_path_factory.mktemp("vector")
    data, run = base / "data", base / "run"
    assert dreamer("collect", "--env", "dreamer/DummyDiscrete-v0", "--out", data, "--steps", 600, "-q").exit_code == 0
    result = dreamer("train-world-model", data, "--out", run, "--updates", 10, *TINY, "--set", "optim.lr=1e-3")
    assert result.exit_code == 0, result.output
    result = dreamer("train-behavior", "--run", run, "--updates", 4, *TINY)
    assert result.exit_code == 0, result.output
    return data, run


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pixels")
    data, run = base / "data", base / "run"
    result = dreamer("collect", "--env", "dreamer/DummyImage-v0", "--size", 16, "--out", data, "--steps", 200, "-q")
    assert result.exit_code == 0, result.output
    result = dreamer("train-world-model", data, "--out", run, "--updates", 4, *TINY)
    assert result.exit_code == 0, result.output
    return data, run


def gif_frames(path):
    with Image.open(path) as image:
        assert image.format == "GIF"
        return image.n_frames, image.size


def test_dream_command_writes_a_gif_and_an_error_plot_for_vectors(vector_run, tmp_path):
    data, run = vector_run
    out = tmp_path / "videos" / "dreams.gif"
    out.parent.mkdir()
    out.write_bytes(b"an older file the user named again")
    result = dreamer("dream", "--run", run, "--out", out, "--episode", 1, "--context", 4, "--actor")
    assert result.exit_code == 0, result.output
    rows = Dataset(data).refs[1].rows
    frames, (width, height) = gif_frames(out)
    assert frames == rows and width > 200 and height > 150
    with Image.open(tmp_path / "videos" / "dreams_error.png") as png:
        assert png.format == "PNG"
    assert sorted(p.name for p in out.parent.iterdir()) == ["dreams.gif", "dreams_error.png"]  # no temp files
    assert "open-loop MSE" in result.output and "repeat-last" in result.output
    assert f"dreamed episode 1 ({rows} of its {rows} rows, context 4)" in result.output
    assert f"over {rows - 4} imagined steps" in result.output


def test_dream_command_for_pixels_gif_and_mp4(pixel_run, tmp_path):
    data, run = pixel_run
    result = dreamer("dream", "--run", run, "--dataset", data, "--out", tmp_path / "px.gif", "--context", 3,
                     "--horizon", 6)
    assert result.exit_code == 0, result.output
    frames, (width, height) = gif_frames(tmp_path / "px.gif")
    assert frames == 9 and width >= 3 * 128 and height >= 128
    assert (tmp_path / "px_error.png").exists()
    result = dreamer("dream", "--run", run, "--out", tmp_path / "px.mp4", "--episode", -1, "--context", 2)
    assert result.exit_code == 0, result.output
    import imageio.v2 as imageio

    with imageio.get_reader(tmp_path / "px.mp4") as reader:
        assert reader.count_frames() == Dataset(data).refs[-1].rows


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_dream_command_refuses_bad_inputs(vector_run, pixel_run, tmp_path):
    data, run = vector_run
    pixel_data, pixel = pixel_run
    out = tmp_path / "x.gif"
    n = len(Dataset(data).refs)
    assert_user_error(dreamer("dream", "--run", run, "--out", out, "--episode", n), f"holds {n} episode")
    rows = Dataset(data).refs[0].rows
    assert_user_error(dreamer("dream", "--run", run, "--out", out, "--context", rows), f"has {rows} rows")
    assert_user_error(dreamer("dream", "--run", run, "--out", out, "--context", 0), "--context must be at least 1")
    assert_user_error(dreamer("dream", "--run", run, "--out", out, "--horizon", -1), "--horizon must be 0")
    assert_user_error(dreamer("dream", "--run", tmp_path / "missing", "--out", out), "No run directory")
    (tmp_path / "empty").mkdir()
    assert_user_error(dreamer("dream", "--run", tmp_path / "empty", "--out", out), "has no world_model.pt")
    assert_user_error(dreamer("dream", "--run", run, "--dataset", pixel_data, "--out", out),
                      "does not fit the checkpoint")
    assert_user_error(dreamer("dream", "--run", run, "--out", tmp_path / "x.png"), ".gif or .mp4")
    assert_user_error(dreamer("dream", "--run", pixel, "--out", out, "--actor"), "has no behavior.pt")
    # the recorded dataset has moved away (the world model records what it was trained on)
    moved = tmp_path / "moved"
    moved.mkdir()
    artifact = checkpoint.load(run / "world_model.pt", checkpoint.WorldModelArtifact)
    artifact.datasets = [str(tmp_path / "gone")]
    checkpoint.save(moved / "world_model.pt", artifact)
    assert_user_error(dreamer("dream", "--run", moved, "--out", out), "does not exist", "--dataset")
    assert not out.exists()


def test_dream_is_a_command():
    result = dreamer("dream", "--help")
    assert result.exit_code == 0 and "--context" in result.output and "--horizon" in result.output
