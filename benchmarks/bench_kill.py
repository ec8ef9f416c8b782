"""Kill test: `kill -9` a running `dreamer collect` and check what survives.

    python benchmarks/bench_kill.py [--env ALE/Pong-v5] [--trials 3] [--shard-seconds 5]

Each trial starts a collector as a subprocess (random policy, --shard-episodes 1000 so shards
close on the time limit), kills it with SIGKILL after a random delay, then runs
`dreamer data info` on the dataset and reads every stored episode back. Reported per trial:
the time since the newest closed shard was renamed into place (the data at risk, bounded by
--shard-seconds plus the episode in progress), closed shards, episodes and steps kept, the
size of the abandoned .partial file, and whether every episode read back. Writes the `kill`
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import update_section

from dreamer_core.data import store
from dreamer_core.data.dataset import Dataset


def trial(env: str, shard_seconds: float, delay: float, work: Path) -> dict:
    out = work / "ds"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamer_core", "collect", "--env", env, "--out", str(out), "--steps", "100000000",
         "--shard-episodes", "1000", "--shard-seconds", str(shard_seconds), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(delay)
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    info = subprocess.run([sys.executable, "-m", "dreamer_core", "data", "info", str(out)], capture_output=True, text=True)
    shards = store.shard_paths(out)
    partial = store.partial_paths(out)
    newest = max((p.stat().st_mtime for p in shards), default=float("nan"))
    ok, episodes, steps = True, 0, 0
    try:
        ds = Dataset(out)
        for episode in ds.iter_episodes():
            ok &= bool(episode.is_first[0] and episode.is_last[-1])
            episodes += 1
            steps += episode.steps
    except Exception as exc:
        ok = False
        print("read-back failed:", exc)
    return {
        "delay": delay, "info_exit": info.returncode, "shards": len(shards), "episodes": episodes, "steps": steps,
        "since_last_shard": killed_at - newest, "partial_bytes": sum(p.stat().st_size for p in partial),
        "read_back": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="ALE/Pong-v5")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--shard-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench_kill_"))
    rows = []
    try:
        for _ in range(args.trials):
            delay = rng.uniform(3 * args.shard_seconds, 5 * args.shard_seconds)
            row = trial(args.env, args.shard_seconds, delay, work)
            rows.append(row)
            print(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        "## Kill test (stage 01)",
        "",
        f"Command: `python benchmarks/bench_kill.py --env {args.env} --trials {args.trials} "
        f"--shard-seconds {args.shard_seconds:g}`. Each trial: `dreamer collect` (random policy) as a subprocess, "
        "SIGKILL after a random delay, then `dreamer data info` and a full read-back of every episode.",
        "",
        "| killed after (s) | `data info` exit | closed shards | episodes kept | steps kept | s since newest shard | abandoned .partial bytes | all episodes read back |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['delay']:.1f} | {r['info_exit']} | {r['shards']} | {r['episodes']} | {r['steps']} | "
        f"{r['since_last_shard']:.1f} | {r['partial_bytes']:,} | {r['read_back']} |"
        for r in rows
    ]
    lines += ["", f"At most --shard-seconds ({args.shard_seconds:g} s) of finished episodes, plus the episodes in "
              "progress, are lost; everything in a closed shard survives."]
    update_section("kill", "\n".join(lines))


if __name__ == "__main__":
    main()
