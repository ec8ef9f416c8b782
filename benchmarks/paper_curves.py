"""Our `dreamer train` beside the published DreamerV3 curves on DMC proprio, per env step.

    python benchmarks/paper_curves.py --tasks cartpole_swingup finger_spin walker_walk --seeds 0 1 2
    python benchmarks/paper_curves.py --tasks cartpole_swingup --seeds 0 1 2 --steps 100000   # carry on
    python benchmarks/paper_curves.py --summarize                                              # re-read only

Each (task, seed) is one `dreamer train` process with the default hyperparameters and action
repeat 1 (the published 2025 code's DMC setting, so env steps match the published x axis),
writing into benchmarks/_work/paper/<task>-s<seed>. Runs go ``--parallel`` at a time (default
2, one thread each). A run that stopped (killed, or a session that ended) is continued with
``--resume`` from its last checkpoint; a run that has the steps asked is not trained again, so
the command can be repeated across sessions until every run is done.

The published DreamerV3 scores (`../shared/reference/dmc_proprio_dreamerv3.csv`, copied to
benchmarks/reference/ when present) are training-episode scores of the sampling policy, per
10k env steps, mean/min/max over 5 seeds. Ours are put beside them the same way: the mean
return of the training episodes that ended in each 10k-step bin, per seed, then the mean over
seeds; plus the greedy evaluation (``--eval-episodes`` every ``--eval-every`` steps).
Writes benchmarks/paper_curves.png and the ``paper-curves`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from results import RECORDS, kept_note, load_records, run_parallel, save_records, update_section  # noqa: E402

from dreamer_core import checkpoint, runs  # noqa: E402
from dreamer_core.logging import read_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "paper"
RUNS = RECORDS / "paper_curves_runs.json"  # "task/s<seed>": what the table and plot read from a run (`recorded`)
REFERENCE = [HERE / "reference" / "dmc_proprio_dreamerv3.csv",
             HERE.parent.parent / "shared" / "reference" / "dmc_proprio_dreamerv3.csv"]
BIN = 10_000  # the published x-axis spacing
# task in the published file -> our env id
TASKS = {
    "cartpole_swingup": "dmc:cartpole-swingup", "finger_spin": "dmc:finger-spin", "walker_walk": "dmc:walker-walk",
    "cartpole_balance": "dmc:cartpole-balance", "reacher_easy": "dmc:reacher-easy", "cheetah_run": "dmc:cheetah-run",
    "walker_stand": "dmc:walker-stand", "hopper_stand": "dmc:hopper-stand", "pendulum_swingup": "dmc:pendulum-swingup",
}


def run_dir(task: str, seed: int) -> Path:
    return WORK / f"{task}-s{seed}"


def command(task: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The fresh command, or the resume command when the run has a checkpoint."""
    out = run_dir(task, seed)
    common = ["--steps", str(args.steps), "--threads", "1", "-q"]
    if (out / runs.ONLINE_LATEST).exists() or runs.read_config(out, "train") is not None:
        return ["dreamer", "train", "--out", str(out), "--resume", *common]
    return ["dreamer", "train", "--env", TASKS[task], "--action-repeat", "1", "--out", str(out), "--seed", str(seed),
            "--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes),
            "--checkpoint-seconds", "120", *args.extra, *common]


def env_steps(task: str, seed: int) -> int:
    path = run_dir(task, seed) / runs.ONLINE_LATEST
    if not path.exists():
        return 0
    return int(checkpoint.load(path, checkpoint.TrainState).counters["env_steps"])


def train(jobs: list[tuple[str, int]], args: argparse.Namespace) -> list[str]:
    """Run the unfinished jobs, ``--parallel`` at a time; returns the commands started."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    todo = [job for job in jobs if env_steps(*job) < args.steps]
    commands = {(task, seed): command(task, seed, args) for task, seed in todo}
    return run_parallel([(f"{task} seed {seed}", cmd, env, " ".join(cmd)) for (task, seed), cmd in commands.items()],
                        args.parallel)

def reference() -> dict[str, dict[int, tuple[float, float, float]]]:
    """task -> env steps -> (mean, min, max) of the published runs."""
    path = next((p for p in REFERENCE if p.exists()), None)
    if path is None:
        return {}
    out: dict[str, dict[int, tuple[float, float, float]]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            out.setdefault(row["task"], {})[int(row["env_steps"])] = (
                float(row["mean"]), float(row["min"]), float(row["max"]))
    return out


def binned_train_returns(run: Path, steps: int) -> dict[int, float]:
    """Bin end (10k, 20k...) -> mean return of the training episodes that ended in that bin."""
    bins: dict[int, list[float]] = {}
    for r in read_metrics(run):
        if "train/return" in r and r["step"] <= steps:
            end = int(np.ceil(r["step"] / BIN) * BIN)
            bins.setdefault(end, []).append(r["train/return"])
    reached = max((r["step"] for r in read_metrics(run)), default=0)
    return {k: float(np.mean(v)) for k, v in sorted(bins.items()) if k <= reached}  # whole bins only


def evals(run: Path, steps: int) -> dict[int, float]:
    return {int(r["step"]): r["eval/return"] for r in read_metrics(run) if "eval/return" in r and r["step"] <= steps}


def minutes(run: Path) -> float:
    path = run / runs.ONLINE_LATEST
    if not path.exists():
        return float("nan")
    return sum(checkpoint.load(path, checkpoint.TrainState).counters["clock"].values()) / 60


def recorded(task: str, seed: int, records: dict[str, dict]) -> dict | None:
    """What the summary reads from a run (training-episode bins, greedy evals, loop minutes, env
    steps): from its directory when that is on disk (and kept in ``records``, which is in the
    repository, unlike benchmarks/_work), else the kept ones; None if neither has the run."""
    key, run = f"{task}/s{seed}", run_dir(task, seed)
    if env_steps(task, seed):
        records[key] = {"train_bins": binned_train_returns(run, 10**12), "evals": evals(run, 10**12),
                        "minutes": minutes(run), "env_steps": env_steps(task, seed)}
    if key not in records:
        return None
    blob = records[key]
    return {**blob, "train_bins": {int(k): v for k, v in blob["train_bins"].items()},
            "evals": {int(k): v for k, v in blob["evals"].items()}}


def summarize(tasks: list[str], seeds: list[int], steps: int, started: list[str], note: str) -> None:
    ref = reference()
    records = load_records(RUNS)
    runs_kept = {(t, s): recorded(t, s, records) for t in tasks for s in seeds}
    save_records(RUNS, records)

    def bins(task: str, seed: int, upto: int) -> dict[int, float]:
        blob = runs_kept[task, seed]
        return {k: v for k, v in blob["train_bins"].items() if k <= upto} if blob else {}

    def evals_upto(task: str, seed: int, upto: int) -> dict[int, float]:
        blob = runs_kept[task, seed]
        return {k: v for k, v in blob["evals"].items() if k <= upto} if blob else {}

    def reached(task: str, seed: int) -> int:
        blob = runs_kept[task, seed]
        return blob["env_steps"] if blob else 0

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    table = []
    for ax, task in zip(axes[0], tasks):
        published = ref.get(task, {})
        xs = sorted(k for k in published if k <= steps)
        if xs:
            ax.fill_between(xs, [published[k][1] for k in xs], [published[k][2] for k in xs], color="gray",
                            alpha=0.25, label="published DreamerV3 (min-max, 5 seeds)")
            ax.plot(xs, [published[k][0] for k in xs], color="black", label="published mean")
        per_seed = {s: bins(task, s, steps) for s in seeds}
        per_seed = {s: v for s, v in per_seed.items() if v}
        for s, curve in per_seed.items():
            ax.plot(list(curve), list(curve.values()), color="C0", alpha=0.35, linewidth=1)
            ev = evals_upto(task, s, steps)
            if ev:
                ax.plot(list(ev), list(ev.values()), color="C1", alpha=0.5, linewidth=1, linestyle="--")
        marks = sorted({k for curve in per_seed.values() for k in curve})
        mean = {k: float(np.mean([c[k] for c in per_seed.values() if k in c])) for k in marks}
        if mean:
            ax.plot(list(mean), list(mean.values()), color="C0", linewidth=2.5,
                    label=f"ours, training episodes (mean of {len(per_seed)} seeds)")
        ax.plot([], [], color="C1", linestyle="--", label="ours, greedy eval (per seed)")
        ax.set_title(task)
        ax.set_xlabel("env steps (action repeat 1)")
        ax.set_ylabel("episode return")
        ax.grid(alpha=0.3)
        for mark in (50_000, 100_000):
            if mark > steps or mark not in published:
                continue
            done = [s for s in per_seed if reached(task, s) >= mark]
            ours = [per_seed[s].get(mark, float("nan")) for s in done]
            ev = [evals_upto(task, s, mark) for s in done]
            last_ev = [e[max(e)] for e in ev if e]
            table.append(
                f"| {task} | {mark // 1000}k | {published[mark][0]:.1f} [{published[mark][1]:.0f}, "
                f"{published[mark][2]:.0f}] | "
                + (f"**{np.mean(ours):.1f}** ({', '.join(f'{v:.0f}' for v in ours)})" if ours else "-")
                + f" | {len(done)} | "
                + (f"{np.mean(last_ev):.1f}" if last_ev else "-")
                + f" | {'yes' if ours and np.mean(ours) >= published[mark][0] else 'no'} | "
                + ", ".join(f"{runs_kept[task, s]['minutes']:.0f}" for s in done) + " |")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    png = HERE / "paper_curves.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    root = str(HERE.parent) + "/"
    cmds = "\n".join(f"    {c}".replace(root, "") for c in started) or "    (no run started by the last call)"
    progress = ", ".join(f"{t} s{s}: {reached(t, s)}" for t in tasks for s in seeds)
    body = f"""## Beside the published DreamerV3 curves: DMC proprio (`benchmarks/paper_curves.py`)

`python benchmarks/paper_curves.py --tasks {' '.join(tasks)} --seeds {' '.join(map(str, seeds))} --steps {steps}`
(each run: `dreamer train --env dmc:TASK --action-repeat 1 --seed S --eval-every 10000 --eval-episodes 5
--threads 1`, default hyperparameters; two runs side by side on the 2 cores). Commands started by the
last call:

{cmds}

Ours: mean return of the training episodes (sampling policy) ending in each 10k-step bin, mean over
the seeds that reached the mark; the published figure is the same kind of score (mean [min, max] over
5 seeds). "min" is each run's loop wall-clock, with another run beside it. Curves:
`benchmarks/{png.name}` (gray band: published min-max; dark blue: our mean; dashed: our greedy evals).

| task | env steps | published mean [min, max] | ours: mean (per seed) | seeds | ours: last greedy eval | >= published mean | min per run |
|---|---|---|---|---|---|---|---|
""" + "\n".join(table) + f"\n\nEnv steps reached: {progress}."
    if note:
        body += "\n\n" + note
    update_section("paper-curves", body)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["cartpole_swingup", "finger_spin", "walker_walk"],
                        choices=sorted(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more `dreamer train` flags for fresh runs (last on the line)")
    parser.add_argument("--summarize", action="store_true", help="only re-read the runs")
    parser.add_argument("--note", default=None, help="text appended to the RESULTS section; kept with the runs for "
                        "later calls ('' removes it)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    jobs = [(task, seed) for seed in args.seeds for task in args.tasks]
    started = [] if args.summarize else train(jobs, args)
    summarize(args.tasks, args.seeds, args.steps, started, kept_note(RECORDS / "NOTE-paper-curves.md", args.note))


if __name__ == "__main__":
    sys.exit(main())
