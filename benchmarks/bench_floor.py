"""How fast one update could be if only its matrix products ran: the matmul floor of an update.

    python benchmarks/bench_floor.py [--jobs update:XS:vector update:S:vector update:XS:image online:tiny]
                                     [--threads 1] [--repeats 5] [--no-write] [--note TEXT]

For each job, one process:

1. times the update itself (median of ``--repeats`` after two warm-ups);
2. runs one more update under a dispatch mode that records every call of the products that
   carry the update's arithmetic: ``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``addmv``, ``mv``,
   ``convolution`` and ``convolution_backward`` (each with its shapes, strides, dtypes and
   arguments; a sparse operand, the one-hot layers' weight gradient, is kept whole and counted
   as one multiply-add per entry and output column);
3. replays each distinct call on its own, on fresh tensors of the same layout, and takes the
   median of ``--repeats`` runs of it (cache-warm, back to back: the most favourable conditions
   such a call gets);
4. sums them, weighted by how often the update made each call: **the floor**. Only the products
   run in it: no norm, activation, softmax, sampling, autograd bookkeeping, optimizer or copy.

The floor is the time the update cannot go below with the same products: a change that keeps
the mathematics (and so the products) can remove at most ``update - floor`` milliseconds. A
speed target below the floor needs fewer products or faster ones, not less overhead.

Jobs: ``update:SIZE:OBS`` is ``benchmarks/bench_update.py``'s full update (B=16 x T=64, the
stage-02/03 presets of SIZE, ``vector`` or 64x64 ``image`` observations); ``online:tiny`` is one
``OnlineTrainer.train_step`` of ``dreamer train`` with every default (tiny, B=16 x T=32),
after its random prefill on CartPole-v1, as ``benchmarks/bench_online.py`` times it (the
online loop's acting is not in it).

Writes the ``update-floor`` section of benchmarks/RESULTS.md (unless ``--no-write``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from results import RECORDS, kept_note, update_section

RUNS = RECORDS / "bench_floor.json"
NOTE = RECORDS / "NOTE-update-floor.md"
PRODUCTS = ("mm", "addmm", "bmm", "baddbmm", "addmv", "mv", "convolution", "convolution_backward")


def _is_product(func) -> bool:
    return func.__module__.startswith("torch._ops.aten") and func._opname in PRODUCTS  # noqa: SLF001


def record_products(step) -> list[tuple]:
    """Run ``step()`` once and return each product call as ``(func, args, kwargs)`` with every
    tensor replaced by ``("T", shape, stride, dtype)``, a sparse one by ``("S", shape, entries,
    a copy of it)``."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    calls = []

    def describe(x):
        if not isinstance(x, torch.Tensor):
            return x
        if x.layout != torch.strided:  # the one-hot layers' sparse weight gradient: kept whole (its pattern)
            return ("S", tuple(x.shape), x._nnz(), x.detach().clone())  # noqa: SLF001
        return ("T", tuple(x.shape), tuple(x.stride()), x.dtype)

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if _is_product(func):
                calls.append((func, tree_map(describe, args), tree_map(describe, kwargs)))
            return func(*args, **kwargs)

    with Recorder():
        step()
    return calls


def replay(calls: list[tuple], repeats: int) -> list[dict]:
    """Time each distinct recorded call on its own; one row per distinct call."""
    import torch
    from torch.utils._pytree import tree_map
    from torch.utils.flop_counter import FlopCounterMode

    def is_tensor(x) -> bool:
        return isinstance(x, tuple) and x[:1] in (("T",), ("S",))

    def key(call):  # a sparse operand by its shape and number of entries
        func, args, kwargs = call
        args, kwargs = (tree_map(lambda x: x[:3] if is_tensor(x) else x, a, is_leaf=is_tensor) for a in (args, kwargs))
        return repr((str(func), args, sorted(kwargs.items())))

    counts: dict[str, list] = {}
    for call in calls:
        counts.setdefault(key(call), [call, 0])[1] += 1
    rows = []
    for call, count in counts.values():
        func, args, kwargs = call

        def make(x):
            if not is_tensor(x):
                return x
            if x[0] == "S":
                return x[3]
            _, shape, stride, dtype = x
            t = torch.empty_strided(shape, stride, dtype=dtype)
            return t.normal_() if dtype.is_floating_point else t.zero_()

        real_args, real_kwargs = tree_map(make, args, is_leaf=is_tensor), tree_map(make, kwargs, is_leaf=is_tensor)
        sparse = [a for a in args if is_tensor(a) and a[0] == "S"]
        if sparse:  # FlopCounterMode counts a sparse product as the dense one: one multiply-add per entry
            flops = 2 * sparse[0][2] * real_args[1].shape[-1]
        else:
            with FlopCounterMode(display=False) as counter:
                func(*real_args, **real_kwargs)
            flops = counter.get_total_flops()
        for _ in range(2):
            func(*real_args, **real_kwargs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            func(*real_args, **real_kwargs)
            times.append(time.perf_counter() - start)
        shapes = [list(a[1]) + (["sparse"] if a[0] == "S" else []) for a in args if is_tensor(a)]
        rows.append({"op": func._opname, "shapes": shapes, "count": count,  # noqa: SLF001
                     "ms": 1000 * statistics.median(times), "flops": flops})
    return rows


# --- the jobs -----------------------------------------------------------------------------------


def make_step(job: str, threads: int):
    """``(step, cleanup)`` for a job name (see the module docstring)."""
    kind, *rest = job.split(":")
    if kind == "update":
        import bench_update

        size, obs = rest
        parts = bench_update.build(size, obs)
        batch = bench_update.make_batch(obs)
        counter = [0]

        def step():
            bench_update.full_update(parts, batch, counter[0])
            counter[0] += 1
        return step, lambda: None
    if kind == "online" and rest == ["tiny"]:
        import bench_online

        from dreamer_core.stages import online

        tmp = Path(tempfile.mkdtemp())
        cfg = bench_online.online_config(str(tmp / "run"), "tiny", threads)
        cfg = online.replace(cfg, steps=cfg.prefill + 8, log_every=cfg.prefill)
        trainer = online.OnlineTrainer(cfg, progress=False)
        trainer.run()  # the random prefill and the first update

        def cleanup():
            trainer.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return trainer.train_step, cleanup
    raise SystemExit(f"unknown job {job!r}: use update:SIZE:vector|image or online:tiny")


def worker(job: str, threads: int, repeats: int) -> dict:
    import bench_update
    import torch

    from dreamer_core import runtime

    runtime.setup(threads)
    step, cleanup = make_step(job, threads)
    try:
        for _ in range(2):
            step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        calls = record_products(step)
        rows = replay(calls, repeats)
    finally:
        cleanup()
    return {"job": job, "threads": threads, "torch": torch.__version__, "update_ms": 1000 * statistics.median(times),
            "update_runs_ms": [1000 * t for t in times], "calls": len(calls), "rows": rows,
            "matmul_gflops": bench_update.matmul_gflops()}


# --- the report ---------------------------------------------------------------------------------


def summarize(result: dict) -> dict:
    rows = result["rows"]
    floor = sum(r["ms"] * r["count"] for r in rows)
    gflop = sum(r["flops"] * r["count"] for r in rows) / 1e9
    return {"floor_ms": floor, "gflop": gflop, "rate": gflop / (floor / 1000) if floor else 0.0}


def render(results: list[dict], args, note: str) -> str:
    lines = [
        "## The matmul floor of an update (`benchmarks/bench_floor.py`)",
        "",
        f"Command: `python benchmarks/bench_floor.py --jobs {' '.join(args.jobs)} --threads {args.threads} "
        f"--repeats {args.repeats}`. torch {results[0]['torch']}, {args.threads} thread(s), float32, CPU. "
        "Each job in its own process: the update timed (median of the repeats after two warm-ups), then one "
        f"more update with every matrix product recorded ({', '.join(PRODUCTS)}), each distinct product replayed alone on fresh tensors of the same layout "
        "(median of the repeats, cache-warm) and summed by how often the update made it. The floor is what "
        "the update would take if only its products ran; no change that keeps the same products can make "
        "the update faster than it.",
        "",
        "| job | update ms | products per update | product GFLOP | floor ms | products' rate | matmul rate (2048^2) "
        "| rest (update - floor) ms | floor / update |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = summarize(r)
        lines.append(f"| {r['job']} | {r['update_ms']:.0f} | {r['calls']} | {s['gflop']:.1f} | {s['floor_ms']:.0f} | "
                     f"{s['rate']:.1f} GFLOP/s | {r['matmul_gflops']:.0f} GFLOP/s | "
                     f"{r['update_ms'] - s['floor_ms']:.0f} | {100 * s['floor_ms'] / r['update_ms']:.0f}% |")
    lines += ["", "The five costliest products of each job (count x median):", ""]
    for r in results:
        top = sorted(r["rows"], key=lambda x: -x["ms"] * x["count"])[:5]
        lines.append(f"- {r['job']}: " + "; ".join(
            f"{t['op']} {' x '.join(str(s) for s in t['shapes'])} x{t['count']}: {t['ms'] * t['count']:.0f} ms "
            f"({t['flops'] / 1e9 / (t['ms'] / 1000):.0f} GFLOP/s)" if t["ms"] else f"{t['op']} x{t['count']}" for t in top))
    if note:
        lines += ["", note]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", default=["online:tiny", "update:XS:vector", "update:S:vector",
                                                      "update:XS:image"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--note", default=None,
                        help="text written under the table (kept in benchmarks/records/NOTE-update-floor.md for "
                             "later runs; \"\" removes it)")
    parser.add_argument("--summarize", action="store_true",
                        help="write the section again from the last run's records (e.g. with a new --note)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.repeats)))
        return
    if args.summarize:
        if not RUNS.exists():
            raise SystemExit(f"--summarize: no saved run at {RUNS}; run the benchmark first.")
        saved = json.loads(RUNS.read_text())
        vars(args).update(saved["args"])
        update_section("update-floor", render(saved["results"], args, kept_note(NOTE, args.note)))
        return
    from bench_update import run_json

    results = []
    for job in args.jobs:
        result = run_json([sys.executable, __file__, "--worker", job, "--threads", str(args.threads),
                           "--repeats", str(args.repeats)], dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        s = summarize(result)
        print(f"{job}: update {result['update_ms']:.0f} ms, floor {s['floor_ms']:.0f} ms "
              f"({s['gflop']:.1f} GFLOP at {s['rate']:.1f} GFLOP/s), matmul rate {result['matmul_gflops']:.0f}",
              flush=True)
        results.append(result)
    if not args.no_write:
        saved_args = {k: getattr(args, k) for k in ("jobs", "threads", "repeats")}
        RUNS.write_text(json.dumps({"args": saved_args, "results": results}) + "\n")
    body = render(results, args, args.note if args.no_write else kept_note(NOTE, args.note))
    print(body)
    if not args.no_write:
        update_section("update-floor", body)


if __name__ == "__main__":
    sys.exit(main())
