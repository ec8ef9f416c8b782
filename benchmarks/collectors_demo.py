"""Two decoupled collectors feeding one learner, through the real CLI (CartPole-v1).

    python benchmarks/collectors_demo.py --minutes 5

1. A learner that steps no env of its own: `dreamer train --env CartPole-v1 --out RUN --learner-only`.
2. Two collectors acting with the learner's newest agent: `dreamer collect --env CartPole-v1
   --policy RUN --follow --out RUN/replay --seed S`, started as soon as the learner runs (they
   wait for its first published agent).
3. Halfway through, one collector is killed with SIGKILL (`kill -9`); the other is stopped with
   SIGINT at the end, after the learner has been stopped with SIGINT too.
4. Checks on what is on disk: no episode is stored twice (content hashes of every episode), the
   stopped collector's reported steps and episodes equal what its shards hold, the killed one
   left at most its open shard (`.partial`), and the learner's replay grew while it trained
   (its `pickup/*` records against its update count); which agent checkpoints each collector's
   episodes were collected with (stored per episode).

Writes the ``collectors`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from results import update_section

from dreamer_core.data import store
from dreamer_core.data.dataset import Dataset
from dreamer_core.logging import read_metrics

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "collectors"


def dreamer(*args: object) -> list[str]:
    return [sys.executable, "-m", "dreamer_core", *map(str, args)]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def episode_digest(episode) -> str:
    h = hashlib.sha256()
    for key in sorted(episode.obs):
        h.update(episode.obs[key].tobytes())
    h.update(episode.action.tobytes())
    h.update(episode.reward.tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the learner runs")
    args = parser.parse_args()
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    run = WORK / "run"
    learner_cmd = dreamer("train", "--env", "CartPole-v1", "--out", run, "--learner-only", "--steps", 1_000_000,
                          "--eval-every", 5000, "--eval-episodes", 5, "--threads", 1, "--logger", "none",
                          "--progress-seconds", 30, "--set", "pickup_seconds=5", "--set", "publish_seconds=20")
    learner = start(learner_cmd, WORK / "learner.log")
    collectors = {}
    for name, seed in (("A", 100), ("B", 200)):
        cmd = dreamer("collect", "--env", "CartPole-v1", "--policy", run, "--follow", "--out", run / "replay",
                      "--seed", seed, "--set", "poll_seconds=5")
        collectors[name] = (start(cmd, WORK / f"collector-{name}.log"), seed)
    began = time.time()
    total = args.minutes * 60
    killed_at = None
    while time.time() - began < total:
        time.sleep(2)
        if killed_at is None and time.time() - began > total / 2:
            collectors["B"][0].send_signal(signal.SIGKILL)
            killed_at = time.time() - began
        for name, (proc, _) in collectors.items():
            if proc.poll() is not None and not (name == "B" and killed_at is not None):
                raise SystemExit(f"collector {name} ended early: see {WORK}/collector-{name}.log")
        if learner.poll() is not None:
            raise SystemExit(f"the learner ended early: see {WORK}/learner.log")
    learner.send_signal(signal.SIGINT)
    learner_rc = learner.wait(timeout=300)
    collectors["A"][0].send_signal(signal.SIGINT)
    a_rc = collectors["A"][0].wait(timeout=120)
    b_rc = collectors["B"][0].wait(timeout=10)

    # --- what is on disk ------------------------------------------------------------------
    replay = run / "replay"
    data = Dataset(replay)
    partials = [p.name for p in store.partial_paths(replay)]
    by_seed: dict[int, dict] = {}
    digests: Counter = Counter()
    for info in data.shards:
        entry = by_seed.setdefault(info.seed, {"shards": 0, "episodes": 0, "steps": 0, "updates": Counter()})
        entry["shards"] += 1
        entry["episodes"] += info.num_episodes
        entry["steps"] += info.num_steps
        for update in info.policy_updates or []:
            entry["updates"][update] += 1
    for episode in data.iter_episodes():
        digests[episode_digest(episode)] += 1
    duplicates = sum(n - 1 for n in digests.values() if n > 1)
    a_log = (WORK / "collector-A.log").read_text()
    a_line = [ln for ln in a_log.splitlines() if ln.startswith("collected ")]
    a_steps = int(a_line[-1].split()[1]) if a_line else None
    # "collected N steps, M episodes[ + K cut at the end (stored, truncated)], ...": M + K are stored
    a_words = a_line[-1].replace(",", "").split() if a_line else []
    a_episodes = (int(a_words[3]) + (int(a_words[6]) if a_words[5] == "+" else 0)) if a_line else None
    records = read_metrics(run)
    pickups = [(r["step"], r["pickup/total_steps"]) for r in records if "pickup/total_steps" in r]
    updates_at = [(r["step"], r["speed/updates"]) for r in records if "speed/updates" in r]
    evals = [(int(r["step"]), r["eval/return"]) for r in records if "eval/return" in r]
    learner_tail = [ln for ln in (WORK / "learner.log").read_text().splitlines() if ln.strip()][-6:]

    a, b = by_seed.get(100, {}), by_seed.get(200, {})
    checks = {
        "no episode stored twice": duplicates == 0,
        "collector A's reported steps and episodes (finished + cut at the end) equal its shards'": (a_steps, a_episodes) == (a.get("steps"),
                                                                                                a.get("episodes")),
        "the killed collector left at most one .partial": len(partials) <= 1,
        "the learner's replay grew while it trained": len(pickups) >= 3 and pickups[-1][1] > pickups[0][1],
        "both collectors refreshed their agent": len(a.get("updates", {})) > 1 and len(b.get("updates", {})) > 1,
        "exit codes: learner 130, A 130, B -9": (learner_rc, a_rc, b_rc) == (130, 130, -9),
    }
    lines = ["## Two collectors and one learner (`benchmarks/collectors_demo.py`)", "",
             f"`python benchmarks/collectors_demo.py --minutes {args.minutes:g}`: a learner-only `dreamer train` "
             "and two `dreamer collect --follow` collectors on CartPole-v1, one thread each, on this 2-core "
             f"machine; collector B was killed with SIGKILL after {killed_at:.0f} s, the learner and collector A "
             "were stopped with SIGINT at the end. Commands:", "",
             "    " + " ".join(map(str, learner_cmd[2:])).replace(str(WORK), "RUNDIR"),
             "    dreamer collect --env CartPole-v1 --policy RUNDIR/run --follow --out RUNDIR/run/replay --seed 100 "
             "(A; B: --seed 200) --set poll_seconds=5", "",
             "| collector | shards | episodes | env steps | agent checkpoints used (update: episodes) |",
             "|---|---|---|---|---|"]
    for name, entry in (("A (SIGINT)", a), ("B (SIGKILL)", b)):
        ups = ", ".join(f"{u}: {n}" for u, n in sorted(entry.get("updates", {}).items()))
        ups = ups if len(ups) < 300 else ups[:300] + " ..."
        lines.append(f"| {name} | {entry.get('shards', 0)} | {entry.get('episodes', 0)} | {entry.get('steps', 0)} | "
                     f"{len(entry.get('updates', {}))} checkpoints ({ups}) |")
    lines += ["", f"Dataset: {data.num_episodes} episodes, {data.num_steps} env steps in {len(data.shards)} shards; "
              f"{duplicates} episodes stored twice; `.partial` files left: {partials or 'none'}. Collector A "
              f"reported {a_steps} steps and {a_episodes} episodes on exit.", "",
              "The learner's replay while it trained (env steps picked up from the collectors at its metric records, "
              "and its updates): " + ", ".join(f"{int(s)}: {int(n)} updates" for s, n in updates_at[:: max(1, len(updates_at) // 8)])
              + ".", f"Its greedy evaluations (env steps: return): {', '.join(f'{s}: {r:.0f}' for s, r in evals)}.", "",
              "Checks:", ""]
    lines += [f"- {'pass' if ok else 'FAIL'}: {what}" for what, ok in checks.items()]
    lines += ["", "The learner's last lines:", "", *[f"    {ln}" for ln in learner_tail]]
    text = "\n".join(lines)
    print(text)
    update_section("collectors", text)
    (WORK / "checks.json").write_text(json.dumps(checks, indent=1))
    if not all(checks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
