"""The CMA-ES controller search (stage 03 of the World Models family) through the real CLI in
subprocesses: `kill -9` of the search process in the middle of a search (its worker processes
then end by themselves), then `--resume`, ends exactly where an uninterrupted search ends; `--workers 2`
searches exactly like `--workers 1`, also across a resume that changes it; `--keep mean` on a resume puts
CMA-ES's mean into behavior.pt."""

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dreamer_core import checkpoint, runs
from dreamer_core.controller import ControllerSearch
from dreamer_core.logging import read_metrics
from tests.stages.test_worldmodels_stages import SEARCH, copy_run, data, staged  # noqa: F401  (fixtures)

GENERATIONS = 6
WALL_CLOCK = ("cma/seconds",)


def search_args(workers: int) -> list[str]:
    """SEARCH (population 4, 2 rollouts) with ``workers`` processes and short episodes."""
    args = [str(a) for a in SEARCH]
    args[args.index("--workers") + 1] = str(workers)
    return [*args, "--set", "max_steps=20"]


def command(*args) -> list[str]:
    return [sys.executable, "-m", "dreamer_core", *[str(a) for a in args]]


def cli(*args) -> subprocess.CompletedProcess:
    result = subprocess.run(command(*args), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def group_members(pgid: int) -> dict[int, str]:
    """The live (not zombie) processes of the process group ``pgid``: pid -> command line."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members[int(entry.name)] = cmdline
    return members


def result(run: Path) -> tuple[list[dict], dict[str, torch.Tensor], dict]:
    """The search's outcome: metrics without wall-clock keys, the controller weights, the CMA state."""
    metrics = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_metrics(run, runs.BEHAVIOR_METRICS)]
    weights = checkpoint.load(run / runs.BEHAVIOR, checkpoint.BehaviorArtifact).weights
    search = checkpoint.load(run / runs.BEHAVIOR_LATEST, checkpoint.TrainState).optimizers["cma"]
    return metrics, weights, search


def assert_same_search(a: Path, b: Path, generations: int) -> None:
    metrics_a, weights_a, search_a = result(a)
    metrics_b, weights_b, search_b = result(b)
    assert [r["step"] for r in metrics_a] == list(range(1, generations + 1))
    assert metrics_a == metrics_b
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert search_a["generation"] == search_b["generation"] == generations
    np.testing.assert_array_equal(search_a["best_params"], search_b["best_params"])


def test_kill_9_mid_search_then_resume_matches_an_uninterrupted_search(staged, tmp_path):  # noqa: F811 (the imported fixture)
    once, killed = copy_run(staged, tmp_path, "once"), copy_run(staged, tmp_path, "killed")
    args = ["--generations", GENERATIONS, *search_args(workers=2)]
    proc = subprocess.Popen(command("train-behavior", "--run", killed, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (killed / runs.BEHAVIOR_LATEST).exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no generation checkpointed after 90 s"
            time.sleep(0.02)
        workers = [pid for pid, cmdline in group_members(proc.pid).items() if "spawn_main" in cmdline]
        assert len(workers) == 2, group_members(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):  # kill -9 of the search process alone, as a user would
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    try:
        assert proc.returncode == -signal.SIGKILL, f"the search ended before the kill: {proc.stderr.read().decode()}"
        deadline = time.monotonic() + 30  # a worker notices within a second (or ends when it starts)
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_members(proc.pid) == {}, "worker processes outlived the search process"
    finally:
        with contextlib.suppress(ProcessLookupError):  # leave nothing behind if they did
            os.killpg(proc.pid, signal.SIGKILL)
    done = checkpoint.load(killed / runs.BEHAVIOR_LATEST, checkpoint.TrainState).counters["generation"]
    assert 1 <= done < GENERATIONS

    cli("train-behavior", "--run", once, *args)
    resumed = cli("train-behavior", "--run", killed, "--resume", "--generations", GENERATIONS, "-q")
    assert f"searched {GENERATIONS} controller generations" in resumed.stdout + resumed.stderr
    assert not [p for p in killed.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]
    assert_same_search(killed, once, GENERATIONS)

    # Killed between the two writes of the last generation (the search state, then behavior.pt):
    # a resume with nothing left to search still writes behavior.pt.
    (killed / runs.BEHAVIOR).unlink()
    cli("train-behavior", "--run", killed, "--resume", "--generations", GENERATIONS, "-q")
    assert_same_search(killed, once, GENERATIONS)


def test_two_workers_search_like_one(staged, tmp_path):  # noqa: F811 (the imported fixture)
    """Also across a resume that changes the number of workers (the one setting a resume may
    change besides the generations: it does not change what is searched)."""
    one, two = copy_run(staged, tmp_path, "one"), copy_run(staged, tmp_path, "two")
    cli("train-behavior", "--run", one, "--generations", 3, *search_args(workers=1))
    cli("train-behavior", "--run", two, "--generations", 2, *search_args(workers=2))
    assert runs.read_config(two, "train-controller")["search"]["workers"] == 2
    cli("train-behavior", "--run", two, "--resume", "--generations", 3, "--workers", 1, "-q")
    assert runs.read_config(two, "train-controller")["search"]["workers"] == 1
    assert_same_search(one, two, 3)

    # --keep mean on a finished search: behavior.pt now holds CMA-ES's mean; the search is as it was.
    state, _ = ControllerSearch.load_checkpoint(two / runs.BEHAVIOR_LATEST)
    cli("train-behavior", "--run", two, "--resume", "--generations", 3, "--keep", "mean", "-q")
    assert runs.read_config(two, "train-controller")["search"]["keep"] == "mean"
    behavior = checkpoint.load(two / runs.BEHAVIOR, checkpoint.BehaviorArtifact)
    mean = np.array(pickle.loads(state["cma"]).mean)
    held = torch.cat([v.flatten() for v in behavior.weights.values()]).double().numpy()  # parameter order
    np.testing.assert_allclose(held, mean.astype(np.float32))
    assert not np.allclose(held, state["best_params"])
    assert ControllerSearch.load_checkpoint(two / runs.BEHAVIOR_LATEST)[0]["generation"] == 3


def test_a_worker_whose_search_process_is_gone_ends_by_itself():
    """A worker that starts after its search process died (spawning takes seconds on a loaded
    machine) ends at once instead of waiting for tasks for ever; one whose parent lives stays."""
    code = ("import os, sys, time; from dreamer_core.controller import _exit_with_parent; "
            "_exit_with_parent(int(sys.argv[1]), seconds=0.05); time.sleep(20)")
    gone = subprocess.run([sys.executable, "-c", code, "999999999"], timeout=60)
    assert gone.returncode == 1  # the watcher's exit, not the end of its 20 s sleep (code 0)
    alive = subprocess.Popen([sys.executable, "-c", code, str(os.getpid())])
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            alive.wait(timeout=3)
        assert alive.poll() is None  # its parent (this process) lives: it keeps running
    finally:
        alive.kill()
        alive.wait()
