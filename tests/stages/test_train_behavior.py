"""Stages 03 and 04 and the agent policy, through the real CLI where it matters: artifacts,
a frozen world model, resume equality, refusals, evaluation reports and videos, collecting
with --policy RUN, and the whole chain on a tiny env."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dreamer_core.cli import app
from dreamer_core.data.dataset import Dataset
from dreamer_core.logging import read_metrics
from dreamer_core.policies import AgentPolicy
from dreamer_core.runs import load_agent
from dreamer_core.stages import train_behavior as stage
from dreamer_core.world_model import WorldModel

runner = CliRunner()
TINY = ["--preset", "tiny", "-q"]
ROOT = Path(__file__).resolve().parents[2]


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


def make_run(tmp_path_factory, env, name, steps=600):
    base = tmp_path_factory.mktemp(name)
    data, run = base / "data", base / "run"
    assert dreamer("collect", "--env", env, "--out", data, "--steps", steps, "-q").exit_code == 0
    result = dreamer("train-world-model", data, "--out", run, "--updates", 10, *TINY)
    assert result.exit_code == 0, result.output
    return data, run


@pytest.fixture(scope="module")
def discrete_run(tmp_path_factory):
    return make_run(tmp_path_factory, "dreamer/DummyDiscrete-v0", "discrete")


@pytest.fixture(scope="module")
def trained_agent(tmp_path_factory):
    data, run = make_run(tmp_path_factory, "dreamer/DummyDiscrete-v0", "agent")
    result = dreamer("train-behavior", "--run", run, "--updates", 6, *TINY, "--set", "log_every=3")
    assert result.exit_code == 0, result.output
    return data, run


def state_of(path):
    model, _ = WorldModel.load(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_train_behavior_writes_artifacts_and_leaves_the_world_model_alone(discrete_run, tmp_path):
    data, run = discrete_run
    before_file = (run / "world_model.pt").read_bytes()
    trainer = stage.BehaviorTrainer(stage.make_config(str(run), [], ["tiny"], ["log_every=2"], {"updates": 4}),
                                    progress=False)
    before = {k: v.clone() for k, v in trainer.world_model.state_dict().items()}
    assert all(not p.requires_grad for p in trainer.world_model.parameters())
    actor_before = [p.clone() for p in trainer.agent.actor.parameters()]
    trainer.run()
    after = trainer.world_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in trainer.world_model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, trainer.agent.actor.parameters()))
    assert (run / "world_model.pt").read_bytes() == before_file
    for name in ("behavior.pt", "checkpoints/behavior_latest.pt", "config.yaml", "behavior_metrics.jsonl"):
        assert (run / name).exists(), name
    records = read_metrics(run, stage.METRICS)
    assert [r["step"] for r in records] == [2, 4]
    for key in ("actor/loss", "actor/entropy", "critic/loss", "critic/value", "imag/return", "critic/replay_loss"):
        assert np.isfinite(records[-1][key]), key
    # stage 02's metrics file is untouched by stage 03
    assert all("actor/loss" not in r for r in read_metrics(run))
    # the defaults follow the world model: the tiny run's batch shape and head size
    assert trainer.cfg.batch_size == 4 and trainer.cfg.seq_len == 16 and trainer.cfg.behavior.actor.units == 64
    # refuses to overwrite without --resume
    blob = (run / "behavior.pt").read_bytes()
    result = dreamer("train-behavior", "--run", run, "--updates", 4, "-q")
    assert result.exit_code == 2 and "--resume" in result.output and "Traceback" not in result.output
    assert (run / "behavior.pt").read_bytes() == blob


def test_behavior_resume_reproduces_an_uninterrupted_run(discrete_run, tmp_path):
    data, run = discrete_run
    results = {}
    for name in ("a", "b"):
        copy = tmp_path / name
        copy.mkdir()
        (copy / "world_model.pt").write_bytes((run / "world_model.pt").read_bytes())
        args = ["--dataset", data, *TINY, "--set", "log_every=1", "--set", "checkpoint_every=3"]
        if name == "a":
            assert dreamer("train-behavior", "--run", copy, "--updates", 6, *args).exit_code == 0
        else:
            assert dreamer("train-behavior", "--run", copy, "--updates", 3, *args).exit_code == 0
            result = dreamer("train-behavior", "--run", copy, "--updates", 6, "--resume", "-q")
            assert result.exit_code == 0, result.output
        results[name] = [(r["actor/loss"], r["critic/loss"]) for r in read_metrics(copy, stage.METRICS)]
    assert len(results["a"]) == 6 and results["a"] == results["b"]


def test_incompatible_inputs_are_refused(discrete_run, tmp_path):
    data, run = discrete_run
    other = tmp_path / "cartpole"
    assert dreamer("collect", "--env", "CartPole-v1", "--out", other, "--steps", 200, "-q").exit_code == 0
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "world_model.pt").write_bytes((run / "world_model.pt").read_bytes())
    result = dreamer("train-behavior", "--run", copy, "--dataset", other, "--updates", 2, "-q")
    assert result.exit_code == 2 and "does not fit the checkpoint" in result.output
    assert not (copy / "behavior.pt").exists()
    result = dreamer("train-behavior", "--run", tmp_path / "nothing", "--updates", 2, "-q")
    assert result.exit_code == 2 and "train-world-model" in result.output
    # a recorded dataset that moved: a clear pointer to --dataset
    cfg = stage.make_config(str(copy), [str(tmp_path / "moved")], ["tiny"], [], {"updates": 2})
    with pytest.raises(Exception, match="--dataset"):
        stage.BehaviorTrainer(cfg, progress=False)


def test_agent_policy_is_batched_and_resets_on_episode_start(trained_agent):
    data, run = trained_agent
    world_model, agent, artifact = load_agent(run)
    policy = AgentPolicy(world_model, agent, num_envs=3, mode="mode", seed=0)
    obs = {"vector": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    first = policy.act(obs, np.ones(3, dtype=bool))
    assert first.shape == (3,) and first.dtype == np.int64 and ((first >= 0) & (first < 3)).all()
    deter_after_first = policy.state.deter.clone()
    policy.act(obs, np.zeros(3, dtype=bool))  # the state moves on...
    assert not torch.equal(policy.state.deter, deter_after_first)
    policy.act(obs, np.array([True, False, False]))  # ...and env 0 starts over
    torch.testing.assert_close(policy.state.deter[0], deter_after_first[0])
    assert artifact.env_config["id"] == "dreamer/DummyDiscrete-v0"


def test_collect_with_the_agent_policy(trained_agent, tmp_path):
    data, run = trained_agent
    out = tmp_path / "onpolicy"
    result = dreamer("collect", "--env", "dreamer/DummyDiscrete-v0", "--out", out, "--steps", 120,
                     "--num-envs", 2, "--policy", run, "-q")
    assert result.exit_code == 0, result.output
    ds = Dataset(out)
    assert ds.num_steps == 120 and any(p.startswith("agent:") for p in ds.summary()["policies"])
    # an env whose spaces do not fit the agent is refused
    result = dreamer("collect", "--env", "CartPole-v1", "--out", tmp_path / "bad", "--steps", 10, "--policy", run, "-q")
    assert result.exit_code == 2 and "does not fit" in result.output


def test_evaluate_writes_a_report_plot_and_videos(trained_agent):
    data, run = trained_agent
    result = dreamer("evaluate", "--run", run, "--episodes", 3, "--video", "--set", "video_episodes=2", "-q")
    assert result.exit_code == 0, result.output
    folder = sorted((run / "eval").iterdir())[-1]
    report = json.loads((folder / "report.json").read_text())
    for key in ("returns", "lengths", "return_mean", "return_std", "return_min", "return_max", "seed", "mode",
                "episode_seeds", "env_id"):
        assert key in report, key
    assert len(report["returns"]) == 3 and report["mode"] == "mode" and report["env_id"] == "dreamer/DummyDiscrete-v0"
    assert report["return_min"] <= report["return_mean"] <= report["return_max"]
    assert np.isclose(report["return_mean"], np.mean(report["returns"]))
    assert (folder / "returns.png").stat().st_size > 0
    videos = sorted(folder.glob("episode_*.gif"))
    assert len(videos) == 2
    from PIL import Image

    with Image.open(videos[0]) as gif:
        assert gif.n_frames == report["lengths"][0] + 1  # the reset frame plus one per step
    # same seed and greedy actions: the same returns; earlier reports are kept
    again = dreamer("evaluate", "--run", run, "--episodes", 3, "-q")
    assert again.exit_code == 0
    folders = sorted((run / "eval").iterdir())
    assert len(folders) >= 2 and (folder / "report.json").exists()
    assert json.loads((folders[-1] / "report.json").read_text())["returns"] == report["returns"]


def test_evaluate_refuses_bad_input(trained_agent, tmp_path):
    data, run = trained_agent
    result = dreamer("evaluate", "--run", run, "--env", "CartPole-v1", "--episodes", 1, "-q")
    assert result.exit_code == 2 and "does not fit" in result.output
    result = dreamer("evaluate", "--run", run, "--env", "NoSuchEnv-v9", "--episodes", 1, "-q")
    assert result.exit_code == 2 and "NoSuchEnv-v9" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = dreamer("evaluate", "--run", empty, "-q")
    assert result.exit_code == 2 and "train-behavior" in result.output


def test_continuous_image_chain_and_mp4(tmp_path_factory):
    data, run = make_run(tmp_path_factory, "dreamer/DummyContinuous-v0", "continuous")
    assert dreamer("train-behavior", "--run", run, "--updates", 3, *TINY).exit_code == 0
    result = dreamer("evaluate", "--run", run, "--episodes", 1, "--video", "--video-format", "mp4", "--mode", "sample", "-q")
    assert result.exit_code == 0, result.output
    folder = sorted((run / "eval").iterdir())[-1]
    assert (folder / "episode_000.mp4").stat().st_size > 0
    assert json.loads((folder / "report.json").read_text())["mode"] == "sample"


def test_four_stage_scripts_end_to_end(tmp_path):
    """collect -> train-world-model -> train-behavior -> evaluate through the thin scripts."""
    data, run = tmp_path / "data", tmp_path / "run"
    steps = [
        ["01_collect.py", "--env", "dreamer/DummyImage-v0", "--out", data, "--steps", 300, "-q"],
        ["02_train_world_model.py", data, "--out", run, "--updates", 5, *TINY],
        ["03_train_behavior.py", "--run", run, "--updates", 5, *TINY],
        ["04_evaluate.py", "--run", run, "--episodes", 2, "--video", "-q"],
    ]
    for script, *args in steps:
        proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, (script, proc.stderr[-2000:])
    assert "evaluated 2 episodes" in proc.stdout


def test_behavior_defaults_follow_the_variant_of_the_world_model(discrete_run, tmp_path):
    data, _ = discrete_run
    runs = {}
    for name, presets in (("v3", []), ("v2025", ["--preset", "dreamerv3-2025"]), ("v2", ["--preset", "dreamerv2"])):
        runs[name] = tmp_path / name
        result = dreamer("train-world-model", data, "--out", runs[name], "--updates", 2, *TINY, *presets)
        assert result.exit_code == 0, result.output
    v3, v2025, v2 = (stage.make_config(str(runs[n]), [], [], [], {}).behavior for n in ("v3", "v2025", "v2"))
    assert (v3.norm, v3.actor.grad, v3.actor_optim.name) == ("layer", "auto", "adam")
    assert (v2025.norm, v2025.actor.grad, v2025.actor_optim.name, v2025.actor_optim.warmup) == \
        ("rms", "reinforce", "laprop", 1000)
    assert (v2.critic.head, v2.retnorm.mode) == ("mse", "none")
