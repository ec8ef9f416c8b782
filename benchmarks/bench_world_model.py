"""World-model update speed: ms per update and parameter count per size and observation kind.

    python benchmarks/bench_world_model.py [--sizes tiny XS S] [--updates 10] [--compile]

For each size preset and observation kind (vector: CartPole-like 4-dim; image: 64x64x3), builds
the DreamerV3 world model, and times full updates (sample -> loss -> backward -> clip -> Adam)
at B=16, T=64 on this machine, in float32 and with bf16 autocast. Then profiles one XS image
and one S vector update with torch.profiler and reports where the time goes. With --compile,
also times `torch.compile` of the loss (cold compile time reported separately). Writes the
`world-model-speed` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from results import update_section

from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.data.schema import Episode
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.optim import clip_gradients, make_optimizer
from dreamer_core.stages.train_world_model import make_config
from dreamer_core.world_model import WorldModel

OBS = {
    "vector": gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)}),
    "image": gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)}),
}
ACTIONS = gym.spaces.Discrete(2)


def synthetic_dataset(root: Path, kind: str) -> Dataset:
    rng = np.random.default_rng(0)
    with DatasetWriter(root / kind, "Bench-v0", {"id": "Bench-v0"}, OBS[kind], ACTIONS) as w:
        for _ in range(20):
            steps = 100
            if kind == "vector":
                obs = {"vector": rng.standard_normal((steps + 1, 4)).astype(np.float32)}
            else:
                obs = {"image": rng.integers(0, 255, (steps + 1, 64, 64, 3), dtype=np.uint8)}
            w.add_episode(Episode.from_transitions(obs, rng.integers(0, 2, steps), rng.random(steps).astype(np.float32), True))
    return Dataset(root / kind)


def time_updates(model, sampler, cfg, updates: int, bf16: bool, loss_fn=None) -> float:
    opt = make_optimizer(model.parameters(), cfg.optim)
    loss_fn = loss_fn or model.loss
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))

    def step():
        batch = sampler.sample()
        with ctx():
            loss, metrics, _ = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), cfg.optim)
        opt.step()
        return float(loss.detach())

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(updates):
        step()
    return (time.perf_counter() - start) / updates * 1000


def profile_summary(model, sampler, cfg, label: str) -> list[str]:
    opt = make_optimizer(model.parameters(), cfg.optim)
    from torch.profiler import ProfilerActivity, profile, record_function

    def step():
        batch = sampler.sample()
        with record_function("1_forward_loss"):
            loss, _, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        with record_function("2_backward"):
            loss.backward()
        with record_function("3_clip_and_adam"):
            clip_gradients(model.parameters(), cfg.optim)
            opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    phases = {e.key: e.cpu_time_total for e in events if e.key[:2] in ("1_", "2_", "3_")}
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    lines = [f"**{label}**: " + ", ".join(f"{k[2:]} {v / max(sum(phases.values()), 1) * 100:.0f}%" for k, v in sorted(phases.items())),
             "top ops by self time: " + ", ".join(f"`{e.key}` {e.self_cpu_time_total / total * 100:.0f}%" for e in top)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["tiny", "XS", "S"])
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-only", action="store_true", help="with --compile: write only the compile section")
    parser.add_argument("--bf16-images", action="store_true", help="also time bf16 autocast on image models (slow)")
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="bench_wm_"))
    data = {kind: synthetic_dataset(root, kind) for kind in OBS}
    rows = []
    models = {}
    for size in args.sizes:
        cfg = make_config([], "x", [size], [], {})
        for kind, ds in data.items():
            model = WorldModel(cfg.model, ds.observation_space, ds.action_space)
            sampler = SequenceSampler(ds, 16, 64, seed=0)
            params = sum(p.numel() for p in model.parameters())
            fp32 = time_updates(model, sampler, cfg, args.updates, bf16=False)
            # bf16 autocast on a CPU without AMX is 6-10x slower; image runs would take minutes
            bf16 = time_updates(model, sampler, cfg, args.updates, bf16=True) if kind == "vector" or args.bf16_images else float("nan")
            rows.append((size, kind, params, fp32, bf16))
            models[(size, kind)] = (model, sampler, cfg)
            print(f"{size:5s} {kind:6s} params {params / 1e6:6.2f}M  fp32 {fp32:7.1f} ms  bf16 {bf16:7.1f} ms")
    lines = [
        "## World-model update speed (stage 02)",
        "",
        f"Command: `python benchmarks/bench_world_model.py --sizes {' '.join(args.sizes)} --updates {args.updates}`. "
        "One full update = sample B=16 x T=64 -> loss -> backward -> clip -> Adam, on this 2-core CPU, "
        "mean over the timed updates after 2 warm-up updates.",
        "",
        "| size | obs | parameters | ms/update float32 | ms/update bf16 autocast |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {k} | {p / 1e6:.2f}M | {a:.0f} | {'-' if b != b else f'{b:.0f}'} |" for s, k, p, a, b in rows]
    import subprocess

    flags = subprocess.run(["grep", "-m1", "-o", "-w", "-e", "amx_bf16", "-e", "avx512_bf16", "/proc/cpuinfo"],
                           capture_output=True, text=True).stdout.strip() or "none (AVX2 only)"
    lines += ["", f"CPU bf16 matrix extensions: {flags}. Without AMX, bf16 autocast is slower than float32 here, "
              "so `--precision float32` is the default; bf16 image runs are skipped unless --bf16-images."]
    lines += ["", "Where the time goes (torch.profiler, 3 updates, float32):", ""]
    for key in [("XS", "image"), ("S", "vector")]:
        if key in models:
            lines += profile_summary(*models[key], label=f"{key[0]} {key[1]}") + [""]
    if args.compile and ("XS", "vector") in models:
        model, sampler, cfg = models[("XS", "vector")]
        compiled = torch.compile(model.loss, dynamic=False)
        start = time.perf_counter()
        time_updates(model, sampler, cfg, 1, bf16=False, loss_fn=compiled)
        cold = time.perf_counter() - start
        warm = time_updates(model, sampler, cfg, args.updates, bf16=False, loss_fn=compiled)
        eager = time_updates(model, sampler, cfg, args.updates, bf16=False)
        text = (f"## torch.compile (stage 02)\n\nCommand: `python benchmarks/bench_world_model.py --sizes XS "
                f"--updates {args.updates} --compile`. `torch.compile(model.loss, dynamic=False)` on the XS vector world model, "
                f"B=16, T=64: cold compile + 3 warm-up updates {cold:.0f} s; then {warm:.0f} ms/update vs eager "
                f"{eager:.0f} ms/update measured right after ({eager / warm:.2f}x). The 64-step RSSM loop is unrolled "
                "into the graph (long cold start), and `F.one_hot` of the actions breaks the graph; no gain, so it is off.")
        print(text)
        update_section("world-model-compile", text)
        if args.compile_only:
            return
    update_section("world-model-speed", "\n".join(lines))


if __name__ == "__main__":
    main()
