"""Data-parallel throughput on this machine: 1 rank against 2 ranks, and the all-reduce's share.

    python benchmarks/bench_distributed.py                       # stage 02 + dreamer train + all-reduce
    python benchmarks/bench_distributed.py --parts allreduce     # only the communication figures

What it measures (CPU, gloo, one thread per rank; interleaved rounds, fresh processes):

- **Stage 02** (`dreamer train-world-model`, CartPole-v1 vector data collected here once): updates/s
  of 1 rank x B=16, 2 ranks x B=8 (the same global batch: what DDP buys at a fixed batch) and 2
  ranks x B=16 (twice the global batch: what it buys in samples/s), for each size asked.
- **`dreamer train`** (online, CartPole-v1): env steps/s and updates/s of 1 rank against 2 ranks
  (each rank steps its own env; the global batch and the train ratio are the same).
- **The compute/communication split**: the time of one all-reduce of a buffer as large as the
  world model's (plus the actor-critic's) gradients between 2 gloo ranks, beside the time of one
  full update of that size on one thread (from stage 02's rate). From the two, the scaling
  to expect with N ranks when each rank has its own cores (ring all-reduce: each rank sends and
  receives 2 (N-1)/N of the buffer): speed-up ~ N / (1 + N * t_comm(N) / t_compute).

Writes the ``distributed`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results import update_section

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "distributed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env1() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def dreamer(nproc: int, *args: object) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "dreamer_core", *map(str, args)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
            str(free_port()), "--local-ranks-filter", "0", "-m", "dreamer_core", "--", *map(str, args)]


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env1(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def last_record(path: Path, key: str) -> float:
    value = None
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if key in row:
            value = row[key]
    if value is None:
        raise SystemExit(f"{path} has no {key}")
    return float(value)


def dataset() -> Path:
    data = WORK / "cartpole"
    if not data.exists():
        run(dreamer(1, "collect", "--env", "CartPole-v1", "--out", data, "--steps", 5000, "--seed", 0, "-q"))
    return data


def stage02(size: str, nproc: int, batch: int, updates: int, tag: str) -> float:
    """Updates per second of the run (its own rate: the loop's wall-clock, start-up excluded)."""
    out = WORK / f"wm-{size}-{nproc}x{batch}-{tag}"
    run(dreamer(nproc, "train-world-model", dataset(), "--out", out, "--preset", size, "--updates", updates,
                "--batch-size", batch, "--seq-len", 64, "--threads", 1, "--logger", "none", "-q",
                "--set", f"log_every={updates}", "--set", f"eval_every={updates * 10}",
                "--set", f"checkpoint_every={updates * 10}"))
    return last_record(out / "metrics.jsonl", "wm/updates_per_second")


def online(nproc: int, steps: int, tag: str) -> tuple[float, float]:
    """(env steps/s, updates/s) of a `dreamer train` run with the online defaults."""
    out = WORK / f"train-{nproc}-{tag}"
    run(dreamer(nproc, "train", "--env", "CartPole-v1", "--out", out, "--steps", steps, "--prefill", 1000,
                "--eval-every", 0, "--threads", 1, "--logger", "none", "-q", "--set", "log_every=500"))
    metrics = out / "metrics.jsonl"
    return (last_record(metrics, "speed/env_steps_per_second"), last_record(metrics, "speed/updates_per_second"))


# --- the all-reduce ----------------------------------------------------------------------------


def gradient_numel(size: str) -> int:
    """Parameters of the XS/S... world model plus actor-critic on CartPole vector observations."""
    import gymnasium as gym
    import numpy as np

    from dreamer_core import config as config_lib
    from dreamer_core.behavior import ActorCritic
    from dreamer_core.stages.train_behavior import TrainBehaviorConfig
    from dreamer_core.stages.train_world_model import TrainWorldModelConfig
    from dreamer_core.world_model import WorldModel

    obs = gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)})
    act = gym.spaces.Discrete(2)
    wm = WorldModel(config_lib.apply_presets(TrainWorldModelConfig(), "train-world-model", [size]).model, obs, act)
    bh = config_lib.apply_presets(TrainBehaviorConfig(), "train-behavior", [size]).behavior
    agent = ActorCritic.for_world_model(bh, wm)
    return sum(p.numel() for p in wm.parameters()), sum(p.numel() for p in agent.parameters())


def _allreduce_rank(rank: int, port: int, numel: int, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    buffer = torch.randn(numel)
    for _ in range(3):
        dist.all_reduce(buffer)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - start)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def allreduce_seconds(numel: int, repeats: int = 20) -> float:
    import torch.multiprocessing as mp

    out = WORK / "allreduce.json"
    mp.spawn(_allreduce_rank, args=(free_port(), numel, repeats, str(out)), nprocs=2, join=True)
    return statistics.median(json.loads(out.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="*", default=["stage02", "train", "allreduce"],
                        choices=["stage02", "train", "allreduce"])
    parser.add_argument("--sizes", nargs="*", default=["tiny", "XS"])
    parser.add_argument("--updates", type=int, default=40, help="stage 02 updates per run")
    parser.add_argument("--steps", type=int, default=3000, help="env steps per `dreamer train` run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median reported)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    lines = ["## Data-parallel throughput (`benchmarks/bench_distributed.py`)", "",
             f"`python benchmarks/bench_distributed.py --parts {' '.join(args.parts)} --sizes {' '.join(args.sizes)} "
             f"--updates {args.updates} --steps {args.steps} --rounds {args.rounds}`: CPU, gloo, one thread per "
             f"rank, this 2-core machine; median of {args.rounds} interleaved rounds of fresh processes. Load "
             f"average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.", ""]
    per_update: dict[str, float] = {}
    if "stage02" in args.parts:
        lines += ["**Stage 02** (`dreamer train-world-model`, CartPole-v1 vector, T=64; updates/s from the run's "
                  "own clock):", "", "| size | 1 rank x B=16 | 2 ranks x B=8 (same global batch) | "
                  "2 ranks x B=16 (twice the batch) | samples/s gain at B=16 per rank |", "|---|---|---|---|---|"]
        for size in args.sizes:
            runs: dict[str, list[float]] = {"1x16": [], "2x8": [], "2x16": []}
            for r in range(args.rounds):
                for key in runs:
                    n, b = map(int, key.split("x"))
                    runs[key].append(stage02(size, n, b, args.updates, f"r{r}"))
            med = {k: statistics.median(v) for k, v in runs.items()}
            per_update[size] = 1.0 / med["1x16"]
            gain = 2 * med["2x16"] / med["1x16"]
            lines.append(f"| {size} | {med['1x16']:.2f} | {med['2x8']:.2f} ({med['2x8'] / med['1x16']:.2f}x) | "
                         f"{med['2x16']:.2f} | {gain:.2f}x |")
            print(lines[-1], flush=True)
        lines.append("")
    if "train" in args.parts:
        lines += [f"**`dreamer train`** (CartPole-v1, online defaults, {args.steps} env steps, no evaluation; "
                  "each rank steps its own env; rates from the run's own clock, prefill included):", "",
                  "| ranks | env steps/s | updates/s |", "|---|---|---|"]
        res: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
        for r in range(args.rounds):
            for n in (1, 2):
                res[n].append(online(n, args.steps, f"r{r}"))
        med = {n: (statistics.median(x[0] for x in res[n]), statistics.median(x[1] for x in res[n])) for n in (1, 2)}
        for n in (1, 2):
            lines.append(f"| {n} | {med[n][0]:.1f} | {med[n][1]:.2f} |")
            print(lines[-1], flush=True)
        lines += ["", f"With 2 ranks each update trains on twice the global batch, so the train ratio owes half as "
                  f"many updates per env step: replayed samples per second went {2 * med[2][1] / med[1][1]:.2f}x and "
                  f"env steps per second {med[2][0] / med[1][0]:.2f}x of one rank's."]
        lines.append("")
    if "allreduce" in args.parts:
        lines += ["**Compute against communication** (one all-reduce of the gradients between 2 gloo ranks on this "
                  "host; one world-model update on one thread, from the stage 02 row above):", "",
                  "| size | gradients (WM + actor-critic) | all-reduce (ms, median of 20) | WM update (ms) | "
                  "communication share | expected speed-up, 8 ranks with their own cores |", "|---|---|---|---|---|---|"]
        for size in args.sizes:
            wm_n, ac_n = gradient_numel(size)
            t_comm = allreduce_seconds(wm_n + ac_n)
            t_comp = per_update.get(size)
            if t_comp is None:
                lines.append(f"| {size} | {(wm_n + ac_n) / 1e6:.2f}M | {t_comm * 1e3:.1f} | - | - | - |")
            else:
                share = t_comm / (t_comm + t_comp)
                # ring all-reduce: per-rank traffic 2 (N-1)/N of the buffer, about 1.75x the 2-rank case at N=8
                t8 = t_comm * (2 * 7 / 8) / (2 * 1 / 2)
                lines.append(f"| {size} | {(wm_n + ac_n) / 1e6:.2f}M | {t_comm * 1e3:.1f} | {t_comp * 1e3:.0f} | "
                             f"{share:.1%} | {8 * t_comp / (t_comp + t8):.1f}x |")
            print(lines[-1], flush=True)
        lines += ["", "Reading: on this 2-core machine two ranks share the cores the one rank had (and the "
                  "all-reduce, the step exchange and other jobs take their share), so little is gained; "
                  "the all-reduce is a few percent of an update's compute, so on a machine where every rank has "
                  "its own cores (or GPU) the expected data-parallel speed-up in samples per second is close "
                  "to the number of ranks (last column: N t / (t + t_comm(N)), ring all-reduce traffic "
                  "2 (N-1)/N of the buffer). Not measured on such a machine yet."]
        lines.append("")
    update_section("distributed", "\n".join(lines))


if __name__ == "__main__":
    main()
