"""Check that a restructuring changed no result: the same runs on two commits, metrics compared.

    python benchmarks/behaviour_identity.py                      # reference 83ed67f vs the working tree
    python benchmarks/behaviour_identity.py --ref 83ed67f --new HEAD --write-results

On CPU with one thread the code is deterministic, so every metric except wall-clock and speed
keys must be equal, bit for bit. The script runs, for each side (a git commit checked out as a
worktree, or ``.`` for the working tree, each imported through PYTHONPATH):

1. ``dreamer train --env CartPole-v1 --steps 6000 --seed 0 --threads 1`` (online);
2. ``dreamer collect --env CartPole-v1 --steps 5000 --seed 0`` and
   ``dreamer train-world-model DATA --preset tiny --updates 200 --set threads=1`` (stage 02);
3. ``dreamer train-behavior --run RUN --updates 200 --set threads=1`` (stage 03);
4. ``dreamer evaluate --run RUN --episodes 5`` (stage 04, per-episode returns).

and compares every record of every metrics file key by key. Side outputs are cached under
``benchmarks/_work/identity/<commit>/`` (a commit's results never change; the working tree is
always run afresh). Exit code 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "identity"
# Keys that measure time, not behaviour.
SKIP = re.compile(r"^(time/|time_share/|speed/)|updates_per_second$|wall_seconds$|^seconds$")


def commands(out: Path) -> list[tuple[str, list[str]]]:
    data, run = out / "data", out / "run"
    return [
        ("online", ["train", "--env", "CartPole-v1", "--steps", "6000", "--seed", "0", "--threads", "1",
                    "--out", str(out / "online")]),
        ("collect", ["collect", "--env", "CartPole-v1", "--steps", "5000", "--seed", "0", "--out", str(data),
                     "--quiet"]),
        ("world_model", ["train-world-model", str(data), "--out", str(run), "--preset", "tiny", "--updates", "200",
                         "--set", "threads=1"]),
        ("behavior", ["train-behavior", "--run", str(run), "--updates", "200", "--set", "threads=1"]),
        ("evaluate", ["evaluate", "--run", str(run), "--episodes", "5"]),
    ]


def checkout(rev: str) -> tuple[Path, str]:
    """The source tree of ``rev`` (``.`` = the working tree) and a label for it."""
    if rev == ".":
        return ROOT, "worktree"
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    tree = WORK / f"src-{sha}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return tree, sha


def run_side(rev: str) -> dict:
    tree, label = checkout(rev)
    out = WORK / label
    done = out / "results.json"
    if label != "worktree" and done.exists():
        return json.loads(done.read_text())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    seconds = {}
    for name, args in commands(out):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dreamer_core", *args], cwd=out, env=env,
                              capture_output=True, text=True)
        seconds[name] = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{label}: `dreamer {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        print(f"  {label}: {name} done in {seconds[name]:.0f} s", flush=True)
    results = {"label": label, "seconds": seconds, "files": collect_metrics(out)}
    done.write_text(json.dumps(results))
    return results


def collect_metrics(out: Path) -> dict[str, list[dict]]:
    """Every metrics record (time keys dropped) and every evaluation report, by relative path."""
    files = {}
    for path in sorted(out.rglob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        files[str(path.relative_to(out))] = [{k: v for k, v in r.items() if not SKIP.search(k)} for r in records]
    for path in sorted(out.rglob("report.json")):
        report = json.loads(path.read_text())
        files["evaluate/report.json"] = [{k: report[k] for k in ("returns", "lengths", "seeds") if k in report}]
    return files


def compare(ref: dict, new: dict) -> tuple[int, int, list[str]]:
    """(records compared, values compared, differences)."""
    diffs, records, values = [], 0, 0
    for name in sorted(set(ref["files"]) | set(new["files"])):
        a, b = ref["files"].get(name), new["files"].get(name)
        if a is None or b is None:
            diffs.append(f"{name}: only in {'new' if a is None else 'ref'}")
            continue
        if len(a) != len(b):
            diffs.append(f"{name}: {len(a)} records vs {len(b)}")
        for i, (ra, rb) in enumerate(zip(a, b)):
            records += 1
            if set(ra) != set(rb):
                diffs.append(f"{name}[{i}]: keys differ: {sorted(set(ra) ^ set(rb))}")
            for key in sorted(set(ra) & set(rb)):
                values += 1
                if ra[key] != rb[key]:
                    diffs.append(f"{name}[{i}] {key}: {ra[key]!r} vs {rb[key]!r}")
    return records, values, diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="83ed67f", help="reference commit (default 83ed67f)")
    parser.add_argument("--new", default=".", help="commit to check, or . for the working tree")
    parser.add_argument("--write-results", action="store_true", help="record the comparison in RESULTS.md")
    args = parser.parse_args()
    print(f"reference {args.ref}:")
    ref = run_side(args.ref)
    print(f"new {args.new}:")
    new = run_side(args.new)
    records, values, diffs = compare(ref, new)
    verdict = "identical" if not diffs else f"{len(diffs)} differences"
    print(f"{records} records, {values} values compared across {len(ref['files'])} files: {verdict}")
    for line in diffs[:40]:
        print("  " + line)
    if args.write_results:
        sys.path.insert(0, str(Path(__file__).parent))
        from results import update_section  # benchmarks/results.py

        lines = [
            f"`python benchmarks/behaviour_identity.py --ref {args.ref} --new {args.new}` (CPU, one thread).",
            "",
            "| run | command | reference s | new s |",
            "|---|---|---|---|",
        ]
        for name, argv in commands(Path("OUT")):
            lines.append(f"| {name} | `dreamer {' '.join(argv)}` | {ref['seconds'][name]:.0f} | "
                         f"{new['seconds'][name]:.0f} |")
        lines += ["", f"Compared {records} metric records ({values} values; wall-clock and speed keys excluded) "
                  f"in {len(ref['files'])} files ({', '.join(f'`{n}`' for n in sorted(ref['files']))}): "
                  f"**{verdict}**. The seconds of the two sides were measured at different times on a shared "
                  "machine, not interleaved: they are not a speed comparison."]
        update_section("behaviour-identity", "## Behaviour identity across the restructuring\n\n" + "\n".join(lines))
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
