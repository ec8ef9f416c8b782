"""Kill test of `dreamer train`: `kill -9` at random moments, resume, and check what survives.

    python benchmarks/kill_train.py [--trials 20] [--steps 1500] [--resume]

Each trial starts a small online run (DummyDiscrete, tiny model, one thread, a checkpoint every
second and a shard every 0.5 s, so kills land beside both) and kills it with SIGKILL: half of
the trials after a random delay, half the moment a checkpoint's temporary file appears (a kill
during the checkpoint write). Then `dreamer train --out RUN --resume` runs to the end, and the
trial checks:

- the resume exits 0, and a second process on the run while it runs is refused (the lock);
- the replay equals the env-step counter, and the episode counter equals its episodes;
- the metrics have no duplicate (steps sorted, each training episode logged once) and no gap
  (every episode in the replay but the one cut at the end has its `train/return` record);
- no temporary file and no lock file remain.

Trials are kept in benchmarks/_work/kill_train/trials.json; `--resume` skips the ones done. The
table goes to the `kill-train` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from results import update_section

from dreamer_core import checkpoint, runs
from dreamer_core.data.dataset import Dataset
from dreamer_core.logging import read_metrics

WORK = Path(__file__).resolve().parent / "_work" / "kill_train"
TRAIN = ["--env", "dreamer/DummyDiscrete-v0", "--prefill", "100", "--train-ratio", "8", "--eval-every", "500",
         "--eval-episodes", "2", "--checkpoint-seconds", "1", "--set", "shard_seconds=0.5", "--preset", "tiny",
         "--threads", "1", "-q"]


def dreamer(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamer_core", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def kill_when(proc: subprocess.Popen, run: Path, mode: str, delay: float, limit: float = 120) -> str:
    """SIGKILL ``proc`` after ``delay`` s (random) or as soon as a checkpoint .tmp exists after it."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            return f"ended by itself ({proc.returncode})"
        elapsed = time.monotonic() - start
        if elapsed >= delay and (mode == "random" or list((run / "checkpoints").glob(".*.tmp"))):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"{mode} @ {elapsed:.1f}s"
        time.sleep(0.002 if mode == "checkpoint" and elapsed >= delay else 0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return f"{mode} @ limit"


def check(run: Path, steps: int) -> list[str]:
    """The problems left after the resumed run ended (empty: all good)."""
    problems = []
    counters = checkpoint.load(run / runs.ONLINE_LATEST, checkpoint.TrainState).counters
    data = Dataset(run / runs.REPLAY)
    if not counters["env_steps"] == data.num_steps == steps:
        problems.append(f"env steps {counters['env_steps']}, replay {data.num_steps}, target {steps}")
    if counters["episodes"] != data.num_episodes:
        problems.append(f"episode counter {counters['episodes']} vs replay {data.num_episodes}")
    records = read_metrics(run)
    record_steps = [r["step"] for r in records]
    if record_steps != sorted(record_steps):
        problems.append("metrics out of order (a duplicate)")
    returns = [r["step"] for r in records if "train/return" in r]
    if len(returns) != len(set(returns)):
        problems.append("an episode logged twice")
    if not data.num_episodes - 1 <= len(returns) <= data.num_episodes:
        problems.append(f"{len(returns)} train/return records for {data.num_episodes} episodes (a gap)")
    leftovers = [p.name for p in run.rglob(".*.tmp")] + [p.name for p in run.glob(runs.REPLAY + "/.*partial*")]
    if leftovers:
        problems.append(f"left behind: {leftovers}")
    if (run / ".lock").exists():
        problems.append("lock file left")
    return problems


def trial(index: int, steps: int, rng: random.Random) -> dict:
    run = WORK / f"run{index}"
    shutil.rmtree(run, ignore_errors=True)
    mode = "random" if index % 2 == 0 else "checkpoint"
    delay = rng.uniform(1.0, 15.0)
    how = kill_when(dreamer("train", "--out", str(run), "--steps", str(steps), *TRAIN), run, mode, delay)
    resumed = dreamer("train", "--out", str(run), "--resume", "--steps", str(steps), "-q")
    time.sleep(1.0)
    second = subprocess.run([sys.executable, "-m", "dreamer_core", "train", "--out", str(run), "--resume", "-q"],
                            capture_output=True, text=True) if resumed.poll() is None else None
    if resumed.poll() is not None:
        second = None  # the resumed run may have ended first: the lock test says nothing then
    _, err = resumed.communicate(timeout=600)
    if resumed.returncode == 2 and "never started" in err:  # killed before it wrote its config: start it anew
        how += " (before the run started: resume refused, started anew)"
        resumed = dreamer("train", "--out", str(run), "--steps", str(steps), *TRAIN)
        _, err = resumed.communicate(timeout=600)
    problems = [] if resumed.returncode == 0 else [f"resume failed ({resumed.returncode}): {err[-400:]}"]
    if second is not None and (second.returncode == 0 or "in use by process" not in second.stderr):
        problems.append(f"a second writer was not refused: {second.stderr[-300:]}")
    if not problems:
        problems += check(run, steps)
    result = {"trial": index, "kill": how, "lock_tested": second is not None, "problems": problems}
    shutil.rmtree(run, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="keep the trials already done")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    store = WORK / "trials.json"
    done = json.loads(store.read_text()) if args.resume and store.exists() else []
    for index in range(len(done), args.trials):
        result = trial(index, args.steps, random.Random(args.seed * 1000 + index))
        done.append(result)
        store.write_text(json.dumps(done, indent=1))
        print(f"trial {index}: kill {result['kill']}, lock tested {result['lock_tested']}: "
              f"{'ok' if not result['problems'] else '; '.join(result['problems'])}", flush=True)
    passed = sum(not r["problems"] for r in done)
    lines = [f"`python benchmarks/kill_train.py --trials {args.trials} --steps {args.steps}` "
             "(DummyDiscrete, tiny model, checkpoints every 1 s, shards every 0.5 s; each trial killed once "
             "with SIGKILL, then resumed to the end).", "",
             "| trial | kill | second writer refused | result |", "|---|---|---|---|"]
    for r in done:
        refused = "-" if not r["lock_tested"] else ("no" if any("second writer" in p for p in r["problems"]) else "yes")
        lines.append(f"| {r['trial']} | {r['kill']} | {refused} | {'ok' if not r['problems'] else '; '.join(r['problems'])} |")
    lines += ["", f"**{passed} of {len(done)} trials passed**: after the resume the replay equals the env-step "
              "counter, the metrics have no gap and no duplicate, and no temporary or lock file remains."]
    update_section("kill-train", "## kill -9 during `dreamer train`, then --resume\n\n" + "\n".join(lines))
    print(f"{passed} of {len(done)} trials passed")


if __name__ == "__main__":
    main()
