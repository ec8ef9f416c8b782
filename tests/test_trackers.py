"""Experiment trackers (trackers.py): the ``loggers`` setting, and what W&B (offline run
directory), MLflow (file store) and TensorBoard hold after a real tiny `dreamer train` through
the CLI, its resume, and stages 02 and 03; unknown names and missing packages are refused
before anything is written."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dreamer_core import checkpoint, trackers
from dreamer_core.cli import app
from dreamer_core.errors import DreamerError, MissingDependencyError
from dreamer_core.logging import MetricsSink, read_metrics
from dreamer_core.stages import online, train_behavior, train_world_model

runner = CliRunner()
# A pixel env (so TensorBoard gets the dream video) at its natural 16x16, evaluated after the
# prefill, at 40 and at the end; 7 updates.
TINY = ["--env", "dreamer/DummyImage-v0", "--steps", 80, "--prefill", 32, "--eval-every", 40, "--eval-episodes", 1,
        "--train-ratio", 8, "--preset", "tiny", "--threads", 1, "-q", "--set", "env.size=[16,16]"]
# Whatever the machine's user set for these would change where the trackers write.
TRACKER_VARS = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "MLFLOW_TRACKING_URI",
                "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


def isolate(mp: pytest.MonkeyPatch, home: Path) -> None:
    for var in TRACKER_VARS:
        mp.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # keep W&B out of ~
        mp.setenv(var, str(home / var.lower()))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A `dreamer train` run with all three trackers, resumed once (80 then 120 env steps).
    Returns the run directory and its tracker ids after the first session."""
    root = tmp_path_factory.mktemp("trackers")
    run = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, root)
        result = dreamer("train", "--out", run, *TINY, "--set", "loggers=tensorboard,wandb,mlflow")
        assert result.exit_code == 0, result.output
        first = trackers.read_ids(run)
        result = dreamer("train", "--out", run, "--resume", "--steps", 120, "--threads", 1, "-q")
        assert result.exit_code == 0, result.output
    return run, first


def mlflow_client(run: Path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    return MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())


def wandb_inspect(path: Path, summary: bool = True):
    """What W&B's own reader (`wandb leet inspect`) finds in an offline run directory."""
    args = ["--summary", "--json"] if summary else ["--json"]
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", *args, str(path)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return json.loads(out) if summary else [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def stored_config(run: Path) -> dict:
    return checkpoint.load(run / online.LATEST, checkpoint.TrainState).stage_config


def evals(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["eval/return"]) for r in read_metrics(run) if "eval/return" in r]


# --- the setting --------------------------------------------------------------------------------


def test_the_loggers_setting():
    assert trackers.parse(" TensorBoard, wandb,wandb ") == ("tensorboard", "wandb")
    assert trackers.parse("none") == trackers.parse("") == ()
    assert trackers.problem("tensorboard,mlflow") is None and trackers.problem("none") is None
    assert "'tensorbord' is not one" in trackers.problem("tensorbord")
    assert "none alone" in trackers.problem("none,wandb")
    assert trackers.flatten({"a": 1, "b": {"c": [1, 2], "d": {"e": None}}}) == {"a": 1, "b.c": [1, 2], "b.d.e": None}
    assert trackers.mlflow_key("wm/loss/recon") == "wm.loss.recon" and trackers.mlflow_key("a@b") == "a_b"


def test_unknown_loggers_and_missing_packages_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    out = tmp_path / "run"
    result = dreamer("train", "--env", "CartPole-v1", "--out", out, "-q", "--set", "loggers=tensorboard,wandbb")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "--logger (loggers) must be a comma-separated list of tensorboard, wandb, mlflow" in result.output
    assert "'wandbb'" in result.output and not out.exists()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    result = dreamer("train", "--env", "CartPole-v1", "--out", out, "-q", "--set", "loggers=mlflow")
    assert result.exit_code == 2 and "pip install 'dreamer-core[mlflow]'" in result.output, result.output
    assert "--logger mlflow" in result.output and not out.exists()
    # The Python API refuses too, also a stored config's trackers on resume (run(loggers=...) changes them).
    with pytest.raises(MissingDependencyError, match=r"dreamer-core\[mlflow\]"):
        online.run(online.TrainConfig(out=str(out), loggers="mlflow"), progress=False)
    with pytest.raises(DreamerError, match="'bogus' is not one"):
        online.run(online.TrainConfig(out=str(out)), progress=False, loggers="bogus")
    assert not out.exists()
    with pytest.raises(DreamerError, match="'tb' is not one"):
        train_world_model.validate(train_world_model.TrainWorldModelConfig(loggers="tb"))
    with pytest.raises(MissingDependencyError, match=r"dreamer-core\[mlflow\]"):
        train_behavior.validate(train_behavior.TrainBehaviorConfig(loggers="tensorboard,mlflow"))


def test_a_sink_with_no_trackers_writes_only_the_jsonl(tmp_path):
    with MetricsSink(tmp_path) as sink:
        sink.track("none", "train", {"seed": 0})
        assert not sink.media
        sink.log(3, {"loss": 1.5, "bad": float("nan")})
    assert read_metrics(tmp_path) == [{"step": 3, "loss": 1.5, "bad": "nan"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no tb/, no trackers.json


# --- a real run through the CLI -----------------------------------------------------------------


def test_mlflow_file_store_holds_the_config_and_the_metrics(tracked, monkeypatch):
    run, first = tracked
    client = mlflow_client(run, monkeypatch)
    run_id = first["train"]["mlflow"]
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED" and found.info.run_name == "run/train"
    assert client.get_experiment(found.info.experiment_id).name == "run"  # the run directory's name
    config = trackers.flatten(stored_config(run))
    params = found.data.params
    assert set(params) == set(config)
    assert params["env.id"] == "dreamer/DummyImage-v0" and params["model.rssm.deter"] == "64"
    assert params["loggers"] == "tensorboard,wandb,mlflow"
    assert params["steps"] == "80"  # params never change: the resumed budget (120) is in the run's config
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval.return"))
    assert history == evals(run) and [step for step, _ in history] == [32, 40, 80, 120]  # both sessions, one run
    losses = [(r["step"], r["wm/loss/recon"]) for r in read_metrics(run) if "wm/loss/recon" in r]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "wm.loss.recon")) == losses


def test_wandb_offline_run_holds_the_config_and_the_metrics(tracked):
    run, first = tracked
    run_id = first["train"]["wandb"]
    sessions = sorted((run / "wandb").glob("offline-run-*"))
    assert [p.name.rsplit("-", 1)[1] for p in sessions] == [run_id, run_id]  # the resume continued the run
    summary = wandb_inspect(sessions[0])
    assert summary["state"] == "finished" and summary["project"] == "run" and summary["name"] == "run/train"
    config = summary["config"]
    assert config["env"]["id"] == "dreamer/DummyImage-v0" and config["model"]["rssm"]["deter"] == 64
    assert config["loggers"] == "tensorboard,wandb,mlflow" and config["steps"] == 80
    assert summary["summary"]["step"] == 80 and summary["summary"]["eval/return"] == evals(run)[2][1]
    history = [r["history"]["item"] for r in wandb_inspect(sessions[0], summary=False) if r["type"] == "history"]
    assert [(h["step"], h["eval/return"]) for h in history if "eval/return" in h] == evals(run)[:3]
    resumed = wandb_inspect(sessions[1])
    assert resumed["config"]["steps"] == 120 and resumed["summary"]["step"] == 120
    assert trackers.read_ids(run) == first  # the same ids after the resume


def test_tensorboard_has_the_config_hparams_and_the_dream_video(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run, _ = tracked
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    text = events.Tensors("config/train/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    env:\n      id: dreamer/DummyImage-v0\n" in text and "loggers: tensorboard,wandb,mlflow" in text
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["env.id"].string_value == "dreamer/DummyImage-v0"
    assert start.hparams["model.rssm.deter"].number_value == 64
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(online.HEADLINE)
    assert [e.step for e in events.Scalars("eval/return")] == [32, 40, 80, 120]
    videos = events.Images("dream/openloop")
    assert [v.step for v in videos] == [32, 40, 80, 120]  # one per evaluation
    gif = Image.open(io.BytesIO(videos[-1].encoded_image_string))
    rows = [r["eval/length"] + 1 for r in read_metrics(run) if "eval/length" in r][-1]  # the episode's rows
    assert gif.format == "GIF" and gif.n_frames == min(rows, online.DREAM_CONTEXT + online.DREAM_HORIZON)
    assert gif.size == (videos[-1].width, videos[-1].height) and gif.size[1] == 64


def test_a_vector_env_gets_a_dream_plot_image_that_changes_no_training_number(tmp_path, monkeypatch):
    """The dream runs on a forked RNG: a run with it trains exactly as one without any tracker."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    isolate(monkeypatch, tmp_path)
    weights = {}
    for loggers in ("tensorboard", "none"):
        cfg = online.make_config(str(tmp_path / loggers), ["tiny"], [f"loggers={loggers}"], {
            "env.id": "dreamer/DummyDiscrete-v0", "steps": 48, "prefill": 32, "train_ratio": 8.0, "eval_every": 8,
            "eval_episodes": 1, "threads": 1, "device": "cpu"})
        online.run(cfg, progress=False)
        weights[loggers] = torch.load(tmp_path / loggers / "world_model.pt", weights_only=False)["weights"]
    assert all(torch.equal(weights["tensorboard"][k], weights["none"][k]) for k in weights["none"])
    assert not (tmp_path / "none" / "tb").exists() and not (tmp_path / "none" / trackers.IDS_FILE).exists()
    events = EventAccumulator(str(tmp_path / "tensorboard" / "tb"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("dream/openloop")
    assert [i.step for i in images] == [32, 40, 48]  # each evaluation
    assert Image.open(io.BytesIO(images[-1].encoded_image_string)).format == "PNG"


def test_stages_02_and_03_log_to_their_own_tracker_runs(tracked, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    data, run = tracked[0] / "replay", tmp_path / "wm"
    result = dreamer("train-world-model", data, "--out", run, "--updates", 4, "--preset", "tiny", "-q",
                     "--set", "log_every=2", "--set", "eval_every=0", "--set", "loggers=mlflow")
    assert result.exit_code == 0, result.output
    assert not (run / "tb").exists()  # TensorBoard was not asked for
    result = dreamer("train-behavior", "--run", run, "--updates", 2, "--preset", "tiny", "-q",
                     "--set", "log_every=1", "--set", "loggers=wandb")
    assert result.exit_code == 0, result.output
    ids = trackers.read_ids(run)
    assert set(ids) == {"train-world-model", "train-behavior"}
    client = mlflow_client(run, monkeypatch)
    found = client.get_run(ids["train-world-model"]["mlflow"])
    assert found.info.run_name == "wm/train-world-model" and found.data.params["updates"] == "4"
    assert [m.step for m in client.get_metric_history(found.info.run_id, "wm.loss")] == [2, 4]
    (session,) = (run / "wandb").glob(f"offline-run-*-{ids['train-behavior']['wandb']}")
    summary = wandb_inspect(session)
    assert summary["name"] == "wm/train-behavior" and summary["config"]["updates"] == 2
    assert summary["summary"]["step"] == 2 and "imag/return" in summary["summary"]
