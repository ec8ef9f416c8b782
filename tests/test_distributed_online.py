"""Data-parallel `dreamer train` (stages/online.py under torchrun): every rank's episodes are
in RUN/replay exactly once, rank 0 alone writes the run, env steps count over the ranks, the
weights stay equal on every rank, a shard another process closes is picked up by all ranks
alike, and a 2-rank --resume continues. Also the step exchange itself
(``distributed.ArrayExchange``) on 2 ranks.

All on CPU with gloo on 127.0.0.1 (a free port each time)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dreamer_core import checkpoint, distributed
from dreamer_core.data import store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.logging import read_metrics
from dreamer_core.stages import online
from tests.common import make_episode
from tests.test_distributed import free_port

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

ENV = "CartPole-v1"
STEPS, PREFILL, RATIO = 300, 100, 16  # tiny preset: batch 4 x 16 per rank, so 2 ranks replay 128 steps per update
FOREIGN_STEPS = 60  # the shard another process writes during the first run (3 episodes of 20 steps)


def _torchrun(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # an abort prints where it happened
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "dreamer_core", "train", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _write_foreign_shard(replay: Path, first_id: int) -> str:
    """A shard as a collector following the run writes it (CartPole's spaces); returns its name."""
    env = make_env(EnvConfig(id=ENV))
    obs, act = env.observation_space, env.action_space
    env.close()
    before = {p.name for p in store.shard_paths(replay)}
    with DatasetWriter(replay, ENV, {"id": ENV}, obs, act, policy="collector") as writer:
        for i in range(3):
            writer.add_episode(make_episode(obs, act, 20, True, episode_id=first_id + i))
    (name,) = {p.name for p in store.shard_paths(replay)} - before
    return name


def _state(run: Path) -> checkpoint.TrainState:
    return checkpoint.load(run / online.LATEST, checkpoint.TrainState)


def _fingerprint(episode) -> str:
    return hashlib.sha256(episode.obs["vector"].tobytes() + episode.action.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    """A 2-rank run of STEPS env steps; a 'collector' closes one shard in its replay while it trains."""
    run = tmp_path_factory.mktemp("ddp-online") / "run"
    found: dict = {}

    def collector() -> None:  # starts once the run published its first weights
        stop = threading.Event()
        while not (run / "behavior.pt").exists() and not found.get("stop"):
            stop.wait(0.05)
        if not found.get("stop"):
            found["name"] = _write_foreign_shard(run / "replay", first_id=500)

    thread = threading.Thread(target=collector, daemon=True)
    thread.start()
    try:
        done = _torchrun("--env", ENV, "--out", run, "--steps", STEPS, "--prefill", PREFILL, "--train-ratio", RATIO,
                         "--eval-every", 0, "--eval-episodes", 1, "--preset", "tiny", "--threads", 1,
                         "--checkpoint-seconds", 1, "--set", "log_every=50", "--set", "shard_seconds=0.3",
                         "--set", "pickup_seconds=0.2", "-q")
    finally:
        found["stop"] = True
        thread.join(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"run": run, "done": done, "foreign": found.get("name")}


def test_every_ranks_episodes_are_stored_once_and_rank_0_alone_writes_the_run(ddp_run):
    run, done = ddp_run["run"], ddp_run["done"]
    assert "data-parallel: 2 ranks (gloo) x batch 4 = global batch 8" in done.stderr
    assert done.stdout.count("trained ") == 1  # one summary: rank 0's
    counters = _state(run).counters
    ranks = counters["ranks"]
    assert len(ranks) == 2 and all(r["episodes"] > 0 and r["steps"] > 0 for r in ranks)
    # The collector's shard was picked up while the run trained (by every rank alike: they
    # still hold equal weights, below), its steps counted with the ranks'.
    assert ddp_run["foreign"] is not None and counters["picked_steps"] == FOREIGN_STEPS
    env_steps = counters["env_steps"]
    assert STEPS <= env_steps <= STEPS + 2  # the ranks step together: the last step may overshoot
    assert env_steps == sum(r["steps"] for r in ranks) + FOREIGN_STEPS
    assert counters["updates"] == 1 + (env_steps - PREFILL) * RATIO // (2 * 4 * 16)  # the global batch
    # Each rank's shards hold its own episodes: disjoint, together the whole dataset with the collector's.
    data = Dataset(run / "replay")
    by_rank = [set(r["shards"]) for r in ranks]
    assert not by_rank[0] & by_rank[1]
    assert {s.name for s in data.shards} == by_rank[0] | by_rank[1] | {ddp_run["foreign"]}
    for rank, names in enumerate(by_rank):
        shards = [s for s in data.shards if s.name in names]
        assert {s.policy for s in shards} == {f"online:{run} rank {rank} of 2"}
        assert sum(s.num_episodes for s in shards) == ranks[rank]["episodes"]
        assert sum(s.num_steps for s in shards) == ranks[rank]["steps"]
    assert data.num_steps == env_steps and data.num_episodes == counters["episodes"]
    prints = [_fingerprint(e) for e in data.iter_episodes()]
    assert len(set(prints)) == len(prints)  # no episode stored twice
    # Rank 0 alone wrote metrics, configs, trackers, checkpoints and artifacts.
    assert sorted(p.name for p in run.iterdir()) == ["behavior.pt", "checkpoints", "config.yaml", "metrics.jsonl",
                                                     "replay", "run.json", "tb", "world_model.pt"]
    assert "world_size: 2" in (run / "config.yaml").read_text()
    records = read_metrics(run)
    returns = [r for r in records if "train/return" in r]
    own_episodes = counters["episodes"] - counters["picked_episodes"]
    assert own_episodes - 2 <= len(returns) <= own_episodes  # each finished episode logged once (2 cut at the end)
    assert [r["pickup/steps"] for r in records if "pickup/steps" in r] == [FOREIGN_STEPS]
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)


def test_the_weights_stay_identical_on_every_rank(ddp_run):
    state = _state(ddp_run["run"])
    digests = [r["digest"] for r in state.counters["ranks"]]  # every rank's weights, gathered at each checkpoint
    assert len(digests) == 2 and digests[0] == digests[1]
    assert state.counters["updates"] > 10
    assert "weights differ" not in ddp_run["done"].stderr
    samplers = [r["replay_sampler"] for r in state.rng["ranks"]]
    assert str(samplers[0]) != str(samplers[1])  # each rank drew its own windows
    assert str(samplers[0]) == str(state.rng["replay_sampler"])


def test_a_two_rank_resume_continues_with_the_shards_written_meanwhile(ddp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ddp_run["run"], run)  # the whole run (its identity included): the fixture stays as it was
    before = _state(run).counters
    shards = {p.name: p.stat().st_mtime_ns for p in store.shard_paths(run / "replay")}
    _write_foreign_shard(run / "replay", first_id=900)  # closed while the run was down
    done = _torchrun("--out", run, "--resume", "--steps", before["env_steps"] + FOREIGN_STEPS + 100, "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    counters = _state(run).counters
    assert counters["resumes"] == 1 and counters["updates"] > before["updates"]
    assert before["env_steps"] + FOREIGN_STEPS + 100 <= counters["env_steps"] <= before["env_steps"] + FOREIGN_STEPS + 102
    assert counters["ranks"][0]["digest"] == counters["ranks"][1]["digest"]
    data = Dataset(run / "replay")
    assert data.num_steps == counters["env_steps"] and data.num_episodes == counters["episodes"]
    after = {p.name: p.stat().st_mtime_ns for p in store.shard_paths(run / "replay")}
    assert all(after[name] == mtime for name, mtime in shards.items())  # nothing rewritten
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == sorted(steps)


# --- the step exchange --------------------------------------------------------------------------


def _exchange_rank(rank: int, world_size: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        exchange = distributed.ArrayExchange(distributed.init(torch.device("cpu")))
        results = []
        for call, rows in enumerate([(2, 2), (1, 3), (1, 1), (0, 0), (5, 1)]):  # uneven, empty, growing
            n = rows[rank]
            arrays = {"obs": np.full((n, 2, 3), 10 * rank + call, np.uint8),
                      "value": np.arange(n, dtype=np.float64) + rank, "flag": np.ones(n, bool) * bool(rank),
                      "steps": np.array([n], np.int64)}
            results.append((exchange(arrays), exchange.capacity))
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_the_array_exchange_gives_every_rank_every_ranks_rows_in_rank_order(tmp_path):
    mp.spawn(_exchange_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    capacities = []
    for call, rows in enumerate([(2, 2), (1, 3), (1, 1), (0, 0), (5, 1)]):
        (parts0, cap0), (parts1, cap1) = ranks[0][call], ranks[1][call]
        assert cap0 == cap1  # the ranks agree on the capacity
        capacities.append(cap0)
        for parts in (parts0, parts1):
            assert len(parts) == 2
            for r, part in enumerate(parts):
                n = rows[r]
                np.testing.assert_array_equal(part["obs"], np.full((n, 2, 3), 10 * r + call, np.uint8))
                np.testing.assert_array_equal(part["value"], np.arange(n, dtype=np.float64) + r)
                assert part["flag"].dtype == bool and part["flag"].shape == (n,) and (part["flag"] == bool(r)).all()
                assert part["steps"].tolist() == [n]
    assert capacities == sorted(capacities) and capacities[-1] > capacities[0]  # grows when a rank needs more


def test_a_two_rank_learner_only_resume_learns_from_collectors_shards(ddp_run, tmp_path):
    """Both ranks step no envs: they wait for a collector's shard, pick it up alike, train on it
    and end at --steps."""
    run = tmp_path / "run"
    shutil.copytree(ddp_run["run"], run)
    before = _state(run).counters
    written: list[str] = []

    config = (run / "config.yaml").stat().st_mtime_ns

    def collector() -> None:  # a shard once the learner runs (it wrote its config), another a moment later
        stop = threading.Event()
        deadline = time.monotonic() + 120
        while (run / "config.yaml").stat().st_mtime_ns == config and time.monotonic() < deadline:
            stop.wait(0.05)
        for k in range(2):
            stop.wait(1.0)
            written.append(_write_foreign_shard(run / "replay", first_id=2000 + 10 * k))

    thread = threading.Thread(target=collector, daemon=True)
    thread.start()
    target = before["env_steps"] + 2 * FOREIGN_STEPS
    done = _torchrun("--out", run, "--resume", "--learner-only", "--steps", target, "-q")
    thread.join(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "learned from" in done.stdout
    counters = _state(run).counters
    assert counters["env_steps"] == target and counters["picked_steps"] == before["picked_steps"] + 2 * FOREIGN_STEPS
    assert counters["updates"] == 1 + (target - PREFILL) * RATIO // (2 * 4 * 16)
    assert counters["ranks"][0]["digest"] == counters["ranks"][1]["digest"]
    assert all(r["episodes"] == 0 for r in counters["ranks"])  # no env of their own
    assert Dataset(run / "replay").num_steps == target
