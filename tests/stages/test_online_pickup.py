"""`dreamer train` beside other writers: shards that collectors close in RUN/replay while the run
trains are picked up (once, and never the run's own), learner-only mode trains from such shards
alone and ends at --steps, and a resume loads the shards written while the learner was down."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from dreamer_core import checkpoint
from dreamer_core.data import store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.logging import read_metrics
from dreamer_core.stages import online
from dreamer_core.stages.common import Callback
from tests.common import make_episode

TOY = "dreamer/DummyDiscrete-v0"


def small_config(out: Path, **flags) -> online.TrainConfig:
    base = {"env.id": TOY, "steps": 300, "prefill": 100, "train_ratio": 16.0, "eval_every": 0,
            "eval_episodes": 1, "threads": 1, "device": "cpu"}
    return online.make_config(str(out), ["tiny"], [], base | flags)


def toy_spaces():
    env = make_env(EnvConfig(id=TOY))
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def write_shard(replay: Path, first_id: int, episodes: int = 3, steps: int = 20) -> str:
    """One closed shard of ``episodes`` episodes of ``steps`` env steps, as a collector writes it;
    returns its name."""
    obs, act = toy_spaces()
    before = {p.name for p in store.shard_paths(replay)}
    with DatasetWriter(replay, TOY, {"id": TOY}, obs, act, policy="collector") as writer:
        for i in range(episodes):
            writer.add_episode(make_episode(obs, act, steps, i % 2 == 0, episode_id=first_id + i))
    (name,) = {p.name for p in store.shard_paths(replay)} - before
    return name


def counting_checks(monkeypatch) -> Counter:
    """Count the shards the learner reads to pick them up (by name)."""
    checked: Counter = Counter()
    real = online.OnlineTrainer._check_shard

    def check(self, path):
        checked[Path(path).name] += 1
        return real(self, path)

    monkeypatch.setattr(online.OnlineTrainer, "_check_shard", check)
    return checked


def owed(env_steps: int, cfg: online.TrainConfig) -> int:
    return 1 + int((env_steps - cfg.prefill) * cfg.train_ratio / (cfg.batch_size * cfg.seq_len))


def test_a_shard_closed_while_training_is_picked_up_once_and_counted(tmp_path, monkeypatch):
    run = tmp_path / "run"
    checked = counting_checks(monkeypatch)
    foreign: dict[str, object] = {}

    class Collector(Callback):  # another process closing a shard in RUN/replay after the run started
        def on_update(self, step, metrics):
            if not foreign:
                foreign.update(name=write_shard(run / "replay", first_id=100), step=step)

    # Own shards close every 0.2 s and the replay is listed every 0.05 s: the run's own shards
    # must never be taken for another writer's (their rows are in the replay already).
    cfg = small_config(run, pickup_seconds=0.05, shard_seconds=0.2)
    trainer = online.OnlineTrainer(cfg, progress=False, callbacks=[Collector()])
    try:
        result = trainer.run()
    finally:
        trainer.close()
    assert result["picked_steps"] == 60 and result["picked_episodes"] == 3
    assert checked == {foreign["name"]: 1}  # looked at once; the own shards never
    data = Dataset(run / "replay")
    assert len(data.shards) > 3  # the run closed shards of its own meanwhile
    # Every step once: the replay holds exactly the dataset's rows, env steps and episodes count
    # the collector's too, and the run ended at --steps of them.
    assert trainer.replay.num_rows == data.num_rows and trainer.replay.num_episodes == data.num_episodes
    assert data.num_steps == result["env_steps"] and data.num_episodes == result["episodes"]
    assert result["env_steps"] == 300 and result["updates"] == owed(300, cfg)
    (record,) = [r for r in read_metrics(run) if "pickup/steps" in r]
    assert record["pickup/episodes"] == 3 and record["pickup/steps"] == 60 and record["pickup/shards"] == 1
    assert record["step"] > foreign["step"]
    counters = checkpoint.load(run / online.LATEST, checkpoint.TrainState).counters
    assert counters["picked_steps"] == 60 and counters["dataset_steps"] == data.num_steps


class Collector(threading.Thread):
    """Writes a shard of 60 env steps every ``pause`` seconds into RUN/replay once the run has
    published its weights (as `dreamer collect --policy RUN --follow` would), until stopped."""

    def __init__(self, run: Path, shards: int, pause: float = 0.3, episodes: int = 3):
        super().__init__(daemon=True)
        self.run_dir, self.shards, self.pause, self.episodes = run, shards, pause, episodes
        self.stop = threading.Event()
        self.written: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not (self.run_dir / "behavior.pt").exists() and not self.stop.wait(0.05):
                pass
            for k in range(self.shards):
                if self.stop.is_set():
                    return
                self.written.append(write_shard(self.run_dir / "replay", first_id=10 * k, episodes=self.episodes))
                self.stop.wait(self.pause)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def learn_beside(trainer: online.OnlineTrainer, collector: Collector) -> dict:
    """Run the learner while the collector thread writes; stop and join the collector, check it
    raised nothing; returns the learner's result."""
    collector.start()
    try:
        result = trainer.run()
    finally:
        trainer.close()
        collector.stop.set()
        collector.join(timeout=30)
    assert collector.error is None, collector.error
    return result


def test_learner_only_trains_from_shards_alone_ends_at_steps_and_resumes_with_new_shards(tmp_path):
    run = tmp_path / "run"
    cfg = small_config(run, learner_only=True, pickup_seconds=0.1, publish_seconds=0.5, eval_every=150)
    collector = Collector(run, shards=8)
    trainer = online.OnlineTrainer(cfg, progress=False)
    assert trainer.pool is None  # no env of its own (only the evaluation env)
    start = time.monotonic()
    result = learn_beside(trainer, collector)
    assert time.monotonic() - start < 60
    # Its env steps are the collectors' (whole shards), it ends at --steps, having trained on all of them.
    assert result["env_steps"] >= 300 and result["env_steps"] == result["picked_steps"] and result["env_steps"] % 60 == 0
    assert result["updates"] == owed(result["env_steps"], cfg)
    assert trainer.replay.num_rows == result["env_steps"] + result["episodes"]
    records = read_metrics(run)
    pickups = [r for r in records if "pickup/steps" in r]
    assert sum(r["pickup/steps"] for r in pickups) == result["env_steps"]
    assert pickups[0]["step"] < cfg.prefill  # it waited for data: nothing learned before the prefill
    assert not any("train/return" in r for r in records)  # no episode of its own
    evals = [r["step"] for r in records if "eval/return" in r]
    assert evals and evals[0] >= cfg.prefill and evals[-1] == result["env_steps"]
    assert min(r["step"] for r in records if "wm/loss" in r) >= cfg.prefill
    published = checkpoint.load(run / "behavior.pt", checkpoint.BehaviorArtifact)
    assert published.update == result["updates"]

    # Shards closed while the learner is down are loaded when it resumes (learner-only again,
    # switched on the command line), and counted.
    write_shard(run / "replay", first_id=1000)
    data = Dataset(run / "replay")
    target = data.num_steps
    done = subprocess.run([sys.executable, "-m", "dreamer_core", "train", "--out", str(run), "--resume",
                           "--learner-only", "--steps", str(target), "-q"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "learned from" in done.stdout
    counters = checkpoint.load(run / online.LATEST, checkpoint.TrainState).counters
    assert counters["env_steps"] == target and counters["resumes"] == 1
    assert counters["updates"] == owed(target, cfg) > result["updates"]


def test_learner_only_ends_at_steps_while_collectors_write_faster_than_it_learns(tmp_path):
    """Collectors that outpace the learner cannot keep it running: past --steps it picks up
    nothing more, trains what its env steps owe, and ends."""
    run = tmp_path / "run"
    cfg = small_config(run, learner_only=True, pickup_seconds=0.1, publish_seconds=0.5, train_ratio=64.0)
    collector = Collector(run, shards=300, pause=0.05, episodes=1)  # 6,000 env steps, 20 per shard
    trainer = online.OnlineTrainer(cfg, progress=False)
    result = learn_beside(trainer, collector)
    # What one pickup found past --steps at most (a few shards; slack for a loaded machine), far
    # from what the collector writes while a lagging learner would keep picking it up.
    assert cfg.steps <= result["env_steps"] < cfg.steps + 20 * 60
    assert result["env_steps"] < 20 * len(collector.written)
    assert result["updates"] == owed(result["env_steps"], cfg)


def test_learner_only_goes_through_the_config_machinery(tmp_path):
    def dreamer(*args):
        return subprocess.run([sys.executable, "-m", "dreamer_core", "train", "--env", TOY, "--out",
                               str(tmp_path / "run"), *args], capture_output=True, text=True, timeout=120)

    shown = dreamer("--learner-only", "--set", "publish_seconds=5", "--print-config")
    assert shown.returncode == 0, shown.stderr
    assert "learner_only: true" in shown.stdout and "publish_seconds: 5.0" in shown.stdout
    refused = dreamer("--set", "learner_only=true", "--set", "pickup_seconds=0")
    assert refused.returncode != 0 and "pickup_seconds must be > 0" in refused.stderr
    assert not (tmp_path / "run").exists()
    cfg = small_config(tmp_path / "x", learner_only=True)
    assert cfg.learner_only and np.isclose(cfg.pickup_seconds, 5.0)
