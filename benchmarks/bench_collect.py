"""Collection overhead: `dreamer collect` env steps/s divided by raw gymnasium stepping.

    python benchmarks/bench_collect.py [--steps 20000] [--pong-steps 4000]

For each env, in one run (so both figures share the machine's load):
- raw: the same env as make_env builds it (same preprocessing), stepped in a plain loop with
  `env.action_space.sample()` and `env.reset()` at episode ends, nothing stored;
- collect: stage 01 (`dreamer_core.stages.collect.run`) with the random policy, writing a
  dataset (HDF5 shards, lzf-compressed images) into a temporary directory.
Raw and collect runs are interleaved (raw, collect, raw, collect, ...) and the best of each is
kept, so a burst of load on the shared machine hits both alike. Also reports the speed-up of
--num-envs 2 on Pong. Writes the `collect` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

from results import update_section

from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.stages.collect import CollectConfig, run


def raw_steps_per_second(env_cfg: EnvConfig, steps: int, seed: int = 0) -> float:
    env = make_env(env_cfg, seed=seed)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def collect_steps_per_second(env_cfg: EnvConfig, steps: int, num_envs: int = 1, backend: str = "auto") -> float:
    out = Path(tempfile.mkdtemp(prefix="bench_collect_")) / "ds"
    try:
        result = run(CollectConfig(out=str(out), env=env_cfg, steps=steps, num_envs=num_envs, backend=backend),
                     progress=False)
        return result.steps_per_second
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20000, help="CartPole steps per measurement")
    parser.add_argument("--pong-steps", type=int, default=4000, help="Pong steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = []
    cases = [("CartPole-v1", EnvConfig(id="CartPole-v1"), args.steps, 0.5)]
    try:
        import ale_py  # noqa: F401

        cases.append(("ALE/Pong-v5 64x64", EnvConfig(id="ALE/Pong-v5"), args.pong_steps, 0.85))
    except ImportError:
        print("ale-py not installed: skipping Pong (pip install -e '.[atari]')")
    for name, env_cfg, steps, target in cases:
        raw, col = [], []
        for _ in range(args.repeats):
            raw.append(raw_steps_per_second(env_cfg, steps))
            col.append(collect_steps_per_second(env_cfg, steps))
        ratio = max(col) / max(raw)
        rows.append((name, max(raw), max(col), ratio, target))
        print(f"{name}: raw {max(raw):,.0f} steps/s, collect {max(col):,.0f} steps/s, ratio {ratio:.2f} (target >= {target})")

    lines = [
        "## Collection overhead (stage 01)",
        "",
        "Command: `python benchmarks/bench_collect.py` "
        f"(CartPole {args.steps} steps, Pong {args.pong_steps} steps per measurement, best of {args.repeats}, "
        "raw and collect interleaved in one run). Python " + platform.python_version() + ".",
        "",
        "| env | raw gymnasium steps/s | `dreamer collect` steps/s | ratio | target |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {r:,.0f} | {c:,.0f} | {q:.2f} | >= {t} |" for n, r, c, q, t in rows]
    if len(cases) > 1:
        pong = cases[1][1]
        one = max(collect_steps_per_second(pong, args.pong_steps, 1) for _ in range(2))
        speedups = []
        for backend in ("ale", "async"):
            try:
                two = max(collect_steps_per_second(pong, args.pong_steps, 2, backend) for _ in range(2))
            except Exception as exc:  # report, do not hide, a backend that fails here
                print(f"--num-envs 2 --backend {backend} failed: {exc}")
                continue
            speedups.append((backend, two, two / one))
            print(f"Pong --num-envs 2 --backend {backend}: {two:,.0f} steps/s, speed-up {two / one:.2f}x over 1 env ({one:,.0f})")
        lines += ["", f"Pong with `--num-envs 2` (1 env: {one:,.0f} steps/s):", "",
                  "| backend | steps/s | speed-up |", "|---|---|---|"]
        lines += [f"| {b} | {s:,.0f} | {x:.2f}x |" for b, s, x in speedups]
    update_section("collect", "\n".join(lines))


if __name__ == "__main__":
    main()
