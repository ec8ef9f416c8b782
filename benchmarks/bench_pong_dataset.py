"""Real Pong frames: bytes on disk per 100k frames and sampler speed on them.

    python benchmarks/bench_pong_dataset.py [--steps 100000]

Collects `--steps` random-policy ALE/Pong-v5 steps (64x64 RGB, Dreamer preprocessing) with
`dreamer collect` once per image compression (lzf, the default, and gzip), into
benchmarks/_work/pong-<compression> (git-ignored; reused when already complete), then reports
bytes on disk per 100k frames and SequenceSampler batches/s for B=16, T=64 in memory mode and
in disk mode (memory_budget=0). Writes the `pong-dataset` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from results import update_section

from dreamer_core.data import store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.envs import EnvConfig
from dreamer_core.errors import DatasetError
from dreamer_core.stages.collect import CollectConfig, run

WORK = Path(__file__).resolve().parent / "_work"


def batches_per_second(sampler: SequenceSampler, seconds: float = 5.0) -> float:
    sampler.sample()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sampler.sample()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    args = parser.parse_args()
    rows = []
    for compression in ("lzf", "gzip"):
        out = WORK / f"pong-{compression}"
        try:
            ds = Dataset(out)
            complete = ds.num_steps >= args.steps
        except DatasetError:
            complete = False
        collect_sps = float("nan")
        if not complete:
            for path in [*store.shard_paths(out), *store.partial_paths(out), out / "dataset.json"]:
                path.unlink(missing_ok=True)
            cfg = CollectConfig(out=str(out), env=EnvConfig(id="ALE/Pong-v5"), steps=args.steps,
                                compression=compression, seed=0)
            collect_sps = run(cfg, progress=False).steps_per_second
            ds = Dataset(out)
        frames = ds.num_rows
        size = store.dir_size(out)
        start = time.perf_counter()
        memory = SequenceSampler(ds, 16, 64, seed=0)
        load_s = time.perf_counter() - start
        mem_bps = batches_per_second(memory)
        disk = SequenceSampler(ds, 16, 64, seed=0, memory_budget=0)
        disk_bps = batches_per_second(disk)
        row = (compression, frames, size / frames * 100_000 / 2**20, collect_sps, load_s, mem_bps, disk_bps)
        rows.append(row)
        print(row)
    lines = [
        "## Real Pong frames on disk (stage 01 + sampler)",
        "",
        f"Command: `python benchmarks/bench_pong_dataset.py --steps {args.steps}` "
        "(random policy, ALE/Pong-v5 64x64 RGB, action repeat 4, sticky actions 0.25; one env).",
        "",
        "| compression | frames stored | MiB per 100k frames | collect steps/s | open + load s | memory-mode batches/s (B=16, T=64) | disk-mode batches/s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {c} | {f:,} | {m:.1f} | {s:,.0f} | {lo:.1f} | {mb:,.0f} | {db:,.1f} |" for c, f, m, s, lo, mb, db in rows]
    lines += ["", "Uncompressed, 100k frames of 64x64x3 are 1,172 MiB. `collect steps/s` is nan when the dataset was reused."]
    update_section("pong-dataset", "\n".join(lines))


if __name__ == "__main__":
    main()
