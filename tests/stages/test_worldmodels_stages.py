"""The World Models family (VAE + MDN-RNN + CMA-ES controller) through the real CLI: the four
stages end to end (both scorers), staged and joint + calibrated training, resume of the world
model and of the controller search, `dreamer dream` per temperature, and bad input refused
with nothing written."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dreamer_core import checkpoint, controller, runs
from dreamer_core.cli import app
from dreamer_core.logging import read_metrics
from dreamer_core.world_model import WorldModel
from dreamer_core.worldmodels import VaeMdnWorldModel

runner = CliRunner()
SMALL = ["--preset", "worldmodels", "--batch-size", 4, "--seq-len", 8, "-q", "--set", "worldmodels.vae.latent=4", "--set", "worldmodels.vae.depth=4", "--set", "worldmodels.mdn.hidden=8",
         "--set", "worldmodels.mdn.mixtures=2", "--set", "worldmodels.mdn.head_units=8",
         "--set", "worldmodels.inverse.units=8", "--set", "openloop_horizon=3", "--set", "eval_every=3",
         "--set", "log_every=2"]
SEARCH = ["--population", 4, "--workers", 1, "--rollouts", 2, "-q"]


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args):
    result = dreamer(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("wm") / "data"
    ok("collect", "--env", "dreamer/DummyImage-v0", "--out", path, "--steps", 300, "-q")
    return path


@pytest.fixture(scope="module")
def staged(data, tmp_path_factory):
    """A staged World Models run (V for 3 updates, then M), no behavior yet: copy before use."""
    run = tmp_path_factory.mktemp("staged") / "run"
    ok("train-world-model", data, "--out", run, "--updates", 6, *SMALL)
    return run


def copy_run(run, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def snapshot(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_four_stages_with_the_real_env_scorer(staged, data, tmp_path):
    run = copy_run(staged, tmp_path)
    artifact = checkpoint.load(run / runs.WORLD_MODEL, checkpoint.WorldModelArtifact)
    assert artifact.model_config["family"] == "worldmodels" and artifact.update == 6
    assert artifact.stage_config["vae_updates"] == 3
    state = checkpoint.load(run / runs.WORLD_MODEL_LATEST, checkpoint.TrainState)
    assert set(state.optimizers) == {"vae", "memory"} and state.counters["phase"] == "memory"
    records = read_metrics(run)
    assert any("val/wm/loss/recon" in r and "val/wm/loss/dyn" in r for r in records)

    result = ok("train-behavior", "--run", run, "--generations", 2, *SEARCH)
    assert "searched 2 controller generations" in result.output
    metrics = read_metrics(run, runs.BEHAVIOR_METRICS)
    assert [r["step"] for r in metrics] == [1, 2]
    assert {"cma/best", "cma/mean", "cma/best_ever"} <= set(metrics[0])
    assert (run / "tb").is_dir()
    behavior = checkpoint.load(run / runs.BEHAVIOR, checkpoint.BehaviorArtifact)
    assert controller.is_controller(behavior.behavior_config) and behavior.update == 2
    assert behavior.env_config["id"] == "dreamer/DummyImage-v0"
    world_model, agent, _ = runs.load_agent(run)
    assert isinstance(world_model, VaeMdnWorldModel) and isinstance(agent, controller.Controller)
    assert runs.read_config(run, "train-controller")["scorer"] == "real"

    result = ok("evaluate", "--run", run, "--episodes", 2, "--video", "-q")
    assert "evaluated 2 episodes" in result.output
    folder = sorted((run / "eval").iterdir())[-1]
    assert (folder / "episode_000.gif").stat().st_size > 0
    ok("collect", "--env", "dreamer/DummyImage-v0", "--out", tmp_path / "more", "--steps", 40, "--policy", run, "-q")

    result = ok("dream", "--run", run, "--out", tmp_path / "d.gif", "--tau", 0.5, "--tau", 1.5)
    assert "at tau 0.5" in result.output and "tau 1.5 ->" in result.output
    names = sorted(p.name for p in tmp_path.glob("d_*"))
    assert names == ["d_tau0.5.gif", "d_tau0.5_error.png", "d_tau1.5.gif", "d_tau1.5_error.png"]
    refused = dreamer("dream", "--run", run, "--out", tmp_path / "x.gif", "--actor")
    assert refused.exit_code == 2 and "controller, which has no critic" in " ".join(refused.output.split())
    assert not (tmp_path / "x.gif").exists()


def test_joint_training_with_calibration_and_the_dream_scorer(data, tmp_path):
    run = tmp_path / "joint"
    result = ok("train-world-model", data, "--out", run, "--updates", 4, *[a for a in SMALL if a != "-q"],
                "--balance", "calibrate",
                "--inverse-model", "--set", "calibrate_updates=2")
    assert "calibrated loss weights" in result.output and "inverse: |" in result.output
    calibration = runs.config_records(run, "train-world-model")["calibration"]
    assert set(calibration["magnitudes"]) == {"recon", "kl", "dyn", "reward", "cont", "inverse"}
    saved = runs.read_config(run, "train-world-model")
    assert saved["worldmodels"]["training"] == "joint" and saved["worldmodels"]["inverse"]["enabled"]
    assert saved["worldmodels"]["weights"] == pytest.approx(calibration["weights"])
    artifact = checkpoint.load(run / runs.WORLD_MODEL, checkpoint.WorldModelArtifact)
    assert artifact.calibration["weights"] == pytest.approx(calibration["weights"])
    assert artifact.model_config["weights"] == pytest.approx(calibration["weights"])
    state = checkpoint.load(run / runs.WORLD_MODEL_LATEST, checkpoint.TrainState)
    assert set(state.optimizers) == {"joint"}
    held_out = [r for r in read_metrics(run) if "val/wm/inverse_metric" in r]
    assert held_out and "val/wm/loss/recon" in held_out[-1] and "val/wm/loss/dyn" in held_out[-1]

    result = ok("train-behavior", "--run", run, "--scorer", "dream", "--tau", 1.5, "--generations", 2, *SEARCH,
                "--set", "max_steps=15")
    assert "searched 2 controller generations" in result.output
    cfg = runs.read_config(run, "train-controller")
    assert (cfg["scorer"], cfg["tau"]) == ("dream", 1.5)
    assert ok("evaluate", "--run", run, "--episodes", 1, "-q").exit_code == 0


def test_controller_search_resumes_exactly(staged, tmp_path):
    once, split = copy_run(staged, tmp_path, "once"), copy_run(staged, tmp_path, "split")
    ok("train-behavior", "--run", once, "--generations", 3, *SEARCH)
    ok("train-behavior", "--run", split, "--generations", 2, *SEARCH)
    result = ok("train-behavior", "--run", split, "--resume", "--generations", 3, "-q")
    assert "searched 3 controller generations" in result.output

    def strip(records):
        return [{k: v for k, v in r.items() if k != "cma/seconds"} for r in records]

    assert strip(read_metrics(split, runs.BEHAVIOR_METRICS)) == strip(read_metrics(once, runs.BEHAVIOR_METRICS))
    a = checkpoint.load(once / runs.BEHAVIOR, checkpoint.BehaviorArtifact).weights
    b = checkpoint.load(split / runs.BEHAVIOR, checkpoint.BehaviorArtifact).weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    search_a = checkpoint.load(once / runs.BEHAVIOR_LATEST, checkpoint.TrainState).optimizers["cma"]
    search_b = checkpoint.load(split / runs.BEHAVIOR_LATEST, checkpoint.TrainState).optimizers["cma"]
    assert search_a["generation"] == search_b["generation"] == 3
    np.testing.assert_array_equal(search_a["best_params"], search_b["best_params"])

    # A resume may not change the search, and refuses a world model trained further since.
    before = snapshot(split)
    refused = dreamer("train-behavior", "--run", split, "--resume", "--generations", 4, "--population", 8)
    assert refused.exit_code == 2 and "search.population" in refused.output
    artifact = checkpoint.load(split / runs.WORLD_MODEL, checkpoint.WorldModelArtifact)
    artifact.update += 1
    checkpoint.save(split / runs.WORLD_MODEL, artifact)
    before = snapshot(split)
    refused = dreamer("train-behavior", "--run", split, "--resume", "--generations", 4, "-q")
    assert refused.exit_code == 2 and "changed since the controller checkpoint" in refused.output
    assert snapshot(split) == before


def test_world_model_resume_matches_an_uninterrupted_run(data, tmp_path):
    common = [*SMALL, "--set", "vae_updates=3", "--set", "checkpoint_every=2"]
    ok("train-world-model", data, "--out", tmp_path / "once", "--updates", 6, *common)
    ok("train-world-model", data, "--out", tmp_path / "split", "--updates", 4, *common)
    ok("train-world-model", "--out", tmp_path / "split", "--resume", "--updates", 6, "-q")
    a, _ = VaeMdnWorldModel.load(tmp_path / "once" / runs.WORLD_MODEL)
    b, _ = VaeMdnWorldModel.load(tmp_path / "split" / runs.WORLD_MODEL)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name  # exact: M's clipping ignores V's gradients left from its phase


def test_bad_input_is_refused_with_nothing_written(staged, data, tmp_path):
    run = copy_run(staged, tmp_path)
    before = snapshot(run)
    for args, words in [
        (["train-behavior", "--run", run, "--updates", 5], ["--updates is for the actor-critic", "--generations"]),
        (["train-behavior", "--run", run, "--horizon", 5, "--batch-size", 2], ["--batch-size, --horizon are"]),
        (["train-behavior", "--run", run, "--preset", "worldmodels"], ["preset 'worldmodels'"]),
        (["train-behavior", "--run", run, "--scorer", "imagined"], ["--scorer (scorer) must be one of real, dream"]),
        (["train-behavior", "--run", run, "--scorer", "dream", "--set", "stall_steps=50"],
         ["stall_steps applies to the real-env scorer only"]),
    ]:
        result = dreamer(*args)
        assert result.exit_code == 2, (args, result.output)
        for word in words:
            assert word in " ".join(result.output.split()), (word, result.output)
    assert snapshot(run) == before

    for args, words in [
        (["train-world-model", data, "--out", tmp_path / "a", "--preset", "worldmodels", "--optimizer", "laprop"],
         ["--optimizer", "not read by the worldmodels family"]),
        (["train-world-model", data, "--out", tmp_path / "a", "--preset", "worldmodels", "--preset", "tiny"],
         ["model", "not read by the worldmodels family"]),
        (["train-world-model", data, "--out", tmp_path / "a", "--set", "worldmodels.vae.latent=3"],
         ["not read by the rssm family", "--preset worldmodels"]),
        (["train-world-model", data, "--out", tmp_path / "a", "--preset", "worldmodels", "--balance", "calibrate",
          "--set", "worldmodels.training=staged"], ["nothing to balance"]),
        (["train-world-model", data, "--out", tmp_path / "a", "--preset", "worldmodels", "--set",
          "worldmodels.vae.output=relu", "--set", "worldmodels.vae.conv=big"],
         ["worldmodels.vae.output", "linear, sigmoid", "worldmodels.vae.conv", "paper, toolkit"]),
        (["train", "--env", "dreamer/DummyDiscrete-v0", "--out", tmp_path / "a", "--preset", "worldmodels"],
         ["trains the DreamerV3 RSSM only", "train-world-model DATA --out RUN --preset worldmodels"]),
    ]:
        result = dreamer(*args)
        assert result.exit_code == 2, (args, result.output)
        for word in words:
            assert word in " ".join(result.output.split()), (word, result.output)
        assert not (tmp_path / "a").exists()

    with pytest.raises(Exception, match="not a DreamerV3 \\(RSSM\\) one"):
        WorldModel.load(run / runs.WORLD_MODEL)


def test_controller_flags_are_refused_on_an_rssm_run(data, tmp_path):
    run = tmp_path / "rssm"
    ok("train-world-model", data, "--out", run, "--updates", 2, "--preset", "tiny", "-q")
    before = snapshot(run)
    for args in (["--generations", 2], ["--scorer", "dream", "--tau", 1.5], ["--hidden", 4], ["--keep", "mean"]):
        result = dreamer("train-behavior", "--run", run, *args)
        assert result.exit_code == 2 and "holds an RSSM world model" in result.output, result.output
    result = dreamer("dream", "--run", run, "--out", tmp_path / "r.gif", "--tau", 1.0)
    assert result.exit_code == 2 and "has no temperature" in result.output
    assert snapshot(run) == before
    # A run with no world model yet is neither family: the error says what is missing.
    result = dreamer("train-behavior", "--run", tmp_path / "empty", "--scorer", "dream")
    assert result.exit_code == 2 and "has no world_model.pt" in result.output, result.output
    assert "holds an RSSM" not in result.output and not (tmp_path / "empty").exists()
    assert json.loads((run / "run.json").read_text())["run_id"]
