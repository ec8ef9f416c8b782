"""Stage 02 through the CLI and in-process: artifacts, resume equality, refusals, safety,
calibration, variants, and the inverse-dynamics head."""


import gymnasium as gym
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dreamer_core import checkpoint
from dreamer_core.cli import app
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.data.schema import Episode
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.errors import DreamerError
from dreamer_core.logging import read_metrics
from dreamer_core.stages import train_world_model as stage
from dreamer_core.world_model import WorldModel
from tests.common import ACTION_SPACES, OBS_SPACES, make_episode

runner = CliRunner()
TINY = ["--preset", "tiny", "-q"]


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def dummy_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "dummy"
    result = dreamer("collect", "--env", "dreamer/DummyDiscrete-v0", "--out", out, "--steps", 600, "-q")
    assert result.exit_code == 0, result.output
    return out


def test_cli_train_writes_every_artifact(dummy_data, tmp_path):
    run = tmp_path / "run"
    result = dreamer("train-world-model", dummy_data, "--out", run, "--updates", 20, *TINY,
                     "--set", "log_every=5", "--set", "eval_every=10")
    assert result.exit_code == 0, result.output
    for name in ("world_model.pt", "checkpoints/latest.pt", "config.yaml", "metrics.jsonl"):
        assert (run / name).exists(), name
    assert any((run / "tb").iterdir())
    records = read_metrics(run)
    assert [r["step"] for r in records if "wm/loss" in r] == [5, 10, 15, 20]
    val = [r for r in records if "val/wm/loss" in r]
    assert [r["step"] for r in val] == [10, 20]
    for key in ("val/wm/openloop_mse", "val/wm/openloop_baseline_mse", "val/wm/latent_usage", "val/wm/loss/recon"):
        assert np.isfinite(val[-1][key]), key
    assert all(np.isfinite(r["wm/loss"]) for r in records if "wm/loss" in r)
    model, artifact = WorldModel.load(run / "world_model.pt")
    assert artifact.update == 20 and isinstance(model, WorldModel)
    # an existing run is not overwritten without --resume
    before = (run / "world_model.pt").read_bytes()
    result = dreamer("train-world-model", dummy_data, "--out", run, "--updates", 20, *TINY)
    assert result.exit_code == 2 and "--resume" in result.output
    assert (run / "world_model.pt").read_bytes() == before


def test_resume_reproduces_an_uninterrupted_run(dummy_data, tmp_path):
    common = [*TINY, "--set", "log_every=1", "--set", "eval_every=1000", "--set", "checkpoint_every=6"]
    assert dreamer("train-world-model", dummy_data, "--out", tmp_path / "a", "--updates", 12, *common).exit_code == 0
    assert dreamer("train-world-model", dummy_data, "--out", tmp_path / "b", "--updates", 6, *common).exit_code == 0
    result = dreamer("train-world-model", "--out", tmp_path / "b", "--updates", 12, "--resume", "-q")  # its own data
    assert result.exit_code == 0, result.output
    losses_a = [r["wm/loss"] for r in read_metrics(tmp_path / "a") if "wm/loss" in r]
    losses_b = [r["wm/loss"] for r in read_metrics(tmp_path / "b") if "wm/loss" in r]
    assert len(losses_a) == 12 and losses_a == losses_b


def test_dataset_with_other_spaces_is_refused(dummy_data, tmp_path):
    run = tmp_path / "run"
    assert dreamer("train-world-model", dummy_data, "--out", run, "--updates", 2, *TINY).exit_code == 0
    other = tmp_path / "cartpole"
    assert dreamer("collect", "--env", "CartPole-v1", "--out", other, "--steps", 200, "-q").exit_code == 0
    result = dreamer("train-world-model", other, "--out", run, "--updates", 4, "--resume", "-q")
    assert result.exit_code == 2 and "does not fit the checkpoint" in result.output
    assert "Traceback" not in result.output
    result = dreamer("train-world-model", "--out", tmp_path / "fresh", "--updates", 2, "-q")
    assert result.exit_code == 2 and "No dataset given" in result.output


def test_non_finite_losses_stop_the_run_and_keep_the_checkpoint(dummy_data, tmp_path, monkeypatch):
    cfg = stage.make_config([str(dummy_data)], str(tmp_path / "run"), ["tiny"], ["checkpoint_every=2"],
                            {"updates": 10})
    trainer = stage.Trainer(cfg, progress=False)
    original = trainer.model.loss
    calls = {"n": 0}

    def poisoned(batch, state=None):
        loss, metrics, post = original(batch, state)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 4 else loss), metrics, post

    monkeypatch.setattr(trainer.model, "loss", poisoned)
    with pytest.raises(DreamerError, match="non-finite losses in a row at update 4"):
        trainer.run()
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "latest.pt", checkpoint.TrainState)
    assert state.counters["update"] == 4
    assert any(r.get("wm/nonfinite") == 1.0 for r in read_metrics(tmp_path / "run"))


def test_balance_weights_follow_priority_within_an_order_of_magnitude():
    magnitudes = {"recon": 2000.0, "reward": 3.0, "cont": 0.1, "dyn": 1.0, "rep": 1.0}
    weights = stage.balance_weights(magnitudes, ("recon", "reward", "cont", "dyn", "rep"))
    weighted = [magnitudes[k] * weights[k] for k in ("recon", "reward", "cont", "dyn", "rep")]
    assert weighted == sorted(weighted, reverse=True)
    assert weighted[0] / weighted[-1] < 10
    assert sum(weighted) == pytest.approx(sum(magnitudes.values()))


def test_calibration_is_stable_for_a_fixed_seed_and_recorded(dummy_data, tmp_path):
    results = []
    for name in ("a", "b"):
        cfg = stage.make_config([str(dummy_data)], str(tmp_path / name), ["tiny"],
                                ["calibrate_updates=6"], {"updates": 2, "balance": "calibrate"})
        trainer = stage.Trainer(cfg, progress=False)
        trainer.run()
        results.append(trainer.calibration)
    assert results[0] == results[1]
    assert set(results[0]["weights"]) == {"recon", "reward", "cont", "dyn", "rep"}
    saved = (tmp_path / "a" / "config.yaml").read_text()
    assert "calibration" in saved and "magnitudes" in saved
    artifact = checkpoint.load(tmp_path / "a" / "world_model.pt", checkpoint.WorldModelArtifact)
    assert artifact.model_config["scales"]["reward"] == pytest.approx(results[0]["weights"]["reward"])
    assert artifact.calibration == results[0]


@pytest.mark.parametrize("variant", ["dreamerv3", "dreamerv2", "dreamerv1"])
def test_variants_train(dummy_data, tmp_path, variant):
    result = dreamer("train-world-model", dummy_data, "--out", tmp_path / variant, "--updates", 4,
                     "--preset", variant, *TINY, "--set", "eval_every=4")
    assert result.exit_code == 0, result.output
    val = [r for r in read_metrics(tmp_path / variant) if "val/wm/loss" in r]
    assert np.isfinite(val[-1]["val/wm/loss"])


def _write_dataset(path, obs_space, action_space, episodes=6, steps=20):
    with DatasetWriter(path, "Synthetic-v0", {"id": "Synthetic-v0"}, obs_space, action_space) as w:
        for i in range(episodes):
            w.add_episode(make_episode(obs_space, action_space, steps, i % 2 == 0, episode_id=i))
    return Dataset(path)


@pytest.mark.parametrize("obs_kind", ["vector", "image", "dict"])
@pytest.mark.parametrize("action_kind", ["discrete", "box", "multibinary"])
def test_every_parameter_gets_a_finite_gradient(tmp_path, obs_kind, action_kind):
    obs_space, action_space = OBS_SPACES[obs_kind], ACTION_SPACES[action_kind]
    if obs_kind != "vector":  # the CNN wants power-of-two sides >= 8; OBS_SPACES images are 8x8
        obs_space = gym.spaces.Dict({**obs_space.spaces, "image": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)})
    ds = _write_dataset(tmp_path / "ds", obs_space, action_space)
    cfg = stage.make_config([], "x", ["tiny"], [], {"model.inverse.enabled": True})
    model = WorldModel(cfg.model, ds.observation_space, ds.action_space)
    batch = SequenceSampler(ds, 3, 10, seed=0).sample()
    loss, metrics, post = model.loss(batch)
    assert post.deter.shape[:2] == (3, 10)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_inverse_head_learns_a_deterministic_action_mapping(tmp_path):
    """obs_t is the one-hot of a_t, so a_{t+1} is readable from s_{t+1}: held-out accuracy -> 1."""
    obs_space = gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)})
    action_space = gym.spaces.Discrete(4)
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "ds", "Echo-v0", {"id": "Echo-v0"}, obs_space, action_space) as w:
        for _ in range(40):
            actions = rng.integers(0, 4, 30)
            vectors = np.zeros((31, 4), np.float32)
            vectors[1:] = np.eye(4, dtype=np.float32)[actions]
            w.add_episode(Episode.from_transitions({"vector": vectors}, actions, np.zeros(30, np.float32), False))
    cfg = stage.make_config([str(tmp_path / "ds")], str(tmp_path / "run"), ["tiny"],
                            ["eval_every=150", "log_every=50", "optim.lr=1e-3"],
                            {"updates": 150, "model.inverse.enabled": True})
    result = stage.run(cfg, progress=False)
    assert result["val/wm/inverse_metric"] > 0.9, result


def test_thin_script_runs_the_same_command(dummy_data, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "02_train_world_model.py"
    done = subprocess.run([sys.executable, str(script), str(dummy_data), "--out", str(tmp_path / "run"),
                           "--updates", "3", "--preset", "tiny", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "trained 3 updates" in done.stdout and (tmp_path / "run" / "world_model.pt").exists()


def test_threads_setting(dummy_data, tmp_path):
    before = torch.get_num_threads()
    try:
        cfg = stage.make_config([str(dummy_data)], str(tmp_path / "run"), ["tiny"], ["threads=1"], {"updates": 1})
        stage.Trainer(cfg, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_open_loop_errors_are_in_pixel_units_for_model_and_baseline(tmp_path):
    """Both the model's and the repeat-last baseline's image errors are in [0, 1] pixel units,
    and with a context covering the window the baseline is the exact frame difference."""
    from dreamer_core.world_model import _per_step_mse

    truth = torch.randint(0, 256, (2, 3, 8, 8, 3), dtype=torch.uint8)
    last = truth[:, :1].expand_as(truth)
    expected = ((last.float() - truth.float()) / 255).pow(2).flatten(2).mean(-1).mean(0)
    torch.testing.assert_close(_per_step_mse(last, truth), expected)
    assert _per_step_mse(last, truth).max() <= 1.0
    obs_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)})
    ds = _write_dataset(tmp_path / "ds", obs_space, ACTION_SPACES["discrete"], episodes=2, steps=30)
    cfg = stage.make_config([], "x", ["tiny"], [], {})
    model = WorldModel(cfg.model, ds.observation_space, ds.action_space)
    batch = SequenceSampler(ds, 2, 12, seed=0).gather([0, 31])
    result = model.open_loop(batch, context=4, horizon=8)
    assert result["mse"].shape == (8,) and result["baseline"].shape == (8,)
    assert float(result["mse"].max()) <= 1.0 and float(result["baseline"].max()) <= 1.0
    torch.testing.assert_close(result["baseline"], _per_step_mse(batch.obs["image"][:, 3:4].expand(-1, 8, -1, -1, -1),
                                                                 batch.obs["image"][:, 4:12]))


def test_progress_lines_show_the_held_out_loss_after_an_evaluation(dummy_data, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dreamer_core", "train-world-model", str(dummy_data), "--out",
                           str(tmp_path / "run"), "--updates", "4", "--preset", "tiny", "--set", "eval_every=2",
                           "--progress-seconds", "1000"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("world model")]
    assert "held-out" not in lines[0]  # the start line: nothing evaluated yet
    assert any("held-out" in line for line in lines[1:]), lines  # the lines after the evaluations


def test_checkpoints_by_wall_clock_when_updates_are_slow(dummy_data, tmp_path, monkeypatch):
    """A slow run (one checkpoint per 1000 updates can be an hour) also checkpoints every
    ``checkpoint_seconds``: here after each update, with update counting switched off."""

    def saves(name: str, seconds: str) -> list[int]:
        """The updates at which a 3-update run with ``checkpoint_seconds=seconds`` saved."""
        cfg = stage.make_config([str(dummy_data)], str(tmp_path / name), ["tiny"],
                                ["checkpoint_every=0", f"checkpoint_seconds={seconds}"], {"updates": 3})
        trainer = stage.Trainer(cfg, progress=False)
        saved, original = [], trainer.save
        monkeypatch.setattr(trainer, "save", lambda *a, **k: (saved.append(trainer.update), original(*a, **k))[1])
        trainer.run()
        return saved

    assert saves("run", "1e-6")[:3] == [1, 2, 3]
    assert saves("off", "0") == [3]  # only at the end
