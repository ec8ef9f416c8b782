"""Data-parallel stage 03 (dreamer_core/distributed.py, stages/updates.behavior_update): 2 ranks
with batch B/2 each train the same actor-critic as 1 rank with batch B (the return normaliser
included), a non-finite loss on one rank skips the update on both, ``torchrun
--nproc-per-node 2 dreamer train-behavior`` trains, writes from rank 0 only and resumes every
rank's own streams, and the World Models controller search is refused under torchrun.

Everything runs on CPU with gloo on 127.0.0.1 (a free port each time); the helpers and the
synthetic dataset come from tests/test_distributed.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from typer.testing import CliRunner

from dreamer_core import checkpoint, distributed
from dreamer_core.behavior import ActorCritic
from dreamer_core.cli import app
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.logging import read_metrics
from dreamer_core.nets.distributions import OneHotDist
from dreamer_core.optim import make_optimizer
from dreamer_core.runs import WORLD_MODEL, freeze
from dreamer_core.stages import train_behavior as stage
from dreamer_core.stages.updates import behavior_update
from dreamer_core.world_model import WorldModel
from dreamer_core.worldmodels import VaeMdnWorldModel, WorldModelsConfig
from tests.common import ACTION_SPACES, OBS_SPACES
from tests.test_distributed import _deterministic_latents, dataset, free_port  # noqa: F401 (dataset: a fixture)

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

B, UPDATES = 8, 3  # global batch, updates compared
GRADS = ("reinforce", "dynamics")  # the two actor gradients (the dataset's actions are discrete)
# A scale floor far below the returns' 5th-95th percentile range, so the normaliser's scale is live
# (the default floor 1 hides it behind the tiny returns of a world model trained for 10 updates).
SETS = ["behavior.retnorm.limit=1e-6"]
LINEAR = ("actor/loss", "critic/loss", "critic/replay_loss", "imag/return", "imag/reward", "actor/entropy",
          "retnorm/scale", "retnorm/low", "retnorm/high", "actor/grad_norm", "critic/grad_norm")
runner = CliRunner()


@pytest.fixture(scope="module")
def world_model_run(dataset, tmp_path_factory) -> Path:  # noqa: F811 (the imported fixture)
    """A run directory with a tiny world model trained for 10 updates (copy it before writing)."""
    run = tmp_path_factory.mktemp("ddp_behavior") / "run"
    result = runner.invoke(app, ["train-world-model", str(dataset), "--out", str(run), "--updates", "10",
                                 "--preset", "tiny", "--threads", "1", "--logger", "none", "-q"])
    assert result.exit_code == 0, result.output
    return run


# --- equivalence --------------------------------------------------------------------------------


def _train(run: Path, rank: int, world_size: int, grad: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """UPDATES actor-critic updates of stage 03's tiny config on the run's frozen world model;
    this rank takes its share of each fixed global batch of B windows. Returns the actor-critic's
    state (weights, slow critic, normaliser) and the last update's metrics."""
    _deterministic_latents()  # latents and the (one-hot) actions: the mode, a function of each window
    torch.set_num_threads(1)
    cfg = stage.make_config(str(run), [], ["tiny"], [f"behavior.actor.grad={grad}", *SETS], {})
    ctx = distributed.init(torch.device("cpu"))
    world_model, _ = WorldModel.load(run / WORLD_MODEL)
    freeze(world_model)
    torch.manual_seed(0)
    agent = ActorCritic.for_world_model(cfg.behavior, world_model)
    ctx.broadcast_module(agent)
    groups = agent.parameter_groups()
    actor_optim = make_optimizer(groups["actor"], cfg.behavior.actor_optim)
    critic_optim = make_optimizer(groups["critic"], cfg.behavior.critic_optim)
    sampler = SequenceSampler(Dataset(cfg.datasets[0]), B, cfg.seq_len, seed=0)
    starts = np.random.default_rng(0).integers(0, sampler.num_rows - cfg.seq_len + 1, size=(UPDATES, B))
    share = B // world_size
    for update in range(UPDATES):
        batch = sampler.gather(starts[update, rank * share:(rank + 1) * share])
        metrics = behavior_update(world_model, agent, actor_optim, critic_optim, cfg.behavior, batch,
                                  update=update, dist=ctx)
        assert metrics
    state = {k: v.detach().clone() for k, v in agent.state_dict().items()}
    if ctx.active:  # a non-finite actor loss on rank 1 alone skips the update on every rank
        loss = agent.loss
        if rank == 1:
            agent.loss = lambda *args, **kwargs: (lambda out: (out[0] * float("nan"), *out[1:]))(loss(*args, **kwargs))
        assert behavior_update(world_model, agent, actor_optim, critic_optim, cfg.behavior, batch,
                               update=UPDATES, dist=ctx) == {}
        changed = [k for k, v in agent.state_dict().items() if not torch.equal(v, state[k])]
        assert not changed, f"a skipped update changed {changed}"  # the normaliser's EMA included
    return state, metrics


def _rank(rank: int, world_size: int, port: int, run: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.save({grad: _train(Path(run), rank, world_size, grad) for grad in GRADS}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(world_model_run, tmp_path_factory) -> list[dict]:
    """Both actor gradients trained by 2 ranks with B/2 windows each (one spawn)."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(2, free_port(), str(world_model_run), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("grad", GRADS)
def test_two_ranks_with_half_batches_match_one_rank_with_the_full_batch(world_model_run, two_ranks, grad):
    """The actor and critic losses are means over the B*T start states (and the replay loss
    over the B*T rows), so the average of two half-batch gradients is the full-batch gradient;
    the return normaliser reads both ranks' returns, so its percentiles, EMA and scale are the
    full batch's. What remains is float32 rounding (other summation orders, other matmul
    shapes: ~1e-7 relative). Adam (eps 1e-5) turns a gradient g into about lr * g / (|g| + eps),
    so an entry moves at most ~lr = 3e-5 per update and a relative gradient error stays
    relative: atol 3e-7 is 1% of one update's step, far above the rounding (measured ~1e-8 after
    3 updates) and below what other data or a missing all-reduce do (~lr). Rank-local
    percentiles instead of the global batch's move the weights by ~8e-7 and, above all, make the
    ranks' normaliser states differ (~1e-6 on percentiles of ~1e-3): the ranks must agree
    bit for bit, and the normaliser's low/high must match one rank's to 1e-5 relative."""
    original = OneHotDist.sample_with_index
    try:
        single, single_metrics = _train(world_model_run, 0, 1, grad)
    finally:
        OneHotDist.sample_with_index = original
    (rank0, metrics0), (rank1, metrics1) = two_ranks[0][grad], two_ranks[1][grad]
    worst = 0.0
    for key, value in single.items():
        assert torch.equal(rank0[key], rank1[key]), f"the ranks diverged at {key}"
        if value.is_floating_point():
            worst = max(worst, float((rank0[key] - value).abs().max()))
        else:
            assert torch.equal(rank0[key], value), key  # update and normaliser counters
    print(f"{grad}: largest difference after {UPDATES} updates: {worst:.3g}")
    assert worst <= 3e-7, worst
    for key in ("retnorm_low", "retnorm_high"):
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-5, atol=0.0)
    assert metrics0 == metrics1  # the ranks' means, the same on both
    for key in LINEAR:
        assert metrics0[key] == pytest.approx(single_metrics[key], rel=1e-4, abs=1e-9), key
    assert single_metrics["retnorm/scale"] > 100 * 1e-6  # the percentile range set the scale, not the floor
    torch.manual_seed(0)
    initial = ActorCritic.for_world_model(stage.make_config(str(world_model_run), [], ["tiny"], SETS, {}).behavior,
                                          WorldModel.load(world_model_run / WORLD_MODEL)[0]).state_dict()
    moved = max(float((single[k] - v).abs().max()) for k, v in initial.items() if k.startswith(("actor.", "critic.")))
    assert moved > 10 * 3e-7  # the comparison is not trivially met by parameters that did not move


# --- torchrun end to end ---------------------------------------------------------------------------


def _torchrun(*args: object, port: int) -> subprocess.CompletedProcess:
    """``torchrun ... -m dreamer_core -- train-behavior ARGS``: without the ``--`` torchrun's own
    parser takes ``--run`` for an abbreviation of its ``--run-path`` and stops ("ambiguous option")."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # an abort prints where it happened
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "dreamer_core", "--", "train-behavior", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_torchrun_trains_writes_from_rank_0_only_and_resumes_every_rank(world_model_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world_model_run, run)
    before = _files(run)
    common = ["--threads", "1", "--logger", "none", "--set", "log_every=1", "--set", "checkpoint_every=2", "-q"]
    done = _torchrun("--run", run, "--updates", 4, "--preset", "tiny", *common, port=free_port())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 ranks (gloo) x batch 4 = global batch 8" in done.stderr
    assert done.stdout.count("trained 4 behavior updates") == 1  # rank 0 alone reports
    done = _torchrun("--run", run, "--updates", 6, "--resume", "-q", port=free_port())  # the stored config
    assert done.returncode == 0, done.stdout + done.stderr
    # one writer: every update logged once, one lock taken and released, nothing else written
    assert [r["step"] for r in read_metrics(run, stage.METRICS) if "actor/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert _files(run) - before == {"behavior.pt", "behavior_metrics.jsonl", "checkpoints/behavior_latest.pt"}
    assert "world_size: 2" in (run / "config.yaml").read_text()
    state = checkpoint.load(run / stage.LATEST, checkpoint.TrainState)
    assert state.counters["update"] == 6
    samplers = [r["sampler"] for r in state.rng["ranks"]]
    assert len(samplers) == 2 and str(samplers[0]) != str(samplers[1])  # each rank kept its own stream
    assert str(samplers[0]) == str(state.rng["sampler"])


# --- the controller search ----------------------------------------------------------------------


def test_the_controller_search_is_refused_under_torchrun(tmp_path, monkeypatch):
    """The environment torchrun gives each rank is enough: the refusal comes before any rank
    joins a process group, so no launcher is needed to see it."""
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    VaeMdnWorldModel(WorldModelsConfig(), OBS_SPACES["vector"], ACTION_SPACES["discrete"]).save(run / WORLD_MODEL)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(app, ["train-behavior", "--run", str(run), "--workers", "1", "-q"])
    assert result.exit_code != 0
    message = " ".join(result.output.split())
    assert "CMA-ES" in message and "--workers N" in message and "without torchrun" in message, result.output
    assert "Nothing was written" in message
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before
