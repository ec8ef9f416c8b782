"""Offline RL with stages 01-04: a fixed dataset in, an evaluated policy out.

    python benchmarks/offline_rl.py --task cartpole        # 50k random-policy CartPole-v1 steps
    python benchmarks/offline_rl.py --task cartpole-mixed  # 25k random + 25k from a partly trained agent
    python benchmarks/offline_rl.py --task pendulum        # 50k random-policy Pendulum-v1 steps

Each task: collect the dataset once (stage 01, cached under benchmarks/_work/offline/), train
a world model on it (stage 02), then train the behavior in imagination (stage 03) in chunks,
evaluating the greedy policy in the real env after each chunk (stage 04, 10 episodes) and over
20 episodes at the end. No env interaction feeds back into training. The mixed dataset's agent
is the `cartpole` task's behavior after its first evaluation chunk (run that task first).
Writes the `offline-rl-<task>` section of benchmarks/RESULTS.md and a PNG of the curve.
Run tasks side by side with OMP_NUM_THREADS=1 and --threads 1 on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from results import update_section  # noqa: E402

from dreamer_core import checkpoint, runs  # noqa: E402
from dreamer_core.data.dataset import Dataset  # noqa: E402
from dreamer_core.logging import read_metrics  # noqa: E402
from dreamer_core.stages import collect, evaluate, train_behavior, train_world_model  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "offline"
ENVS = {"cartpole": "CartPole-v1", "cartpole-mixed": "CartPole-v1", "pendulum": "Pendulum-v1"}


def collect_data(out: Path, env: str, steps: int, policy: str = "random", seed: int = 0) -> None:
    cfg = collect.make_config(str(out), [], [], {"env.id": env, "steps": steps, "policy": policy, "seed": seed})
    collect.run(cfg, progress=False)


def dataset_for(task: str) -> list[Path]:
    env = ENVS[task]
    if task in ("cartpole", "pendulum"):
        path = WORK / f"{task}-random-50k"
        if not path.exists():
            collect_data(path, env, 50_000)
        return [path]
    random_half, agent_half = WORK / "cartpole-random-25k", WORK / "cartpole-agent-25k"
    if not random_half.exists():
        collect_data(random_half, env, 25_000, seed=1)
    if not agent_half.exists():
        agent = WORK / "cartpole" / "agent-for-mixed"
        if not (agent / runs.BEHAVIOR).exists():
            raise SystemExit("run --task cartpole first: its early agent collects half of the mixed dataset")
        collect_data(agent_half, env, 25_000, policy=str(agent), seed=2)
    return [random_half, agent_half]


def evaluate_run(run: Path, episodes: int, seed: int, threads: int) -> dict:
    cfg = evaluate.make_config(str(run), [], [], {"episodes": episodes, "seed": seed, "threads": threads})
    return evaluate.run(cfg, progress=False).report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(ENVS), required=True)
    parser.add_argument("--preset", default="XS")
    parser.add_argument("--wm-updates", type=int, default=2000)
    parser.add_argument("--behavior-updates", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=16, help="behavior replay windows: B=16 x T start states")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    command = (f"python benchmarks/offline_rl.py --task {args.task} --preset {args.preset} --wm-updates "
               f"{args.wm_updates} --behavior-updates {args.behavior_updates} --eval-every {args.eval_every} "
               f"--seq-len {args.seq_len} --episodes {args.episodes}" + (f" --threads {args.threads}" if args.threads else ""))
    data = dataset_for(args.task)
    datasets = [Dataset(p) for p in data]
    returns = [r.ret for d in datasets for r in d.refs]
    root = WORK / args.task
    run = root / "run"
    start = time.perf_counter()
    sets = [f"threads={args.threads}", "log_every=100", "eval_every=500", f"checkpoint_every={args.wm_updates}"]
    wm_path = run / runs.WORLD_MODEL
    if not wm_path.exists() or checkpoint.load(wm_path, checkpoint.WorldModelArtifact).update != args.wm_updates:
        shutil.rmtree(run, ignore_errors=True)
        cfg = train_world_model.make_config([str(p) for p in data], str(run), [args.preset], sets,
                                            {"updates": args.wm_updates})
        train_world_model.run(cfg, progress=False)
    wm_seconds = time.perf_counter() - start
    wm_final = [r for r in read_metrics(run) if "val/wm/loss" in r][-1]
    runs.forget_config(run, "train-behavior")
    for name in (runs.BEHAVIOR, runs.BEHAVIOR_METRICS, "eval"):
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (run / runs.BEHAVIOR_LATEST).unlink(missing_ok=True)

    curve = []
    start = time.perf_counter()
    behavior_seconds = 0.0
    for updates in range(args.eval_every, args.behavior_updates + 1, args.eval_every):
        t0 = time.perf_counter()
        cfg = train_behavior.make_config(str(run), [], [], [f"threads={args.threads}", "log_every=50",
                                                            f"checkpoint_every={args.eval_every}"],
                                         {"updates": updates, "seq_len": args.seq_len, "batch_size": 16})
        train_behavior.run(cfg, resume=updates > args.eval_every, progress=False, resume_updates=updates)
        behavior_seconds += time.perf_counter() - t0
        report = evaluate_run(run, 10, 1000, args.threads)
        curve.append((updates, report["return_mean"], report["return_std"]))
        print(f"{args.task}: {updates} behavior updates -> eval return {report['return_mean']:.1f} "
              f"+- {report['return_std']:.1f}", flush=True)
        if args.task == "cartpole" and updates == args.eval_every:
            agent = root / "agent-for-mixed"
            shutil.rmtree(agent, ignore_errors=True)
            agent.mkdir(parents=True)
            for name in (runs.WORLD_MODEL, runs.BEHAVIOR):
                shutil.copy(run / name, agent / name)
    final = evaluate_run(run, args.episodes, 0, args.threads)
    records = read_metrics(run, runs.BEHAVIOR_METRICS)

    png = HERE / f"offline_rl_{args.task}.png"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [c[0] for c in curve]
    ax.errorbar(xs, [c[1] for c in curve], yerr=[c[2] for c in curve], marker="o", capsize=3,
                label="learned policy (greedy, 10 episodes)")
    ax.axhline(float(np.mean(returns)), color="gray", linestyle="--", label=f"dataset mean {np.mean(returns):.1f}")
    ax.set_xlabel("behavior updates")
    ax.set_ylabel("eval return")
    ax.set_title(f"offline RL, {ENVS[args.task]} ({args.task})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)

    imag = {r["step"]: r for r in records}
    rows = [f"| {u} | {m:.1f} +- {s:.1f} | {imag.get(u, {}).get('imag/return', float('nan')):.3f} | "
            f"{imag.get(u, {}).get('actor/entropy', float('nan')):.3f} |" for u, m, s in curve]
    sources = ", ".join(f"`{p.relative_to(HERE.parent)}` ({Dataset(p).num_steps:,} steps, policy "
                        f"{', '.join(Dataset(p).summary()['policies'])})" for p in data)
    ratio = final["return_mean"] / np.mean(returns) if args.task != "pendulum" else float("nan")
    lines = [f"## Offline RL: {ENVS[args.task]} ({args.task})", "",
             f"Command: `{command}`. Data: {sources}; {len(returns)} episodes, mean return "
             f"{np.mean(returns):.1f} (min {np.min(returns):.1f}, max {np.max(returns):.1f}). World model: "
             f"`--preset {args.preset}`, {args.wm_updates} updates in {wm_seconds / 60:.1f} min (held-out loss "
             f"{wm_final['val/wm/loss']:.3f}, open-loop MSE@15 {wm_final.get('val/wm/openloop_mse_last', float('nan')):.4f} "
             f"vs repeat-last {wm_final.get('val/wm/openloop_baseline_mse_last', float('nan')):.4f}). Behavior: "
             f"`--preset {args.preset}` (the world model's size), B=16 x T={args.seq_len} replay windows = "
             f"{16 * args.seq_len} start states per update, horizon 15, {args.behavior_updates} updates in "
             f"{behavior_seconds / 60:.1f} min; no env interaction during training.", "",
             "| behavior updates | eval return (greedy, 10 episodes) | imagined return | actor entropy |",
             "|---|---|---|---|", *rows, "",
             f"**Final (20 episodes, greedy, seeds 0-{args.episodes - 1}): return {final['return_mean']:.1f} +- "
             f"{final['return_std']:.1f} (min {final['return_min']:.1f}, max {final['return_max']:.1f}) against the "
             f"dataset's {np.mean(returns):.1f}**" + (f" ({ratio:.1f}x)." if np.isfinite(ratio) else "."),
             f"Curve: `benchmarks/{png.name}`."]
    update_section(f"offline-rl-{args.task}", "\n".join(lines))
    (root / "summary.json").write_text(json.dumps({"curve": curve, "final": final}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
