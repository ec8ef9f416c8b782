"""Throughput of the online loop (`dreamer train`) per model size, and where its time goes.

    python benchmarks/bench_online.py --sizes tiny XS S --updates 40

For each size: a CartPole-v1 run with the online defaults (B=16 x T=32 windows, train ratio 64,
so one update per 8 env steps) and that size's model, the random prefill (1000 steps) not
timed, then ``--updates`` updates' worth of env steps timed. Reports env steps/s and updates/s
of the whole loop, the share of collection (policy + env), world model, behavior, data
(replay sampling, episode bookkeeping, shard writes) and checkpoints; and an A/B of the one
optimisation specific to the loop: behavior learning starts from the posterior states the
world-model update just computed, instead of filtering the batch again.
Writes the ``online-speed`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from results import update_section

from dreamer_core.logging import read_metrics
from dreamer_core.stages import online
from dreamer_core.stages.train_behavior import behavior_update


def measure(size: str, updates: int, threads: int, reuse_posterior: bool = True) -> dict:
    tmp = Path(tempfile.mkdtemp())
    try:
        cfg = online.make_config(str(tmp / "run"), [size] if size != "tiny" else [],
                                 [f"threads={threads}", "eval_every=0", "eval_episodes=0", "checkpoint_seconds=1e9"],
                                 {"env.id": "CartPole-v1", "batch_size": 16, "seq_len": 32, "device": "cpu"})
        trainer = online.OnlineTrainer(cfg, progress=False)
        if not reuse_posterior:
            def train_step(self=trainer):  # the same update, but behavior filters the batch itself
                batch = self.replay.sample()
                self.clock.switch("world_model")
                ok, metrics, _ = online.world_model_update(self.world_model, self.wm_optim, cfg.optim, self.updates,
                                                           batch, cfg.precision)
                self.updates += 1
                if not ok:
                    return {}
                self.clock.switch("behavior")
                self.world_model.requires_grad_(False)
                out = behavior_update(self.world_model, self.agent, self.actor_optim, self.critic_optim,
                                      cfg.behavior, batch)
                self.world_model.requires_grad_(True)
                return out
            trainer.train_step = train_step
        per_update = cfg.batch_size * cfg.seq_len / cfg.train_ratio
        trainer.cfg = online.replace(cfg, steps=cfg.prefill + int(updates * per_update), log_every=cfg.prefill)
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
            "size": size, "params": params, "seconds": seconds,
            "env_steps_per_s": (last["step"] - first["step"]) / seconds,
            "updates_per_s": done / seconds,
            "ms_per_update": 1000 * seconds / max(done, 1),
            "share": {k: v / seconds for k, v in parts.items()},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "XS", "S"])
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows, ab = [], []
    for size in args.sizes:
        r = measure(size, args.updates, args.threads)
        print(r, flush=True)
        share = r["share"]
        parts = ["collect", "world_model", "behavior", "data", "checkpoint"]
        rows.append(f"| {size} | {r['params'] / 1e6:.2f} M | {r['env_steps_per_s']:.1f} | {r['updates_per_s']:.2f} | "
                    f"{r['ms_per_update']:.0f} | " + " | ".join(f"{100 * share.get(p, 0):.1f}%" for p in parts) + " |")
    for size in args.sizes[:2]:
        fresh = measure(size, args.updates, args.threads, reuse_posterior=False)
        reuse = measure(size, args.updates, args.threads, reuse_posterior=True)
        print(size, "re-filter", fresh["ms_per_update"], "reuse", reuse["ms_per_update"], flush=True)
        ab.append(f"| {size} | {fresh['ms_per_update']:.0f} | {reuse['ms_per_update']:.0f} | "
                  f"{fresh['ms_per_update'] / reuse['ms_per_update']:.2f}x |")
    body = f"""## Online loop throughput (`dreamer train`)

Command: `python benchmarks/bench_online.py --sizes {' '.join(args.sizes)} --updates {args.updates} --threads {args.threads}`.
torch {torch.__version__}, {args.threads} threads, float32, CPU; CartPole-v1 vector observations, the online
defaults (B=16 x T=32, train ratio 64: one world-model + behavior update per 8 env steps), the random
prefill not timed. ms / update includes the 8 env steps of acting per update.

| size | WM + actor-critic params | env steps / s | updates / s | ms / update | collect | world model | behavior | data | checkpoint |
|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + """

Behavior learning starts from the posterior states of the world-model update on the same batch
(DreamerV3 does the same) instead of filtering the batch again with the frozen model (what stage 03
does offline). A/B in the same run, whole loop:

| size | re-filter (ms / update) | reuse posterior (ms / update) | speed-up |
|---|---|---|---|
""" + "\n".join(ab)
    update_section("online-speed", body)


if __name__ == "__main__":
    sys.exit(main())
