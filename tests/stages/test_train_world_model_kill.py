"""`kill -9` of stage 02 in the middle of training (both model families, through the real CLI in
a subprocess), then `--resume`: the run ends with the same weights as one that was never
interrupted, and the kill leaves no lock or temporary file that stops the resume."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dreamer_core import checkpoint, runs
from dreamer_core.world_model import WorldModel
from dreamer_core.worldmodels import VaeMdnWorldModel
from tests.stages.test_worldmodels_stages import SMALL, data, ok  # noqa: F401  (fixture)

FAMILIES = {
    "rssm": (["--preset", "tiny", "--batch-size", 4, "--seq-len", 8, "-q"], WorldModel),
    "worldmodels": ([*SMALL, "--set", "vae_updates=3"], VaeMdnWorldModel),
}


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamer_core", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def checkpointed_update(run) -> int:
    """The update of the run's resume checkpoint (0 while there is none or it is being replaced)."""
    try:
        return checkpoint.load(run / runs.WORLD_MODEL_LATEST, checkpoint.TrainState).counters["update"]
    except Exception:  # noqa: BLE001 - not written yet
        return 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kill_9_then_resume_ends_like_an_uninterrupted_run(family, data, tmp_path):  # noqa: F811 (the fixture)
    args, model_class = FAMILIES[family]
    killed, once = tmp_path / "killed", tmp_path / "once"
    every = ["--set", "checkpoint_every=1", "--set", "log_every=1", "--threads", 1]
    proc = start("train-world-model", data, "--out", killed, "--updates", 10_000, *args, *every)
    try:
        deadline = time.monotonic() + 120
        while checkpointed_update(killed) < 4:  # past the staged family's V phase (3 updates)
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / ".lock").exists()  # left by the killed writer; the resume takes it over
    total = checkpointed_update(killed) + 3
    assert total < 10_000

    resumed = ok("train-world-model", "--out", killed, "--resume", "--updates", total, "--threads", 1, "-q")
    assert "Traceback" not in resumed.output
    ok("train-world-model", data, "--out", once, "--updates", total, *args, *every)
    a, _ = model_class.load(once / runs.WORLD_MODEL)
    b, _ = model_class.load(killed / runs.WORLD_MODEL)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not (killed / ".lock").exists()
    assert not [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    assert checkpoint.load(killed / runs.WORLD_MODEL_LATEST, checkpoint.TrainState).counters["update"] == total
