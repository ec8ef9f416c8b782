"""Speed of one full Dreamer update (world model + actor-critic), its FLOPs, and this CPU's limit.

    python benchmarks/bench_update.py [--sizes tiny XS S] [--obs vector image] [--repeats 5]
                                      [--threads 2] [--rounds 3] [--peer /work/peer-venv/bin/python]
                                      [--breakdown XS] [--no-write] [--device cpu|cuda] [--note TEXT]
    python benchmarks/bench_update.py --summarize [--note TEXT]   # the last run's section again

One full update is what `dreamer train` runs per train step (``OnlineTrainer.train_step``):
``stages.updates.world_model_update`` on a B=16 x T=64 batch, then, with the world model frozen,
``stages.updates.behavior_update`` from its posterior states (imagination of H=15 from all 1024
of them, lambda-returns, actor and critic losses, backward, clipping, Adam, slow critic). The
models are built from the size presets exactly as stages 02 and 03 build them, for a
CartPole-like task (Discrete(2); vector 4 or 64x64x3 frames).

Every figure comes from a fresh worker process (``--worker``), and the workers of the sizes,
observation kinds and the peer are interleaved round by round, so machine load hits them alike;
the table gives the median over rounds of each worker's median over ``--repeats`` timed updates
(after 2 warm-up updates). In the same run: the float32 matmul rate of this CPU (2048 x 2048,
the same threads), the update's FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
(the gather-sum first layers count no FLOPs for their one-hot block; the count with plain
matmuls is shown beside), and the achieved fraction of the matmul rate.

``--peer PYTHON``: also time the same update of the peer library (``benchmarks/peer_update.py``
run by that interpreter; set it up with ``benchmarks/setup_peer.sh``), interleaved with ours: as
installed, and with the allocator settings our workers get from ``runtime`` (as environment
variables), so that the ratio is not the allocator's alone.
``--breakdown SIZE``: the parts of one vector update of that size, each timed on its own.
``--device cuda``: time the update on the GPU (the models and the batch on the device, a
synchronisation around each timed update; the matmul rate is then the GPU's). ``--threads``
still sets the CPU threads. benchmarks/gpu_check.sh runs it that way.
Writes the ``update-speed`` section of benchmarks/RESULTS.md (unless ``--no-write``), with the
``--note`` given now or stored by an earlier run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
B, T = 16, 64


# --- the worker: one size, one observation kind, one process ----------------------------------


def build(size: str, obs: str, seed: int = 0, action: str = "discrete", device: str = "cpu"):
    """World model, actor-critic and their optimizers as stages 02 and 03 build them."""
    import gymnasium as gym
    import numpy as np
    import torch

    from dreamer_core import config as config_lib
    from dreamer_core.behavior import ActorCritic
    from dreamer_core.optim import make_optimizer
    from dreamer_core.stages.train_behavior import TrainBehaviorConfig
    from dreamer_core.stages.train_world_model import TrainWorldModelConfig
    from dreamer_core.world_model import WorldModel

    torch.manual_seed(seed)
    space = (gym.spaces.Box(-np.inf, np.inf, (4,), np.float32) if obs == "vector"
             else gym.spaces.Box(0, 255, (64, 64, 3), np.uint8))
    obs_space = gym.spaces.Dict({obs: space})
    act_space = gym.spaces.Discrete(2) if action == "discrete" else gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    wm_cfg = config_lib.apply_presets(TrainWorldModelConfig(), "train-world-model", [size])
    bh_cfg = config_lib.apply_presets(TrainBehaviorConfig(), "train-behavior", [size])
    world_model = WorldModel(wm_cfg.model, obs_space, act_space).to(device)
    agent = ActorCritic.for_world_model(bh_cfg.behavior, world_model).to(device)
    groups = agent.parameter_groups()
    return dict(world_model=world_model, agent=agent, wm_cfg=wm_cfg.optim, cfg=bh_cfg.behavior,
                wm_optim=make_optimizer(world_model.parameters(), wm_cfg.optim),
                actor_optim=make_optimizer(groups["actor"], bh_cfg.behavior.actor_optim),
                critic_optim=make_optimizer(groups["critic"], bh_cfg.behavior.critic_optim))


def make_batch(obs: str, seed: int = 0, action: str = "discrete"):
    """A fixed B x T batch with an episode start in every window (speed does not depend on values)."""
    import torch

    from dreamer_core.types import Batch

    g = torch.Generator().manual_seed(seed)
    if obs == "vector":
        observation = {"vector": torch.randn(B, T, 4, generator=g)}
    else:
        observation = {"image": torch.randint(0, 256, (B, T, 64, 64, 3), generator=g, dtype=torch.uint8)}
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    actions = (torch.randint(0, 2, (B, T), generator=g) if action == "discrete"
               else torch.rand(B, T, 1, generator=g) * 4 - 2)
    return Batch(obs=observation, action=actions,
                 reward=torch.rand(B, T, generator=g), is_first=is_first,
                 is_last=torch.zeros(B, T, dtype=torch.bool), is_terminal=torch.zeros(B, T, dtype=torch.bool))


def full_update(parts: dict, batch, update: int) -> dict[str, float]:
    """What ``OnlineTrainer.train_step`` runs on a batch: the world-model update, then the
    behavior update from its posterior states with the world model frozen."""
    from dreamer_core.stages.updates import behavior_update, world_model_update

    wm = parts["world_model"]
    ok, metrics, post = world_model_update(wm, parts["wm_optim"], parts["wm_cfg"], update, batch)
    assert ok, "non-finite world-model update in the benchmark"
    wm.requires_grad_(False)
    try:
        metrics.update(behavior_update(wm, parts["agent"], parts["actor_optim"], parts["critic_optim"],
                                       parts["cfg"], batch, post=post, update=update))
    finally:
        wm.requires_grad_(True)
    return metrics


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a CUDA timing without it measures only the launches)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def matmul_gflops(n: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """This CPU's (or GPU's) float32 matmul rate with the current threads (best of ``repeats``)."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def count_gflop(parts: dict, batch, dense: bool = False) -> float:
    """FLOPs of one full update by FlopCounterMode; ``dense``: with plain matmuls for the one-hot
    blocks (the mathematics the gather-sums replace), restored afterwards.

    FlopCounterMode does not count the one-hot blocks' gather-sums (R x S x O additions), and it
    counts their sparse weight gradients (R x S x O multiply-adds) as dense products: both are
    corrected here by hand."""
    from torch.utils.flop_counter import FlopCounterMode

    from dreamer_core.nets import layers as layers_module
    from dreamer_core.nets.layers import OneHotAwareLinear

    layers = [m for k in ("world_model", "agent") for m in parts[k].modules() if isinstance(m, OneHotAwareLinear)]
    saved = [m.onehot for m in layers]
    if dense:
        for m in layers:
            m.onehot = None
    extra = [0]
    real_forward, real_grad = layers_module._OneHotMatmul.forward, layers_module._onehot_weight_grad

    def gather_sum(ctx, x, weight, flat, value):
        extra[0] += flat.numel() * weight.shape[0]  # one addition per picked row entry
        return real_forward(ctx, x, weight, flat, value)

    def sparse_grad(grad, flat, value, width):
        # One multiply-add per pick and output; FlopCounterMode counts the sparse product by its
        # shapes, as the dense [S*K, R] @ [R, O] one: take that back out.
        extra[0] += 2 * flat.numel() * grad.shape[1] - 2 * width * grad.shape[0] * grad.shape[1]
        return real_grad(grad, flat, value, width)

    layers_module._OneHotMatmul.forward = staticmethod(gather_sum)
    layers_module._onehot_weight_grad = sparse_grad
    try:
        with FlopCounterMode(display=False) as counter:
            full_update(parts, batch, 10_000)
    finally:
        for m, onehot in zip(layers, saved):
            m.onehot = onehot
        layers_module._OneHotMatmul.forward = staticmethod(real_forward)
        layers_module._onehot_weight_grad = real_grad
    return (counter.get_total_flops() + extra[0]) / 1e9


def worker(args) -> None:
    import torch

    from dreamer_core import runtime

    runtime.setup(args.threads)  # as every training stage starts: allocator tuning, threads
    parts = build(args.size, args.obs, device=args.device)
    batch = make_batch(args.obs).to(args.device)
    for i in range(2):
        full_update(parts, batch, i)
    synchronize(args.device)
    ms = []
    for i in range(args.repeats):
        start = time.perf_counter()
        full_update(parts, batch, 2 + i)
        synchronize(args.device)
        ms.append((time.perf_counter() - start) * 1000)
    out = {"size": args.size, "obs": args.obs, "ms": ms, "threads": args.threads, "device": args.device,
           "params": sum(p.numel() for p in parts["world_model"].parameters()),
           "actor_critic_params": sum(p.numel() for p in parts["agent"].actor.parameters())
           + sum(p.numel() for p in parts["agent"].critic.parameters()),
           "torch": torch.__version__}
    if args.count_flops:
        out["gflop"] = count_gflop(parts, batch)
        out["gflop_dense"] = count_gflop(parts, batch, dense=True)
        out["matmul_gflops"] = matmul_gflops(device=args.device)
    print(json.dumps(out))


# --- the breakdown: parts of one update, each timed on its own ----------------------------------


def breakdown(size: str, threads: int, repeats: int = 3) -> list[tuple[str, float]]:
    import torch

    from dreamer_core import runtime
    from dreamer_core.optim import clip_gradients

    runtime.setup(threads)
    parts = build(size, "vector")
    wm, agent, cfg = parts["world_model"], parts["agent"], parts["cfg"]
    batch = make_batch("vector")

    def timed(fn):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        return (time.perf_counter() - start) / repeats * 1000, out

    rows: list[tuple[str, float]] = []
    t_fwd, (loss, _, post) = timed(lambda: wm.loss(batch))
    rows.append(("world model: forward + losses", t_fwd))

    def wm_backward():
        loss, _, _ = wm.loss(batch)
        parts["wm_optim"].zero_grad(set_to_none=True)
        loss.backward()

    t_fb, _ = timed(wm_backward)
    rows.append(("world model: backward", t_fb - t_fwd))

    def wm_step():
        clip_gradients(wm.parameters(), parts["wm_cfg"])
        parts["wm_optim"].step()

    rows.append(("world model: clip + optimizer", timed(wm_step)[0]))
    wm.requires_grad_(False)
    post = post.detach()
    start = post.flatten(0, 1)
    dynamics = agent.grad_mode == "dynamics"
    t_imag, (states, actions, logp, entropy) = timed(lambda: agent.imagine(wm, start, cfg.horizon, dynamics))
    rows.append((f"imagination: H={cfg.horizon} from {B * T} starts (actor in the loop)", t_imag))
    first_cont = torch.ones(B * T)
    t_score, scored = timed(lambda: agent.score(wm, wm.features(states), first_cont, dynamics))
    rows.append(("scoring: reward, continue, critic, slow critic heads + returns", t_score))

    def losses_and_backward():
        actor_loss, critic_loss, _ = agent.loss(wm, post, batch)
        parts["actor_optim"].zero_grad(set_to_none=True)
        actor_loss.backward()
        parts["critic_optim"].zero_grad(set_to_none=True)
        critic_loss.backward()

    t_all, _ = timed(losses_and_backward)
    t_loss, _ = timed(lambda: agent.loss(wm, post, batch))
    rows.append(("actor-critic: rest of the losses (returns normaliser, replay value, metrics)",
                 t_loss - t_imag - t_score))
    rows.append(("actor-critic: backward (actor + critic)", t_all - t_loss))

    def ac_step():
        clip_gradients(agent.actor.parameters(), cfg.actor_optim)
        parts["actor_optim"].step()
        clip_gradients(agent.critic.parameters(), cfg.critic_optim)
        parts["critic_optim"].step()
        agent.update_slow_critic()

    rows.append(("actor-critic: clip + optimizers + slow critic", timed(ac_step)[0]))
    wm.requires_grad_(True)
    t_full, _ = timed(lambda: full_update(parts, batch, 100))
    rows.append(("whole update (the sum of the parts above, measured in one go)", t_full))
    return rows


# --- the driver --------------------------------------------------------------------------------


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "XS", "S"])
    parser.add_argument("--obs", nargs="+", default=["vector", "image"], choices=["vector", "image"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer", default=None, help="python of the peer venv (benchmarks/setup_peer.sh)")
    parser.add_argument("--peer-sizes", nargs="+", default=["XS", "S"])
    parser.add_argument("--base-tree", default=None,
                        help="a checkout (e.g. a git worktree of an earlier commit) whose dreamer_core is timed "
                             "too, interleaved with this one: an A/B of a change")
    parser.add_argument("--base-env", nargs="+", default=[], metavar="KEY=VALUE",
                        help="environment of the --base-tree workers only: what that checkout's CLI set before "
                             "importing torch (e.g. THP_MEM_ALLOC_ENABLE=1 for commits before the allocator change)")
    parser.add_argument("--breakdown", default=None, help="size whose vector update is split into parts")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--note", default=None,
                        help="text written under the table (kept in benchmarks/records/NOTE-update-speed.md for later "
                             "runs; '' removes it)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the update runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="XS", help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--summarize", action="store_true",
                        help="run nothing; write the section of the last run again (e.g. with a new --note)")
    args = parser.parse_args()
    if args.summarize:
        if not LAST.exists():
            raise SystemExit(f"--summarize: no saved run at {LAST}; run the benchmark first.")
        write(json.loads(LAST.read_text()), args.note)
        return
    from dreamer_core import runtime

    if args.worker:
        args.obs = args.obs[0]
        worker(args)
        return

    jobs = [("ours", s, o) for s in args.sizes for o in args.obs]
    if args.base_tree:
        jobs = [j for s in args.sizes for o in args.obs for j in (("ours", s, o), ("base", s, o))]
    if args.peer:
        jobs += [(who, s, "vector") for s in args.peer_sizes for who in ("peer", "peer+alloc")]
    results: dict[tuple, list[dict]] = {j: [] for j in jobs}
    allocator = runtime.allocator_env()
    if any("=" not in item for item in args.base_env):
        parser.error("--base-env takes KEY=VALUE items")
    base_env = dict(item.split("=", 1) for item in args.base_env)
    for r in range(args.rounds):
        for job in jobs:
            who, size, obs = job
            env = None
            if who in ("ours", "base"):
                cmd = [sys.executable, __file__, "--worker", "--size", size, "--obs", obs,
                       "--threads", str(args.threads), "--repeats", str(args.repeats), "--device", args.device]
                if r == 0 and who == "ours":
                    cmd.append("--count-flops")
                if who == "base":
                    env = {**os.environ, **base_env, "PYTHONPATH": str(Path(args.base_tree).resolve())}
            else:
                cmd = [args.peer, str(HERE / "peer_update.py"), "--size", size, "--threads", str(args.threads),
                       "--repeats", str(args.repeats), "--json"] + (["--count-flops"] if r == 0 else [])
                # As installed, or given the allocator settings our stages make (runtime).
                env = {k: v for k, v in os.environ.items() if k not in allocator}
                if who == "peer+alloc":
                    env.update(allocator)
            res = run_json(cmd, env)
            results[job].append(res)
            print(f"round {r + 1}: {who:4s} {size:4s} {obs:6s} median {statistics.median(res['ms']):8.1f} ms", flush=True)

    def ms(job) -> float:
        return statistics.median(statistics.median(r["ms"]) for r in results[job])

    if args.base_tree:
        print(f"A/B against {args.base_tree} (median of per-round medians, ms; base / this = speed-up):")
        for size in args.sizes:
            for obs in args.obs:
                a, b = ms(("ours", size, obs)), ms(("base", size, obs))
                print(f"  {size:4s} {obs:6s} this {a:8.1f}  base {b:8.1f}  speed-up {b / a:.2f}x")
        return
    saved = {"args": {k: getattr(args, k) for k in SAVED_ARGS}, "jobs": [list(j) for j in jobs],
             "results": [results[j] for j in jobs], "load": Path("/proc/loadavg").read_text().split()[:3],
             "breakdown": breakdown(args.breakdown, args.threads) if args.breakdown else None}
    if args.device == "cuda":
        import torch

        saved["gpu"] = torch.cuda.get_device_name(0)
    if not args.no_write:
        LAST.parent.mkdir(parents=True, exist_ok=True)
        LAST.write_text(json.dumps(saved))
    write(saved, args.note, args.no_write)


# What a run keeps (benchmarks/records/update-speed-last.json) so that --summarize can write its
# section again, e.g. with a new --note.
SAVED_ARGS = ("sizes", "obs", "repeats", "rounds", "threads", "peer", "peer_sizes", "breakdown", "device")
LAST = HERE / "records" / "update-speed-last.json"
NOTE = HERE / "records" / "NOTE-update-speed.md"


def write(saved: dict, note: str | None, no_write: bool = False) -> None:
    """Print the section of a run (``saved``) and write it to RESULTS.md (unless ``no_write``)."""
    sys.path.insert(0, str(HERE))
    from results import kept_note, update_section

    note = note if no_write else kept_note(NOTE, note)
    text = "\n".join(render(saved) + (["", note] if note else []))
    print(text)
    if not no_write:
        update_section("update-speed", text)


def render(saved: dict) -> list[str]:
    args = argparse.Namespace(**saved["args"])
    jobs = [tuple(j) for j in saved["jobs"]]
    results = dict(zip(jobs, saved["results"]))

    def ms(job) -> float:
        return statistics.median(statistics.median(r["ms"]) for r in results[job])

    rate = statistics.median(r["matmul_gflops"] for j in jobs if j[0] == "ours" for r in results[j] if "matmul_gflops" in r)
    torch_version = results[jobs[0]][0]["torch"]
    lines = [
        "## Full update speed (`benchmarks/bench_update.py`)",
        "",
        f"Command: `python benchmarks/bench_update.py --sizes {' '.join(args.sizes)} --obs {' '.join(args.obs)} "
        f"--repeats {args.repeats} --rounds {args.rounds} --threads {args.threads}"
        + (f" --peer {args.peer}" if args.peer else "") + (f" --breakdown {args.breakdown}" if args.breakdown else "")
        + "`. "
        f"torch {torch_version}, {args.threads} threads, float32, "
        f"{saved.get('gpu', 'CPU')}. One full update = world-model update on "
        f"B={B} x T={T}, then the actor-critic update from its {B * T} posterior states (H=15), as `dreamer train` "
        f"runs it. Median over {args.rounds} interleaved rounds (fresh process each) of the median of "
        f"{args.repeats} updates. Measured float32 matmul rate (2048 x 2048, {args.threads} threads, same run): "
        f"**{rate:.0f} GFLOP/s**. Load average at the end: {' '.join(saved['load'])}. This toolkit's workers start as "
        "every training stage does (`runtime`: glibc serves every block from its heap and keeps freed "
        "blocks there for reuse instead of unmapping them)"
        + ("; the peer runs as installed and, in a second row, with the same allocator settings given as "
           "environment variables." if args.peer else "."),
        "",
        "| who | size | obs | WM params | ms / update | GFLOP (counted) | GFLOP (plain matmuls) | achieved GFLOP/s | of matmul rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for job in jobs:
        who, size, obs = job
        first = results[job][0]
        t = ms(job)
        g = first.get("gflop")
        dense = first.get("gflop_dense")
        name = "this toolkit" if who == "ours" else f"peer {first.get('sheeprl', '')}".strip()
        if who == "peer+alloc":
            name += ", our allocator settings"
        achieved = f"{g / t * 1000:.1f}" if g else "-"
        frac = f"{g / t * 1000 / rate:.0%}" if g else "-"
        lines.append(f"| {name} | {size} | {obs} | {first['params'] / 1e6:.2f}M | {t:.0f} | "
                     f"{g:.1f} | {dense:.1f} | {achieved} | {frac} |" if dense else
                     f"| {name} | {size} | {obs} | {first['params'] / 1e6:.2f}M | {t:.0f} | "
                     f"{g if g else '-'} | - | {achieved} | {frac} |")
    if args.peer:
        lines.append("")
        for size in args.peer_sizes:
            if ("ours", size, "vector") in results:
                ours, peer, alloc = (ms((who, size, "vector")) for who in ("ours", "peer", "peer+alloc"))
                lines.append(f"- {size} vector: the peer's update takes {peer / ours:.2f}x this toolkit's ({peer:.0f} ms "
                             f"vs {ours:.0f} ms); given our allocator settings too, {alloc / ours:.2f}x ({alloc:.0f} ms).")
    if saved.get("breakdown"):
        lines += ["", f"Where the time goes in one {args.breakdown} vector update (each part timed on its own, "
                  "mean of 3 after a warm-up; parts overlap the whole by measurement noise):", "",
                  "| part | ms |", "|---|---|"]
        lines += [f"| {name} | {t:.0f} |" for name, t in saved["breakdown"]]
    return lines


if __name__ == "__main__":
    main()
