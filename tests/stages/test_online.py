"""`dreamer train`: the online loop, its artifacts, resume after kill -9, learning on a toy env,
and the CLI chain from an online run through stages 02-04, dream and plot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dreamer_core import checkpoint
from dreamer_core.data import store
from dreamer_core.data.dataset import Dataset
from dreamer_core.errors import DreamerError
from dreamer_core.logging import read_metrics
from dreamer_core.runs import load_agent
from dreamer_core.stages import online

TOY = "dreamer/DummyDiscrete-v0"
SMALL = ["--preset", "tiny", "--threads", "1", "-q"]


def dreamer(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dreamer_core", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def small_config(out: Path, **flags) -> online.TrainConfig:
    base = {"env.id": TOY, "steps": 300, "prefill": 100, "train_ratio": 16.0, "eval_every": 0,
            "eval_episodes": 2, "threads": 1, "device": "cpu"}
    return online.make_config(str(out), ["tiny"], [], base | flags)


def train_state(path: Path) -> checkpoint.TrainState:
    return checkpoint.load(path, checkpoint.TrainState)


def evals(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["eval/return"]) for r in read_metrics(run) if "eval/return" in r]


def test_updates_follow_the_train_ratio(tmp_path):
    cfg = small_config(tmp_path / "run")
    trainer = online.OnlineTrainer(cfg, progress=False)
    try:
        rows = cfg.batch_size * cfg.seq_len  # 4 * 16 = 64 replayed steps per update
        for steps, owed in ((0, 0), (99, 0), (100, 1), (103, 1), (104, 2), (164, 17), (300, 51)):
            trainer.env_steps = steps
            assert trainer.updates_owed() == owed == (0 if steps < 100 else 1 + (steps - 100) * 16 // rows)
    finally:
        trainer.close()


def test_online_run_writes_every_artifact(tmp_path):
    run = tmp_path / "run"
    result = online.run(small_config(run, eval_every=100), progress=False)
    assert result["env_steps"] == 300 and not result["interrupted"]
    assert result["updates"] == 1 + (300 - 100) * 16 // 64
    for name in ("world_model.pt", "behavior.pt", "config.yaml", "metrics.jsonl", "checkpoints/online_latest.pt"):
        assert (run / name).exists(), name
    # Every counted env step is in the dataset (the episodes in progress at the end are kept).
    data = Dataset(run / "replay")
    assert data.num_steps == 300 and data.env_ids == [TOY]
    records = read_metrics(run)
    assert [s for s, _ in evals(run)] == [100, 200, 300]  # after prefill, every 100, and once at the end
    assert any("wm/loss" in r and "actor/loss" in r for r in records)
    timing = [r for r in records if "time/world_model" in r][-1]
    assert timing["time/world_model"] > 0 and timing["time/behavior"] > 0 and timing["time/collect"] > 0
    # The artifacts load with the stage 03/04 loaders.
    world_model, agent, artifact = load_agent(run)
    assert artifact.update == result["updates"] and artifact.env_config["id"] == TOY


def test_fresh_run_refuses_an_existing_run_and_resume_needs_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    online.run(small_config(run, steps=150), progress=False)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(DreamerError, match="--resume"):
        online.OnlineTrainer(small_config(run), progress=False)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    with pytest.raises(DreamerError, match="--resume was given, but there is no run at"):
        online.OnlineTrainer(small_config(tmp_path / "missing"), resume=True, progress=False)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(DreamerError, match="prefill"):
        small_config(tmp_path / "x", prefill=4, seq_len=16)
    result = dreamer("train", "--out", tmp_path / "noenv")
    assert result.returncode == 2 and "--env" in result.stderr


def test_resume_continues_counters_and_dataset(tmp_path):
    run = tmp_path / "run"
    first = online.run(small_config(run, steps=200), progress=False)
    shards = {p.name: p.stat().st_mtime_ns for p in store.shard_paths(run / "replay")}
    second = online.run(online.TrainConfig(out=str(run)), resume=True, progress=False, steps=350)
    assert second["env_steps"] == 350 and second["updates"] == 1 + (350 - 100) * 16 // 64 > first["updates"]
    counters = train_state(run / online.LATEST).counters
    assert counters["resumes"] == 1 and counters["env_steps"] == 350
    after = {p.name: p.stat().st_mtime_ns for p in store.shard_paths(run / "replay")}
    assert all(after[name] == mtime for name, mtime in shards.items())  # old shards untouched
    assert Dataset(run / "replay").num_steps == 350
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == sorted(steps)


def test_kill_9_then_resume_keeps_flushed_data_and_counters(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamer_core", "train", "--env", TOY, "--out", str(run), "--steps", "100000000",
         "--prefill", "100", "--train-ratio", "8", "--eval-every", "0", "--checkpoint-seconds", "1",
         "--set", "shard_seconds=0.5", *SMALL],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    latest = run / online.LATEST
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode())
            if latest.exists() and train_state(latest).counters["updates"] >= 5 and \
                    len(store.shard_paths(run / "replay")) >= 3:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no checkpoint with 5 updates after 120 s")
        time.sleep(0.7)  # land somewhere between checkpoints
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = train_state(latest).counters
    flushed = Dataset(run / "replay")
    shards = {p.name: p.stat().st_mtime_ns for p in store.shard_paths(run / "replay")}
    assert flushed.num_steps >= saved["dataset_steps"]
    target = flushed.num_steps + 200
    result = dreamer("train", "--out", run, "--resume", "--steps", target, "-q")
    assert result.returncode == 0, result.stderr
    resumed = train_state(latest).counters
    assert resumed["env_steps"] == target and resumed["resumes"] == 1
    assert resumed["updates"] > saved["updates"]
    after = {p.name: p.stat().st_mtime_ns for p in store.shard_paths(run / "replay")}
    assert all(after[name] == mtime for name, mtime in shards.items())  # nothing flushed was lost or rewritten
    data = Dataset(run / "replay")
    assert data.num_steps == target and data.num_episodes == resumed["episodes"]  # the replay is the counter
    records = read_metrics(run)
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)  # records past the flushed data were dropped, then logged again
    returns = [r["step"] for r in records if "train/return" in r]
    assert len(returns) == len(set(returns))  # no episode logged twice
    assert data.num_episodes - 1 <= len(returns) <= data.num_episodes  # only the one cut at the end has none
    assert not list(run.rglob(".*.tmp")) and not (run / ".lock").exists()


def test_online_learning_improves_the_toy_return(tmp_path):
    """DummyDiscrete pays 1 per step for the action its observation reveals (random: 1/3)."""
    run = tmp_path / "run"
    cfg = small_config(run, steps=1500, prefill=200, train_ratio=32.0, eval_every=1300, eval_episodes=10)
    online.run(cfg, progress=False)
    (s0, first), *_, (_, last) = evals(run)
    assert s0 == 200
    assert last >= 1.5 * first and last >= 12.0, evals(run)


def test_cli_chain_from_an_online_run(tmp_path):
    run = tmp_path / "run"
    start = time.monotonic()
    result = dreamer("train", "--env", TOY, "--out", run, "--steps", 250, "--prefill", 100, "--train-ratio", 16,
                     "--eval-every", 100, "--eval-episodes", 2, *SMALL)
    assert result.returncode == 0, result.stderr
    assert "eval return" in result.stdout and str(run / "replay") in result.stdout
    result = dreamer("evaluate", "--run", run, "--episodes", 2, "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(next((run / "eval").glob("*/report.json")).read_text())
    assert len(report["returns"]) == 2
    result = dreamer("plot", run)
    assert result.returncode == 0 and (run / "curve.png").stat().st_size > 1000, result.stderr
    result = dreamer("dream", "--run", run, "--out", tmp_path / "dream.gif", "--horizon", 10)
    assert result.returncode == 0, result.stderr
    result = dreamer("collect", "--env", TOY, "--policy", run, "--out", tmp_path / "agent-data", "--steps", 50, "-q")
    assert result.returncode == 0, result.stderr
    result = dreamer("train-world-model", run / "replay", "--out", tmp_path / "offline", "--updates", 5,
                     "--preset", "tiny", "-q")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 120


def test_replay_context_starts_windows_from_the_stored_latent():
    import torch

    from dreamer_core.nets.rssm import RSSMState
    from dreamer_core.world_model import ReplayContext
    from tests.common import tiny_world_model

    world_model = tiny_world_model()  # deter 16, 4 categoricals of 4 classes
    context = ReplayContext(world_model)
    is_first = torch.zeros(3, 4, dtype=torch.bool)
    assert context.initial_state(np.array([1, 5, 9]) - 1, is_first) is None  # nothing stored yet
    deter = torch.randn(2, 4, 16)
    stoch = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 4, 4)), 4).float()
    context.store(np.array([[0, 1, 2, 3], [10, 11, 12, 13]]), RSSMState(deter, stoch))
    is_first[1, 0] = True
    state = context.initial_state(np.array([4, 11, 12]) - 1, is_first)
    init = world_model.initial_state(3)
    torch.testing.assert_close(state.deter[0], deter[0, 3])  # window at row 4 continues from row 3
    torch.testing.assert_close(state.stoch[0], stoch[0, 3])
    torch.testing.assert_close(state.deter[1], init.deter[1])  # row 11 starts an episode: initial state
    torch.testing.assert_close(state.deter[2], deter[1, 1])  # row 12 continues from row 11
    unseen = context.initial_state(np.array([0, 7, 20]) - 1, torch.zeros(3, 4, dtype=torch.bool))
    assert unseen is None  # row 0 has no predecessor; rows 6 and 19 were never replayed


def test_online_run_with_replay_context(tmp_path):
    trainer = online.OnlineTrainer(small_config(tmp_path / "run", replay_context=True), progress=False)
    try:
        result = trainer.run()
    finally:
        trainer.close()
    assert result["updates"] == 51
    assert trainer.context.valid[: trainer.replay.num_rows].mean() > 0.5  # most rows were replayed
    # every step entered the replay as it happened, once: it holds exactly the dataset's rows
    dataset = Dataset(tmp_path / "run" / "replay")
    assert trainer.replay.num_rows == dataset.num_steps + dataset.num_episodes
    assert trainer.replay.num_episodes == dataset.num_episodes


def test_sigterm_stops_cleanly_and_resume_refuses_config_changes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamer_core", "train", "--env", TOY, "--out", str(run), "--steps", "100000000",
         "--prefill", "100", "--train-ratio", "8", "--eval-every", "0", "--checkpoint-seconds", "1", *SMALL],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    latest = run / online.LATEST
    deadline = time.monotonic() + 120
    while not latest.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in out and "--resume" in out
    saved = train_state(latest).counters
    assert Dataset(run / "replay").num_steps == saved["env_steps"] == saved["dataset_steps"]  # nothing in flight lost
    result = dreamer("train", "--out", run, "--resume", "--env", "CartPole-v1", "--steps", 10)
    assert result.returncode == 2 and "env.id" in result.stderr and "--steps" in result.stderr
    assert train_state(latest).counters["env_steps"] == saved["env_steps"]  # refused before touching anything


def test_non_finite_losses_stop_the_run_and_keep_the_data(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = online.OnlineTrainer(small_config(run, steps=400), progress=False)
    real = online.world_model_update
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # finite for 10 updates, then NaN forever
        calls["n"] += 1
        return real(*args, **kwargs) if calls["n"] <= 10 else (False, {}, None)

    monkeypatch.setattr(online, "world_model_update", poisoned)
    try:
        with pytest.raises(DreamerError, match="non-finite"):
            trainer.run()
    finally:
        trainer.close()
    assert trainer.updates == 10 + online.MAX_NONFINITE
    assert Dataset(run / "replay").num_episodes > 0  # finished episodes were flushed, not dropped


def test_two_parallel_envs_fill_one_dataset(tmp_path):
    run = tmp_path / "run"
    result = online.run(small_config(run, num_envs=2, steps=200), progress=False)
    assert result["env_steps"] in (200, 201)  # both envs step together: the last batch may overshoot by one
    assert Dataset(run / "replay").num_steps == result["env_steps"]
