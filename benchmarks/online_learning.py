"""Online Dreamer (`dreamer train`) learning curves over seeds, with the default hyperparameters.

    python benchmarks/online_learning.py --task cartpole --seeds 0 1 2 3 4
    python benchmarks/online_learning.py --task pendulum --seeds 0 1 2 3 4
    python benchmarks/online_learning.py --task cartpole-pixels --seeds 0 --steps 20000
    python benchmarks/online_learning.py --task cartpole --seeds 2 --kill-at 8000   # kill -9, then --resume
    python benchmarks/online_learning.py --task cartpole --seeds 0 1 2 --summarize  # only re-read the runs

Each seed is one `dreamer train` process (the exact command is printed and recorded) writing
into benchmarks/_work/online/<task>-s<seed>; a finished run is not trained again. With
``--kill-at N`` the process is killed with SIGKILL once its checkpoint has passed N env steps
and then continued with ``--resume``: the curve shows whether learning survives the resume.
Writes the ``online-<task>`` section of benchmarks/RESULTS.md and benchmarks/online_<task>.png.
Run tasks side by side on a 2-core machine with --threads 1 (the default here).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from results import RECORDS, kept_note, load_records, save_records, update_section  # noqa: E402

from dreamer_core import checkpoint, runs  # noqa: E402
from dreamer_core.logging import read_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "online"
RUNS = RECORDS / "online_learning_runs.json"  # "task/s<seed>": the curve and counters of a run (see `recorded`)
TASKS = {
    # task: (env flags (the only per-task change: observation kind), target return, what the issue asks)
    "cartpole": (["--env", "CartPole-v1"], 475.0, "greedy eval return >= 475 within 20k env steps on 5 of 5 seeds"),
    "pendulum": (["--env", "Pendulum-v1"], -200.0, "greedy eval return >= -200 within 20k env steps on 5 of 5 seeds"),
    "cartpole-pixels": (["--env", "CartPole-v1", "--pixels"], 475.0, "the curve over the budget that fits in 90 min"),
}


def command(task: str, seed: int, steps: int, threads: int) -> list[str]:
    return ["dreamer", "train", *TASKS[task][0], "--out", str(WORK / f"{task}-s{seed}"), "--steps", str(steps),
            "--seed", str(seed), "--threads", str(threads), "-q"]


def counters(run: Path) -> dict:
    """The counters (env_steps, updates, resumes, clock...) of the run's resume checkpoint."""
    return checkpoint.load(run / runs.ONLINE_LATEST, checkpoint.TrainState).counters


def finished(run: Path, steps: int) -> bool:
    return (run / runs.ONLINE_LATEST).exists() and counters(run)["env_steps"] >= steps


def resume_command(task: str, seed: int, steps: int, threads: int) -> list[str]:
    return ["dreamer", "train", "--out", str(WORK / f"{task}-s{seed}"), "--resume", "--steps", str(steps),
            "--threads", str(threads), "-q"]


def train(task: str, seed: int, steps: int, threads: int, kill_at: int | None) -> list[str]:
    """Run (or finish) one seed; returns the commands that ran."""
    run = WORK / f"{task}-s{seed}"
    cmd = command(task, seed, steps, threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    ran = []
    if finished(run, steps):
        return ran
    latest = run / runs.ONLINE_LATEST
    if latest.exists():
        cmd = resume_command(task, seed, steps, threads)
    if kill_at is not None and not latest.exists():
        print(" ".join(cmd), f"(killed with SIGKILL after {kill_at} env steps)", flush=True)
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        while proc.poll() is None:
            if latest.exists():
                try:
                    if counters(run)["env_steps"] >= kill_at:
                        time.sleep(5.0)  # land between checkpoints
                        os.kill(proc.pid, signal.SIGKILL)
                        break
                except Exception:  # the checkpoint is being replaced: try again
                    pass
            time.sleep(2.0)
        proc.wait()
        ran.append(" ".join(cmd) + f"  # killed with SIGKILL once a checkpoint had passed {kill_at} env steps")
        cmd = resume_command(task, seed, steps, threads)
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)
    ran.append(" ".join(cmd))
    return ran


def curve(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(env steps, eval return, eval std, loop wall-clock seconds) of every evaluation."""
    rows = [r for r in read_metrics(run) if "eval/return" in r]
    return (np.array([r["step"] for r in rows]), np.array([r["eval/return"] for r in rows]),
            np.array([r["eval/return_std"] for r in rows]), np.array([r["eval/wall_seconds"] for r in rows]))


def recorded(task: str, seed: int, records: dict[str, dict]) -> dict | None:
    """A run's evaluations (steps, return, std, wall seconds) and counters: read from its
    directory when that is on disk (and kept in ``records``, which is in the repository, unlike
    benchmarks/_work), else the kept ones; None if neither has any evaluation."""
    key, run = f"{task}/s{seed}", WORK / f"{task}-s{seed}"
    x, y, std, wall = curve(run)
    if len(x):
        blob = counters(run)
        records[key] = {"steps": x.tolist(), "return": y.tolist(), "std": std.tolist(), "wall": wall.tolist(),
                        **{k: blob[k] for k in ("env_steps", "updates", "resumes", "clock")}}
    return records.get(key)


def summarize(task: str, seeds: list[int], steps: int, commands: dict[int, list[str]], note: str = "") -> None:
    target, asked = TASKS[task][1], TASKS[task][2]
    fig, ax = plt.subplots(figsize=(7, 4))
    rows, reached, curves = [], 0, []
    records = load_records(RUNS)
    missing = [seed for seed in seeds if recorded(task, seed, records) is None]
    if missing:  # writing now would drop their rows from RESULTS.md
        sys.exit(f"seeds {missing} of {task} have neither a run directory under {WORK} with an evaluation nor a "
                 f"record in {RUNS}: train them (without --summarize) or leave them out of --seeds. RESULTS.md "
                 "is unchanged.")
    for seed in seeds:
        blob = records[f"{task}/s{seed}"]
        x, y, std, wall = (np.array(blob[k], dtype=float) for k in ("steps", "return", "std", "wall"))
        line, = ax.plot(x, y, marker="o", markersize=3, label=f"seed {seed}" + (" (killed, resumed)" if blob["resumes"] else ""))
        ax.fill_between(x, y - std, y + std, color=line.get_color(), alpha=0.12)
        hit = np.nonzero((y >= target) & (x <= steps))[0]
        first = f"{int(x[hit[0]])} steps, {wall[hit[0]] / 60:.1f} min" if len(hit) else "not reached"
        reached += bool(len(hit))
        timing = blob["clock"]
        total = sum(timing.values())
        share = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(timing.items(), key=lambda kv: -kv[1]))
        rows.append(
            f"| {seed} | {first} | {y[-1]:.1f} +- {std[-1]:.1f} | {y.max():.1f} | {int(blob['env_steps'])} | "
            f"{int(blob['updates'])} | {total / 60:.1f} | {blob['resumes']} | {share} |"
        )
        print(f"seed {seed}: " + ", ".join(f"{int(a)}: {b:.1f}" for a, b in zip(x, y)))
        curves.append(f"- seed {seed}: " + ", ".join(f"{int(a)}: {b:.0f}" for a, b in zip(x, y)))
    save_records(RUNS, records)
    ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("greedy eval return (10 episodes)")
    ax.set_title(f"dreamer train, default hyperparameters: {task}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = HERE / f"online_{task}.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    root = str(HERE.parent) + "/"
    cmds = "\n".join(f"    {c}".replace(root, "") for seed in seeds
                     for c in commands.get(seed, [" ".join(command(task, seed, steps, 1))]))
    body = f"""## Online learning: {task} (`dreamer train`, default hyperparameters)

Asked: {asked}. Commands (from the repo root; one process per seed, `OMP_NUM_THREADS=1`, several runs sharing the 2 cores):

{cmds}

Curves: `benchmarks/{png.name}`; summary: `python benchmarks/online_learning.py --task {task} --seeds {' '.join(map(str, seeds))} --summarize`.
Target {target:g} reached on {reached} of {len(rows)} seeds. "min" is the loop's own wall-clock (acting, updates, evaluation, checkpoints; resumes included).

| seed | first eval >= {target:g} | final eval (mean +- std) | best eval | env steps | updates | min | resumes | where the time went |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n\nEvaluation returns (env steps: mean of 10 greedy episodes):\n\n" + "\n".join(curves)
    if note:
        body += "\n\n" + note
    update_section(f"online-{task}", body)
    print(f"wrote {png} and the online-{task} section of RESULTS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kill-at", type=int, default=None, help="SIGKILL each fresh run after N env steps, then resume")
    parser.add_argument("--summarize", action="store_true", help="only summarize the existing runs")
    parser.add_argument("--note", default=None, help="text appended to the RESULTS section (how the runs were made); "
                        "kept with the runs for later calls ('' removes it)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    commands = {}
    if not args.summarize:
        for seed in args.seeds:
            commands[seed] = train(args.task, seed, args.steps, args.threads, args.kill_at)
    summarize(args.task, args.seeds, args.steps, commands, kept_note(RECORDS / f"NOTE-online-{args.task}.md", args.note))


if __name__ == "__main__":
    sys.exit(main())
