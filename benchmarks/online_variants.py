"""A/B of `dreamer train` settings over seeds: the default hyperparameters against named variants.

    python benchmarks/online_variants.py --task cartpole --variants queue ratio128 --seeds 0 1 2
    python benchmarks/online_variants.py --task cartpole --variants default queue ratio128 --summarize

Each (variant, seed) is one `dreamer train` process with the variant's flags added to the task's
command, in benchmarks/_work/variants/<task>-<variant>-s<seed>; the ``default`` variant is the
run of benchmarks/online_learning.py (benchmarks/_work/online/<task>-s<seed>), so the defaults are
trained once for both scripts. A finished run is not trained again; a stopped one is continued
with ``--resume``. Runs go one after another (start several invocations to fill the cores).

Each finished run's evaluation curve is also kept in benchmarks/records/online_variants_runs.json (in the
repository, unlike benchmarks/_work), so a fresh checkout still summarizes the runs made before it;
a run directory present on disk is read first.

Reported per variant, over the seeds that finished: how many reached the task's target with the
greedy evaluation (and the first env step), the mean final evaluation, and the mean over all
evaluations of a run (the area under the curve, which a single lucky evaluation moves little).
Writes benchmarks/online_variants_<task>.png and the ``online-variants-<task>`` section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from online_learning import TASKS as ONLINE_TASKS  # noqa: E402
from online_learning import WORK as ONLINE_WORK  # noqa: E402
from online_learning import curve, finished  # noqa: E402
from results import RECORDS as RECORDS_DIR  # noqa: E402
from results import load_records, save_records, update_section  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "variants"
RECORDS = RECORDS_DIR / "online_variants_runs.json"  # "task/variant/s<seed>": {"steps", "return", "source"}

# task: (env flags, target of the greedy evaluation, env steps)
TASKS = {
    "cartpole": (ONLINE_TASKS["cartpole"][0], 475.0, 20_000),
    "pendulum": (ONLINE_TASKS["pendulum"][0], -200.0, 20_000),
}
# The critic's settings of the defaults before session 13 (learning rate 3e-4, slow critic's EMA
# 0.02 per update). The variants measured then changed those defaults, so their flags pin them: a
# run of such a variant today repeats the recorded one (the updates are deterministic on CPU).
LR, EMA = "behavior.critic_optim.lr", "behavior.critic.slow_rate"
BEFORE = ["--set", f"{LR}=3e-4", "--set", f"{EMA}=0.02"]
# variant: (flags added to the default command, what it changes)
VARIANTS = {
    "default": ([], "the defaults of `dreamer train` (since session 14: critic learning rate 1e-3, slow critic's EMA 0.3)"),
    "before": (BEFORE, "the defaults before session 13: critic learning rate 3e-4, slow critic's EMA 0.02"),
    "queue": ([*BEFORE, "--set", "online_queue=true"],
              "before + the 2025 code's online queue (each new chunk replayed once soon)"),
    "ratio128": ([*BEFORE, "--train-ratio", "128"], "before + train ratio 128 instead of 64 (twice the updates per env step)"),
    "reinforce": ([*BEFORE, "--set", "behavior.actor.grad=reinforce"], "before + REINFORCE for Box actions too (the 2025 code)"),
    "actorlr1e-4": ([*BEFORE, "--set", "behavior.actor_optim.lr=1e-4"], "before + actor learning rate 1e-4 instead of 3e-4"),
    "contprob": ([*BEFORE, "--set", "behavior.cont=prob"],
                 "before + imagined steps discounted by the continue probability (2025)"),
    "norepval": ([*BEFORE, "--set", "behavior.critic.replay_scale=0"], "before + no replay value loss (the 2023 code had none)"),
    "batch32": ([*BEFORE, "--batch-size", "32"],
                "before + 32 windows per update instead of 16 (same train ratio: half the updates)"),
    "criticlr1e-3": (["--set", f"{LR}=1e-3", "--set", f"{EMA}=0.02"], "critic learning rate 1e-3, slow critic's EMA 0.02"),
    "criticlr3e-3": (["--set", f"{LR}=3e-3", "--set", f"{EMA}=0.02"], "critic learning rate 3e-3, slow critic's EMA 0.02"),
    "criticlr1e-3+contprob": (["--set", f"{LR}=1e-3", "--set", f"{EMA}=0.02", "--set", "behavior.cont=prob"],
                              "critic learning rate 1e-3, slow critic's EMA 0.02, imagined steps discounted by the "
                              "continue probability"),
    "criticlr1e-3+slow0.1": (["--set", f"{LR}=1e-3", "--set", f"{EMA}=0.1"],
                             "critic learning rate 1e-3, slow critic's EMA 0.1 (the defaults of session 13)"),
    "criticlr1e-3+slow0.3": (["--set", f"{LR}=1e-3", "--set", f"{EMA}=0.3"],
                             "critic learning rate 1e-3, slow critic's EMA 0.3 (the defaults since session 14)"),
    "criticlr3e-4+slow0.1": (["--set", f"{LR}=3e-4", "--set", f"{EMA}=0.1"], "critic learning rate 3e-4, slow critic's EMA 0.1"),
}


def run_dir(task: str, variant: str, seed: int) -> Path:
    if variant == "default":
        return ONLINE_WORK / f"{task}-s{seed}"
    return WORK / f"{task}-{variant}-s{seed}"


def command(task: str, variant: str, seed: int, threads: int, fresh: bool = False) -> list[str]:
    """The command of one run: the fresh one, or the resume command when it has a checkpoint."""
    env, _, steps = TASKS[task]
    out = run_dir(task, variant, seed)
    common = ["--steps", str(steps), "--threads", str(threads), "-q"]
    if (out / "checkpoints").exists() and not fresh:
        return ["dreamer", "train", "--out", str(out), "--resume", *common]
    return ["dreamer", "train", *env, "--out", str(out), "--seed", str(seed), *VARIANTS[variant][0], *common]


def train(task: str, variant: str, seed: int, threads: int) -> None:
    if finished(run_dir(task, variant, seed), TASKS[task][2]):
        return
    cmd = command(task, variant, seed, threads)
    print(" ".join(cmd).replace(str(HERE.parent) + "/", ""), flush=True)
    subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(threads)), check=True)


def evaluations(task: str, variant: str, seed: int, records: dict[str, dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """(env steps, greedy eval return) of a finished run up to the task's budget: read from its
    directory when it is on disk (and recorded), else from the records; None if neither has it."""
    steps, key = TASKS[task][2], f"{task}/{variant}/s{seed}"
    run = run_dir(task, variant, seed)
    if finished(run, steps):
        x, y, _, _ = curve(run)
        keep = x <= steps
        records[key] = {"steps": x[keep].tolist(), "return": y[keep].tolist(), "source": "run"}
    if key not in records:
        return None
    return np.array(records[key]["steps"]), np.array(records[key]["return"], dtype=float)


# What the table cannot say, per task; written under it by --summarize.
NOTES = {
    "cartpole": (
        'Reading (session 9, 2026-12-01): no variant gets CartPole to 475 on 5 of 5 seeds. Seed 2 reaches '
        'it under four settings, seeds 0 and 1 under none but one (contprob, seed 1 at 6k), so which seed a '
        'run has matters more than any setting here. The continue probability (`behavior.cont=prob`, the 2025 '
        "code's discount) has the highest mean evaluation (246.9 against 232.5) and 2 of 5 seeds against 1 of "
        '5: within what seeds alone change, so the default stays the 2023 mode. The online queue, a lower '
        'actor learning rate, twice the updates per env step, twice the batch and no replay value loss are '
        "each no better and mostly worse; the runs' curves rise to 300-500 and fall back, and none stays at "
        "500. Made with the code of this session (`dreamer train`'s updates bit-identical to e7ecc0e), two "
        'runs side by side on the 2 cores.\n\n'
        "Session 10: in the five default runs the critic's value (mean over imagined states) grows alike on every "
        'seed (25-28 at 10k env steps, 73-78 at 19k) whether the greedy policy then scores 250 or 500, and it '
        'stays far below what a policy that balances for hundreds of steps is worth at gamma 0.997 (about 175 '
        "for 250 steps): the critic's own learning, not the policy, sets it. With the critic's learning rate at "
        '1e-3 (`criticlr1e-3`) it grows faster (58 at 10k, 130 at 19k on seed 0) and seed 0, the weakest default '
        'seed, evaluates higher from 8k to 18k steps (247-439 against 184-312) but falls to 296 at 20k and never '
        'reaches 475. One seed: a hint, not a result; seeds 1 and 2 were stopped part-way and resume.\n\n'
        'Session 11: with all five seeds, a faster critic reaches 475 on 3 of 5 seeds, at 1e-3 (seeds 1, 2, 3) '
        'and at 3e-3 (seeds 0, 1, 2: the first setting under which seed 0 gets there), against 1 of 5 with '
        "the defaults. Neither stays there: the curves still rise and fall back. At 3e-3 the critic's value "
        'grows only a little faster than at 1e-3 (69 against 57 at 10k env steps, 129-147 against 130 at 19k): '
        'past 1e-3 its growth is bounded by bootstrapping through the slow critic (EMA 0.02 per update, '
        "regulariser weight 1), not by the learning rate. Not adopted as a default: 3 of 5 is not the issue's "
        '5 of 5, and the change is unmeasured on DMC.\n\n'
        'Session 12: the two settings that helped, together (`criticlr1e-3+contprob`), reach 475 on 2 of 5 '
        'seeds (seed 2 at 8k, seed 4 at 20k), not more than either alone. They have the highest final mean '
        '(409.4) and mean evaluation (262.9) of the table, but seeds 0, 1 and 3 never pass 423, 465 and 324. '
        'Made with the code of session 12, whose updates are bit-identical to those of session 11. '
        "The same critic learning rate with the slow critic's EMA five times faster (`criticlr1e-3+slow0.1`, "
        '0.1 per update instead of 0.02) reaches 475 on 4 of 5 seeds (seeds 1, 2, 4 at 10k, 10k, 8k and seed 3 at '
        '20k), the most of any setting; seed 0 peaks at 434 (10-14k) and ends at 235. Final mean 433.5. This '
        'supports the reading above that the slow critic holds the critic back, but the curves still fall '
        'back (seed 1: 500 at 10k, 306 at 14k), and the setting is unmeasured on Pendulum and DMC: not '
        'adopted yet.\n\n'
        "Session 13: `criticlr1e-3+slow0.1` is now the default (the `default` row: benchmarks/online_learning.py's "
        "runs with the new defaults, which repeat the session-12 runs of that setting evaluation for evaluation; "
        'the updates are deterministic on CPU). The former defaults are the `before` row, and every variant '
        "measured against them now pins their critic settings in its flags, so that a re-run repeats it. The "
        'run directories of sessions 9-12 were lost with the old checkout: those curves are read back from '
        'the RESULTS.md of commit f20ca70 and kept in benchmarks/records/online_variants_runs.json.\n\n'
        "Session 14: the slow critic's EMA at 0.3 per update (`criticlr1e-3+slow0.3`) reaches 475 on 5 of 5 "
        'seeds (seeds 0-4 at 18k, 10k, 10k, 16k, 10k; final mean 486.3), the first setting to do so; seed 0, '
        'which no other setting but `criticlr3e-3` brought there, reaches 500 at 18k and 20k. It is the default '
        'now: the `default` row is benchmarks/online_learning.py\'s record of these runs (its seed 0 trained '
        'again by that script, identical in every logged metric). The curves still dip (seed 4: 500 at 10k, '
        '206 at 12k, 439 at 20k).'
    ),
    "pendulum": (
        'Session 11: the critic learning rate of 3e-3 that lifts CartPole to 3 of 5 seeds leaves Pendulum as '
        'it is with the defaults: every seed reaches -200 (at 8-12k env steps, 10-12k with the defaults) and '
        'ends at -137 on average (defaults: -130). Three seeds.\n\n'
        "Session 12: `criticlr1e-3+slow0.1`, the setting that gets CartPole to 475 on 4 of 5 seeds, on two "
        'Pendulum seeds (a third did not fit in the session): both reach -200 at 10k env steps and end at '
        "-156 and -132 (the defaults' seeds 0 and 1: -156 and -133).\n\n"
        "Session 13: `criticlr1e-3+slow0.1` is now the default (the `default` row: benchmarks/online_learning.py's "
        "runs with the new defaults; its seeds 0 and 2 repeat this setting's runs exactly). The former defaults "
        'are the `before` row. Seed 2 of the variant itself ran again here, its curve identical to the '
        "new defaults' seed 2.\n\n"
        "Session 14: `criticlr1e-3+slow0.3`, the setting that gets CartPole to 475 on 5 of 5 seeds, is now the "
        'default (the `default` row: benchmarks/online_learning.py\'s record of these runs; its seed 0 trained '
        'again by that script, identical in every logged metric). All five seeds reach -200 (at 12k, 12k, 8k, 8k, '
        '10k env steps) and end at -137.2 on average (EMA 0.1: at 8-10k, -130.0; its seeds 3 and 4 are the '
        'session-13 default runs). Seeds 2-4 were stopped for a CI '
        'run (SIGTERM checkpoints) and resumed.'
    ),
}


def summarize(task: str, variants: list[str], seeds: list[int], write: bool) -> None:
    _, target, steps = TASKS[task]
    fig, axes = plt.subplots(1, len(variants), figsize=(4 * len(variants), 3.5), sharey=True, squeeze=False)
    rows, curves, records = [], [], load_records(RECORDS)
    for ax, variant in zip(axes[0], variants):
        finals, areas, hits, done = [], [], [], []
        for seed in seeds:
            found = evaluations(task, variant, seed, records)
            if found is None:
                continue
            x, y = found
            done.append(seed)
            finals.append(y[-1])
            areas.append(y.mean())
            hit = np.nonzero(y >= target)[0]
            hits.append(int(x[hit[0]]) if len(hit) else None)
            ax.plot(x, y, marker="o", markersize=2, label=f"seed {seed}")
            curves.append(f"- {variant}, seed {seed}: " + ", ".join(f"{int(a)}: {b:.0f}" for a, b in zip(x, y)))
        ax.axhline(target, color="gray", linestyle="--", linewidth=1)
        ax.set_title(variant, fontsize=9)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if not done:
            continue
        reached = [h for h in hits if h is not None]
        first = ", ".join(f"{h // 1000}k" if h is not None else "-" for h in hits)
        rows.append(f"| {variant} | {VARIANTS[variant][1]} | {' '.join(map(str, done))} | {len(reached)} of {len(done)} "
                    f"({first}) | {np.mean(finals):.1f} ({', '.join(f'{v:.0f}' for v in finals)}) | "
                    f"{np.mean(areas):.1f} |")
    save_records(RECORDS, records)
    old = sum(records[f"{task}/{v}/s{s}"]["source"] != "run" for v in variants for s in seeds
              if f"{task}/{v}/s{s}" in records)
    read_back = (f"{old} of these runs were made before their directories were kept (before session 13): their "
                 f"curves are read back from the whole numbers RESULTS.md printed, so a mean here can differ "
                 f"from an earlier table's in the first decimal.\n\n" if old else "")
    axes[0][0].set_ylabel("greedy eval return")
    fig.suptitle(f"dreamer train variants: {task}", fontsize=10)
    fig.tight_layout()
    png = HERE / f"online_variants_{task}.png"
    if write:
        fig.savefig(png, dpi=100)
    plt.close(fig)
    cmds = "\n".join("    " + " ".join(command(task, v, 0, 1, fresh=True)).replace(str(HERE.parent) + "/", "")
                     for v in variants)
    body = f"""## `dreamer train` variants: {task} (`benchmarks/online_variants.py`)

`python benchmarks/online_variants.py --task {task} --variants {' '.join(variants)} --seeds {' '.join(map(str, seeds))}`
(one process per run, `OMP_NUM_THREADS=1`, two runs side by side on the 2 cores). Seed 0's commands:

{cmds}

Greedy evaluation of 10 episodes every 2,000 env steps; target {target:g} within {steps:,} env steps. "mean eval"
is the mean over all evaluations of a run (the area under the curve), then over seeds. Curves: `benchmarks/{png.name}`.

| variant | what it changes | seeds | reached target (first at) | final eval: mean (per seed) | mean eval |
|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n\n" + read_back + "\n".join(curves) + (f"\n\n{NOTES[task].strip()}" if task in NOTES else "")
    print(body)
    if write:
        update_section(f"online-variants-{task}", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summarize", action="store_true",
                        help="run nothing; write the table and curves of the existing runs to RESULTS.md (a call "
                             "that runs only prints its table)")
    args = parser.parse_args()
    if not args.summarize:
        WORK.mkdir(parents=True, exist_ok=True)
        for variant in args.variants:
            for seed in args.seeds:
                train(args.task, variant, seed, args.threads)
    summarize(args.task, args.variants, args.seeds, write=args.summarize)


if __name__ == "__main__":
    sys.exit(main())
