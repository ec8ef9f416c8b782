"""Data-parallel stage 02 (dreamer_core/distributed.py): 2 ranks with batch B/2 each train the
same parameters as 1 rank with batch B, and ``torchrun --nproc-per-node 2 dreamer
train-world-model`` trains, writes from rank 0 only, and resumes every rank's own streams.

Both run on CPU with gloo on 127.0.0.1 (a free port each time)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dreamer_core import checkpoint, distributed
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.logging import read_metrics
from dreamer_core.nets.distributions import OneHotDist
from dreamer_core.optim import make_optimizer
from dreamer_core.stages import train_world_model as stage
from dreamer_core.stages.updates import world_model_update
from dreamer_core.world_model import WorldModel
from tests.common import ACTION_SPACES, OBS_SPACES, make_episode

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

B, UPDATES = 8, 3  # global batch, updates compared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "data"
    obs, act = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    with DatasetWriter(path, "Synthetic-v0", {"id": "Synthetic-v0"}, obs, act) as w:
        for i in range(8):
            w.add_episode(make_episode(obs, act, 40, i % 2 == 0, episode_id=i))
    return path


def _deterministic_latents() -> None:
    """Latents take the class of highest probability instead of a random sample: the loss is
    then a function of each window alone. (Random samples cannot match: one rank draws noise
    for B windows in one stream, two ranks draw B/2 each from their own.)"""
    OneHotDist.sample_with_index = lambda self, generator=None: self.mode_with_index()


def _train(data: Path, rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """UPDATES world-model updates of the tiny preset; this rank takes its share of each fixed
    global batch of B windows."""
    _deterministic_latents()
    torch.set_num_threads(1)
    cfg = stage.make_config([str(data)], "unused", ["tiny"], [], {})
    torch.manual_seed(0)
    ctx = distributed.init(torch.device("cpu"))
    sampler = SequenceSampler(Dataset(data), B, cfg.seq_len, seed=0)
    model = WorldModel(cfg.model, sampler.observation_space, sampler.action_space)
    ctx.broadcast_module(model)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    starts = np.random.default_rng(0).integers(0, sampler.num_rows - cfg.seq_len + 1, size=(UPDATES, B))
    share = B // world_size
    for update in range(UPDATES):
        batch = sampler.gather(starts[update, rank * share:(rank + 1) * share])
        ok, _, _ = world_model_update(model, optimizer, cfg.optim, update, batch, dist=ctx)
        assert ok
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if ctx.active:  # a non-finite loss on rank 1 alone skips the update on every rank
        loss = model.loss
        if rank == 1:
            model.loss = lambda batch, state=None: (lambda out: (out[0] * float("nan"), *out[1:]))(loss(batch, state))
        ok, _, _ = world_model_update(model, optimizer, cfg.optim, UPDATES, batch, dist=ctx)
        assert not ok
        assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    return params


def _rank(rank: int, world_size: int, port: int, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        params = _train(Path(data), rank, world_size)
        torch.save(params, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_half_batches_match_one_rank_with_the_full_batch(dataset, tmp_path):
    """The mean loss over B windows is the average of two means over B/2 (the world model's
    losses are per-window means; layer norms work per sample), so the averaged gradient is the
    full-batch gradient up to float32 rounding (another summation order: ~1e-7 relative). Adam
    turns a gradient g into about lr * g / (|g| + eps), which keeps a relative error relative
    (below eps the step is ~0 anyway), so the parameters agree to far below one update's size
    (lr = 1e-4 per entry): atol 1e-6 is 1% of one step (measured: ~3e-8 after 3 updates), while
    other data or a missing all-reduce moves entries by ~lr."""
    original = OneHotDist.sample_with_index
    try:
        single = _train(dataset, 0, 1)
    finally:
        OneHotDist.sample_with_index = original
    mp.spawn(_rank, args=(2, free_port(), str(dataset), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    worst = 0.0
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), f"the ranks diverged at {key}"
        if value.is_floating_point():
            worst = max(worst, float((ranks[0][key] - value).abs().max()))
    print(f"largest parameter difference after {UPDATES} updates: {worst:.3g}")
    assert worst <= 1e-6, worst
    moved = max(float((single[k] - v).abs().max()) for k, v in _initial(dataset).items() if v.is_floating_point())
    assert moved > 10 * worst  # the comparison is not trivially met by parameters that did not move


def _initial(data: Path) -> dict[str, torch.Tensor]:
    cfg = stage.make_config([str(data)], "unused", ["tiny"], [], {})
    torch.manual_seed(0)
    ds = Dataset(data)
    return WorldModel(cfg.model, ds.observation_space, ds.action_space).state_dict()


def _torchrun(*args: object, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # an abort prints where it happened
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "dreamer_core", "train-world-model", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_torchrun_trains_writes_from_rank_0_only_and_resumes_every_rank(dataset, tmp_path):
    run = tmp_path / "run"
    common = ["--threads", "1", "--set", "log_every=1", "--set", "checkpoint_every=2", "--set", "eval_every=1000", "-q"]
    done = _torchrun(dataset, "--out", run, "--updates", 4, "--preset", "tiny", *common, port=free_port())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 ranks (gloo) x batch 4 = global batch 8" in done.stderr
    done = _torchrun("--out", run, "--updates", 6, "--resume", "-q", port=free_port())  # the stored config
    assert done.returncode == 0, done.stdout + done.stderr
    # one writer: every update logged once, one lock taken and released, nothing else written
    assert [r["step"] for r in read_metrics(run) if "wm/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "run.json", "tb",
                                                     "world_model.pt"]
    assert "world_size: 2" in (run / "config.yaml").read_text()
    state = checkpoint.load(run / "checkpoints" / "latest.pt", checkpoint.TrainState)
    assert state.counters["update"] == 6
    samplers = [r["sampler"] for r in state.rng["ranks"]]
    assert len(samplers) == 2 and str(samplers[0]) != str(samplers[1])  # each rank kept its own stream
    assert str(samplers[0]) == str(state.rng["sampler"])
