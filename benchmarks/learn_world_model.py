"""Stage 02 learning: held-out loss curve and open-loop error against the repeat-last baseline.

    python benchmarks/learn_world_model.py --case vector [--updates 2000] [--preset XS]
    python benchmarks/learn_world_model.py --case pixels [--updates 1000] [--preset XS]
    python benchmarks/learn_world_model.py --case variants [--updates 500]

vector: a CartPole-v1 random-policy dataset (50k steps); pixels: CartPole-v1 rendered to 64x64
(30k steps). Both are collected once into benchmarks/_work/ (git-ignored) with `dreamer collect`.
Training runs through the real stage (`dreamer_core.stages.train_world_model.run`), so every
figure comes from RUN/metrics.jsonl. Writes a markdown section per case to
benchmarks/RESULTS.md and a PNG of the curves to benchmarks/.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from results import update_section  # noqa: E402

from dreamer_core.data.dataset import Dataset  # noqa: E402
from dreamer_core.envs import EnvConfig  # noqa: E402
from dreamer_core.errors import DatasetError  # noqa: E402
from dreamer_core.logging import read_metrics  # noqa: E402
from dreamer_core.stages import collect, train_world_model  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
DATASETS = {
    "vector": (EnvConfig(id="CartPole-v1"), 50_000),
    "pixels": (EnvConfig(id="CartPole-v1", obs="pixels"), 30_000),
}


def dataset(kind: str) -> Path:
    env, steps = DATASETS[kind]
    out = WORK / f"cartpole-{kind}"
    try:
        if Dataset(out).num_steps >= steps:
            return out
    except DatasetError:
        pass
    shutil.rmtree(out, ignore_errors=True)
    collect.run(collect.CollectConfig(out=str(out), env=env, steps=steps, seed=0), progress=False)
    return out


def train(data: Path, name: str, presets: list[str], updates: int, sets: list[str]) -> tuple[list[dict], float]:
    run_dir = WORK / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = train_world_model.make_config([str(data)], str(run_dir), presets, sets, {"updates": updates})
    start = time.perf_counter()
    train_world_model.run(cfg, progress=False)
    return read_metrics(run_dir), time.perf_counter() - start


def curve_table(records: list[dict]) -> list[str]:
    lines = ["| update | train wm/loss | val/wm/loss | val recon | open-loop MSE @15 (sampled latents) | "
             "open-loop MSE @15 (mode latents) | repeat-last MSE @15 | baseline / model (sampled, mode) |",
             "|---|---|---|---|---|---|---|---|"]
    train_loss = {r["step"]: r["wm/loss"] for r in records if "wm/loss" in r}
    for r in records:
        if "val/wm/loss" in r:
            lines.append(
                f"| {r['step']} | {train_loss.get(r['step'], float('nan')):.3f} | {r['val/wm/loss']:.3f} | "
                f"{r['val/wm/loss/recon']:.4f} | {r.get('val/wm/openloop_mse_last', float('nan')):.5f} | "
                f"{r.get('val/wm/openloop_mode_mse_last', float('nan')):.5f} | "
                f"{r.get('val/wm/openloop_baseline_mse_last', float('nan')):.5f} | "
                f"{r.get('val/wm/openloop_ratio_last', float('nan')):.1f}x, "
                f"{r.get('val/wm/openloop_mode_ratio_last', float('nan')):.1f}x |")
    return lines


def plot(curves: dict[str, list[dict]], path: Path, key: str = "val/wm/loss") -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, records in curves.items():
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("update")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=["vector", "pixels", "variants"], required=True)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--preset", default="XS")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides, e.g. --set threads=1")
    parser.add_argument("--tag", default="", help="suffix of the run directory (keeps runs with other --set apart)")
    args = parser.parse_args()
    kind = "pixels" if args.case == "pixels" else "vector"
    data = dataset(kind)
    sets = [f"eval_every={args.eval_every}", f"log_every={args.eval_every}", f"checkpoint_every={args.updates}", *args.set]
    command = f"python benchmarks/learn_world_model.py --case {args.case} --updates {args.updates} --preset {args.preset} --eval-every {args.eval_every}"
    command += "".join(f" --set {s}" for s in args.set)
    command += f" --tag {args.tag}" if args.tag else ""
    if args.case in ("vector", "pixels"):
        name = f"{args.case}-{args.preset}" + (f"-{args.tag}" if args.tag else "")
        records, seconds = train(data, name, [args.preset], args.updates, sets)
        final = [r for r in records if "val/wm/loss" in r][-1]
        lines = [f"## World-model learning: CartPole-v1 {args.case} ({args.preset})", "",
                 f"Command: `{command}`. Dataset: {Dataset(data).num_steps:,} random-policy steps "
                 f"(`{data.relative_to(HERE.parent)}`), 10% of episodes held out; {args.updates} updates "
                 f"in {seconds / 60:.1f} min on this CPU. Open-loop: 15 steps predicted from a 5-step context "
                 "under the recorded actions, on held-out windows, vs repeating the last context observation.", ""]
        lines += curve_table(records)
        png = HERE / f"wm_learning_{args.case}.png"
        plot({args.case: records}, png)
        lines += ["", f"Final: held-out loss {final['val/wm/loss']:.3f}; open-loop MSE at step 15 "
                  f"{final.get('val/wm/openloop_mse_last', float('nan')):.5f} vs baseline "
                  f"{final.get('val/wm/openloop_baseline_mse_last', float('nan')):.5f} "
                  f"({final.get('val/wm/openloop_ratio_last', float('nan')):.1f}x better) with sampled latents; "
                  f"{final.get('val/wm/openloop_mode_mse_last', float('nan')):.5f} "
                  f"({final.get('val/wm/openloop_mode_ratio_last', float('nan')):.1f}x better) with each prior's most "
                  f"likely latent. Curve: `benchmarks/{png.name}`."]
        update_section(f"wm-learning-{args.case}", "\n".join(lines))
    else:
        curves, rows = {}, []
        for variant in ("dreamerv3", "dreamerv2", "dreamerv1"):
            records, seconds = train(data, f"variant-{variant}", [variant, args.preset], args.updates, sets)
            curves[variant] = records
            final = [r for r in records if "val/wm/loss" in r][-1]
            rows.append(f"| {variant} | {final['val/wm/loss']:.3f} | {final['val/wm/loss/recon']:.4f} | "
                        f"{final['val/wm/loss/reward']:.4f} | {final['val/wm/loss/cont']:.4f} | "
                        f"{final.get('val/wm/openloop_mse_last', float('nan')):.5f} | "
                        f"{final.get('val/wm/openloop_ratio_last', float('nan')):.1f}x | {seconds / 60:.1f} |")
        png = HERE / "wm_learning_variants.png"
        plot(curves, png, key="val/wm/loss/recon")
        lines = [f"## World-model variants side by side (CartPole-v1 vector, {args.preset})", "",
                 f"Command: `{command}`. Each variant is `--preset <variant> --preset {args.preset}`. The total losses "
                 "differ in their terms (two-hot vs MSE reward, KL forms), so compare the per-term and open-loop columns.", "",
                 "| variant | val/wm/loss | val recon | val reward | val cont | open-loop MSE @15 | baseline / model | minutes |",
                 "|---|---|---|---|---|---|---|---|", *rows, "", f"Held-out reconstruction curves: `benchmarks/{png.name}`."]
        update_section("wm-learning-variants", "\n".join(lines))


if __name__ == "__main__":
    main()
