"""Throughput of the online loop (`dreamer train`) per model size, and where its time goes.

    python benchmarks/bench_online.py --sizes tiny XS S --ab-sizes tiny XS --updates 40

For each size: a CartPole-v1 run with the online defaults (B=16 x T=32 windows, train ratio 64,
so one update per 8 env steps) and that size's model; the random prefill (1000 steps) is not
timed, then ``--updates`` updates' worth of env steps are. Reports env steps/s and updates/s of
the whole loop and the share of collection (policy + env), world model, behavior and data
(replay sampling, episode bookkeeping, shard writes). Then, for the ``--ab-sizes``, each of this
session's optimisations undone alone and all together (fresh process per figure, interleaved,
best of two): the allocator tuning, the gathered two-hot log-prob, plain matmuls for narrow
one-hot blocks, and behavior reusing the world-model update's posterior states.
Writes the ``online-speed`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from results import update_section

from dreamer_core.logging import read_metrics
from dreamer_core.stages import online

VARIANTS = {
    "all": "this code",
    "no-malloc": "glibc's default allocator (DREAMER_MALLOC=default)",
    "dense-twohot": "two-hot log-prob with dense [..., 255] weights",
    "refilter": "behavior re-filters the batch instead of reusing the posterior",
    "gather-narrow": "gather-sum also for 8-class latents",
    "before": "all four of the above (the loop before these optimisations)",
}


def apply_variant(variant: str) -> None:
    """Undo optimisations inside this process (the allocator one is set by the parent's env)."""
    from dreamer_core.nets import distributions, layers

    if variant in ("dense-twohot", "before"):
        def dense_log_prob(self, target):
            weights = distributions.two_hot(distributions.symlog(target), self.bins)
            return (weights * torch.log_softmax(self.logits, -1)).sum(-1)
        distributions.TwoHotDist.log_prob = dense_log_prob
    if variant in ("gather-narrow", "before"):
        layers.OneHotAwareLinear.min_classes = 0
    if variant in ("refilter", "before"):
        real = online.behavior_update

        def refilter(*args, post=None, **kwargs):  # drop the posterior: behavior filters the batch itself
            return real(*args, **kwargs)
        online.behavior_update = refilter


def online_config(out: str, size: str, threads: int) -> online.TrainConfig:
    """`dreamer train`'s defaults on CartPole-v1 with ``size``'s model, on the CPU, with no
    evaluation and no timed checkpoint: what this benchmark (and bench_floor.py) time."""
    return online.make_config(out, [size] if size != "tiny" else [],
                              [f"threads={threads}", "eval_every=0", "eval_episodes=0", "checkpoint_seconds=1e9"],
                              {"env.id": "CartPole-v1", "batch_size": 16, "seq_len": 32, "device": "cpu"})


def measure(size: str, updates: int, threads: int, variant: str = "all") -> dict:
    tmp = Path(tempfile.mkdtemp())
    try:
        cfg = online_config(str(tmp / "run"), size, threads)
        per_update = cfg.batch_size * cfg.seq_len / cfg.train_ratio
        cfg = online.replace(cfg, steps=cfg.prefill + int(updates * per_update), log_every=cfg.prefill)
        apply_variant(variant)
        trainer = online.OnlineTrainer(cfg, progress=False)
        trainer.run()
        trainer.close()
        # The record logged at the end of the prefill holds the cumulative times then; the last
        # record holds them at the end: their difference is the timed part.
        records = [r for r in read_metrics(tmp / "run") if "speed/updates" in r]
        first, last = next(r for r in records if r["step"] >= cfg.prefill), records[-1]
        parts = {k[5:]: last[k] - first.get(k, 0.0) for k in last if k.startswith("time/")}
        seconds = sum(parts.values())
        params = sum(p.numel() for p in trainer.world_model.parameters()) + \
            sum(p.numel() for p in trainer.agent.parameters())
        done = last["speed/updates"] - first["speed/updates"]
        return {
            "size": size, "variant": variant, "params": params, "seconds": seconds,
            "env_steps_per_s": (last["step"] - first["step"]) / seconds,
            "updates_per_s": done / seconds,
            "ms_per_update": 1000 * seconds / max(done, 1),
            "share": {k: v / seconds for k, v in parts.items()},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_in_subprocess(size: str, updates: int, threads: int, variant: str) -> dict:
    """One measurement in a fresh process (the allocator setting is per process)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if variant in ("no-malloc", "before"):
        env["DREAMER_MALLOC"] = "default"
    out = subprocess.run([sys.executable, __file__, "--one", size, "--variant", variant, "--updates", str(updates),
                          "--threads", str(threads)], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "XS", "S"])
    parser.add_argument("--ab-sizes", nargs="+", default=["tiny", "XS"])
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="text appended to the RESULTS section (machine load etc.)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.updates, args.threads, args.variant)))
        return
    rows, ab = [], []
    parts = ["collect", "world_model", "behavior", "data"]
    for size in args.sizes:
        r = measure_in_subprocess(size, args.updates, args.threads, "all")
        print(r, flush=True)
        share = r["share"]
        rows.append(f"| {size} | {r['params'] / 1e6:.2f} M | {r['env_steps_per_s']:.1f} | {r['updates_per_s']:.2f} | "
                    f"{r['ms_per_update']:.0f} | " + " | ".join(f"{100 * share.get(p, 0):.1f}%" for p in parts) + " |")
    for size in args.ab_sizes:
        results = {}
        for rep in range(2):  # interleaved, best of two
            for variant in VARIANTS:
                r = measure_in_subprocess(size, args.updates, args.threads, variant)
                results[variant] = min(results.get(variant, 1e18), r["ms_per_update"])
                print(size, rep, variant, round(r["ms_per_update"]), flush=True)
        for variant, what in VARIANTS.items():
            if variant == "all":
                continue
            ab.append(f"| {size} | {what} | {results[variant]:.0f} | {results['all']:.0f} | "
                      f"{results[variant] / results['all']:.2f}x |")
    body = f"""## Online loop throughput (`dreamer train`)

Command: `python benchmarks/bench_online.py --sizes {' '.join(args.sizes)} --ab-sizes {' '.join(args.ab_sizes)} --updates {args.updates} --threads {args.threads}`.
torch {torch.__version__}, {args.threads} threads, float32, CPU; CartPole-v1 vector observations, the online
defaults (B=16 x T=32, train ratio 64: one world-model + behavior update per 8 env steps) with each
size's model, {args.updates} updates timed after the random prefill; each figure from a fresh process.
ms / update includes the 8 env steps of acting per update.

| size | WM + actor-critic params | env steps / s | updates / s | ms / update | collect | world model | behavior | data |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + """

Optimisations of this session, each undone alone (best of two interleaved runs, whole loop):

| size | without | ms / update without | ms / update with all | speed-up |
|---|---|---|---|---|
""" + "\n".join(ab)
    if args.note:
        body += "\n\n" + args.note
    update_section("online-speed", body)


if __name__ == "__main__":
    sys.exit(main())
