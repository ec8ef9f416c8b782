"""`kill -9` of a running collector leaves a readable dataset, and appending afterwards works."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dreamer_core.data import store
from dreamer_core.data.dataset import Dataset


def start_collector(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dreamer_core", "collect", "--env", "dreamer/DummyImage-v0", "--out", str(out),
         "--steps", "100000000", "--shard-episodes", "4", "--shard-seconds", "1", "-q", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


def wait_for_shards(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode())
        if out.exists() and len(store.shard_paths(out)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} shards after {timeout}s")


def test_kill_9_leaves_a_readable_dataset(tmp_path):
    out = tmp_path / "ds"
    proc = start_collector(out)
    try:
        wait_for_shards(out, 3, proc)
        time.sleep(0.3)  # land somewhere in the middle of a shard
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    info = subprocess.run([sys.executable, "-m", "dreamer_core", "data", "info", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    ds = Dataset(out)
    assert len(ds.shards) >= 3 and len(store.partial_paths(out)) <= 1
    for episode in ds.iter_episodes():  # every closed shard reads back completely
        assert episode.is_first[0] and episode.is_last[-1]
        assert episode.obs["image"].shape[0] == episode.rows
    # A new collector appends next to the leftovers and never touches the closed shards.
    closed = {p.name: p.stat().st_mtime_ns for p in store.shard_paths(out)}
    proc = start_collector(out)
    wait_for_shards(out, len(closed) + 1, proc)
    os.kill(proc.pid, signal.SIGTERM)  # graceful stop: keeps the open shard
    proc.wait(timeout=30)
    assert proc.returncode == 130, proc.stderr.read().decode()
    after = {p.name: p.stat().st_mtime_ns for p in store.shard_paths(out)}
    assert all(after[name] == mtime for name, mtime in closed.items())
    assert Dataset(out).num_episodes > ds.num_episodes
