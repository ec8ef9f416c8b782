"""Benchmark of data/sampler.py: bytes on disk, load time and batches/s per compression.

Builds (once; reused from ``benchmarks/_work/sampler/``) a dataset of >= 100k rows of 64x64x3
uint8 Pong-like frames for each shard compression ("lzf", "gzip", "none"), then measures

* bytes on disk per 100k frames,
* the time to open the dataset and load it into a memory-mode sampler (shard files evicted
  from the OS page cache first, where the OS allows it),
* batches/s for B=16, T=64 in memory mode and in disk mode (``memory_budget=0``: images are
  read from the shards window by window; measured cold, right after eviction, and warm).

Prints a markdown table and writes it into the ``## Sampler`` section of
``benchmarks/RESULTS.md`` (between the ``sampler:start`` / ``sampler:end`` markers; other
sections are kept).

The frames are synthetic (no ALE needed): a constant Pong-brown background with the two
white walls, two paddles doing random walks, a bouncing ball and score blocks, i.e. sparse
frames that compress like Atari frames rather than like noise.

Run: ``python benchmarks/bench_sampler.py`` (add ``--rebuild`` to rewrite the datasets).

Imports: numpy, gymnasium, dreamer_core.data (writer, dataset, sampler, store).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import torch

from dreamer_core.data import store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.data.schema import Episode
from dreamer_core.data.writer import COMPRESSIONS, DatasetWriter
from dreamer_core.errors import DatasetError

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "sampler"
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- sampler:start -->", "<!-- sampler:end -->"
COMMAND = "python benchmarks/bench_sampler.py"
FRAMES_VERSION = 1
CACHE_BUDGET = (
    512 * 2**20
)  # memory_budget of the "disk mode with chunk cache" measurement  # bump when the frame generator changes, so old datasets are rebuilt

SIZE = 64
BACKGROUND = (144, 72, 17)
WALL = (236, 236, 236)
LEFT_PADDLE = (213, 130, 74)
RIGHT_PADDLE = (92, 186, 92)
BALL = (236, 236, 236)

OBS_SPACE = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)})
ACTION_SPACE = gym.spaces.Discrete(6)


# --- synthetic Pong-like episodes ------------------------------------------------------------


def pong_episode(rows: int, rng: np.random.Generator) -> Episode:
    """One episode of Pong-like frames with random actions and sparse +-1 rewards.

    Shapes:
        obs["image"]: uint8 [rows, 64, 64, 3]; action int64 [rows]; reward float32 [rows]
    """
    frames = np.empty((rows, SIZE, SIZE, 3), np.uint8)
    frames[:] = BACKGROUND
    frames[:, 6:8] = WALL  # top wall
    frames[:, 58:60] = WALL  # bottom wall
    left = np.clip(33 + np.cumsum(rng.integers(-2, 3, rows)), 9, 51)  # paddle tops
    right = np.clip(33 + np.cumsum(rng.integers(-2, 3, rows)), 9, 51)
    ball_y, ball_x = _bounce(rows, 9, 56, rng), _bounce(rows, 9, 54, rng)
    score_left = np.cumsum(rng.random(rows) < 0.004) % 21
    score_right = np.cumsum(rng.random(rows) < 0.004) % 21
    for t in range(rows):
        frame = frames[t]
        frame[left[t] : left[t] + 6, 7:9] = LEFT_PADDLE
        frame[right[t] : right[t] + 6, 55:57] = RIGHT_PADDLE
        frame[ball_y[t] : ball_y[t] + 2, ball_x[t] : ball_x[t] + 1] = BALL
        frame[1:5, 14 : 14 + score_left[t] // 2 + 1] = LEFT_PADDLE
        frame[1:5, 44 : 44 + score_right[t] // 2 + 1] = RIGHT_PADDLE
    actions = rng.integers(0, 6, rows - 1)
    rewards = np.zeros(rows - 1, np.float32)
    scored = rng.random(rows - 1) < 0.01
    rewards[scored] = rng.choice(np.array([-1.0, 1.0], np.float32), int(scored.sum()))
    return Episode.from_transitions({"image": frames}, actions, rewards, terminated=True)


def _bounce(rows: int, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """A coordinate moving at constant speed and reflecting off [low, high]."""
    span = high - low
    speed = int(rng.integers(1, 3))
    raw = int(rng.integers(0, 2 * span)) + speed * np.arange(rows)
    folded = raw % (2 * span)
    return low + np.where(folded < span, folded, 2 * span - folded)


def episodes(total_rows: int, seed: int) -> Iterator[Episode]:
    """Episodes of 700-1300 rows (random-policy Pong length) until ``total_rows`` rows."""
    rng = np.random.default_rng(seed)
    rows = 0
    while rows < total_rows:
        n = int(rng.integers(700, 1301))
        rows += n
        yield pong_episode(n, rng)


# --- building the datasets -------------------------------------------------------------------


def build(rows: int, rebuild: bool) -> dict[str, dict]:
    """Write one dataset per compression (or reuse it); return build info per compression."""
    WORK.mkdir(parents=True, exist_ok=True)
    info_path = WORK / "build.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    wanted = {"rows": rows, "frames_version": FRAMES_VERSION}
    todo = []
    for compression in COMPRESSIONS:
        entry = info.get(compression, {})
        fresh = all(entry.get(k) == v for k, v in wanted.items()) and readable(WORK / compression)
        if rebuild or not fresh:
            shutil.rmtree(WORK / compression, ignore_errors=True)
            todo.append(compression)
    if not todo:
        print(f"reusing datasets in {WORK}")
        return info
    print(f"writing {rows} Pong-like frames with compression {', '.join(todo)} into {WORK} ...")
    writers = {
        c: DatasetWriter(
            WORK / c,
            "SyntheticPong-v0",
            {"size": SIZE},
            OBS_SPACE,
            ACTION_SPACE,
            policy="random",
            seed=0,
            shard_episodes=20,
            shard_seconds=1e9,
            compression=c,
        )
        for c in todo
    }
    write_seconds = dict.fromkeys(todo, 0.0)
    for episode in episodes(rows, seed=0):
        for compression, writer in writers.items():
            start = time.perf_counter()
            writer.add_episode(episode)
            write_seconds[compression] += time.perf_counter() - start
    for compression, writer in writers.items():
        start = time.perf_counter()
        writer.close()
        write_seconds[compression] += time.perf_counter() - start
        info[compression] = {**wanted, "write_seconds": write_seconds[compression]}
    info_path.write_text(json.dumps(info, indent=1))
    return info


def readable(path: Path) -> bool:
    """True when ``path`` is a dataset this dreamer-core can sample (layouts may change)."""
    try:
        dataset = Dataset(path)
        SequenceSampler(dataset, 1, 1, seed=0, memory_budget=0).gather([0])
    except (DatasetError, OSError, KeyError):
        return False
    return True


def layout(path: Path) -> str:
    """Shard count and image chunk shape of a dataset, for the report."""
    shards = store.shard_paths(path)
    with h5py.File(shards[0], "r") as f:
        chunks = f["steps/obs/image"].chunks
    return f"{len(shards)} shards, image chunks of {chunks[0]} frames"


# --- measuring -------------------------------------------------------------------------------


def evict(path: Path) -> bool:
    """Drop the dataset's files from the OS page cache (per file; False where unsupported)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for file in path.iterdir():
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def batches_per_second(sampler: SequenceSampler, seconds: float, max_batches: int) -> float:
    """Sampling rate over ``seconds`` (or ``max_batches``), excluding one warm-up batch."""
    sampler.sample()
    count = 0
    start = time.perf_counter()
    while count < max_batches and time.perf_counter() - start < seconds:
        sampler.sample()
        count += 1
    return count / (time.perf_counter() - start)


def measure(compression: str, batch_size: int, seq_len: int, seconds: float) -> dict:
    path = WORK / compression
    evicted = evict(path)
    start = time.perf_counter()
    dataset = Dataset(path)
    sampler = SequenceSampler(dataset, batch_size, seq_len, seed=0)
    load = time.perf_counter() - start
    assert sampler.in_memory
    memory_rate = batches_per_second(sampler, seconds, 2000)
    memory_gb = sampler.memory_bytes / 2**30
    del sampler
    evict(path)
    disk = SequenceSampler(dataset, batch_size, seq_len, seed=1, memory_budget=0)
    assert disk.disk_keys == ("image",)
    disk_cold = batches_per_second(disk, seconds, 200)
    disk_warm = batches_per_second(disk, seconds, 2000)
    disk.close()
    cached = SequenceSampler(dataset, batch_size, seq_len, seed=2, memory_budget=CACHE_BUDGET)
    assert cached.disk_keys == ("image",)
    batches_per_second(cached, seconds, 2000)  # fill the chunk cache
    disk_cached = batches_per_second(cached, seconds, 2000)
    cached.close()
    return {
        "compression": compression,
        "rows": dataset.num_rows,
        "bytes_per_100k": store.dir_size(path) * 100_000 / dataset.num_rows,
        "load_s": load,
        "memory_gb": memory_gb,
        "memory_rate": memory_rate,
        "disk_cold": disk_cold,
        "disk_warm": disk_warm,
        "disk_cached": disk_cached,
        "evicted": evicted,
    }


# --- reporting -------------------------------------------------------------------------------


def table(results: list[dict], build_info: dict) -> str:
    lines = [
        "| compression | MB on disk / 100k frames | write s | open + load s (cold) | in-memory GiB | "
        "memory mode batches/s | disk mode batches/s (cold) | disk mode batches/s (warm) | "
        f"disk, {CACHE_BUDGET // 2**20} MiB budget batches/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        write = build_info.get(r["compression"], {}).get("write_seconds")
        lines.append(
            f"| {r['compression']} | {r['bytes_per_100k'] / 1e6:,.1f} | "
            f"{'' if write is None else f'{write:.1f}'} | {r['load_s']:.2f} | "
            f"{r['memory_gb']:.2f} | {r['memory_rate']:,.0f} | {r['disk_cold']:,.1f} | "
            f"{r['disk_warm']:,.1f} | {r['disk_cached']:,.1f} |"
        )
    return "\n".join(lines)


def update_results(section: str) -> None:
    """Replace the sampler section of RESULTS.md (or append it), keeping everything else."""
    block = f"{START}\n{section.strip()}\n{END}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per dataset")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per rate measurement")
    parser.add_argument("--rebuild", action="store_true", help="rewrite the datasets")
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the sampler does not use torch ops; keep runs comparable
    build_info = build(args.rows, args.rebuild)
    results = []
    for compression in COMPRESSIONS:
        results.append(measure(compression, args.batch_size, args.seq_len, args.seconds))
        r = results[-1]
        print(
            f"{compression}: {r['bytes_per_100k'] / 1e6:.1f} MB/100k frames, load {r['load_s']:.2f} s, "
            f"memory {r['memory_rate']:.0f}/s, disk {r['disk_cold']:.1f}/s cold, "
            f"{r['disk_warm']:.1f}/s warm"
        )
    cold = (
        "evicted from the page cache with posix_fadvise(DONTNEED) before"
        if all(r["evicted"] for r in results)
        else "NOT evicted (no posix_fadvise here), so cold = warm page cache for"
    )
    section = "\n".join(
        [
            "## Sampler",
            "",
            f"`{COMMAND}` (dreamer_core.data.sampler.SequenceSampler; {time.strftime('%Y-%m-%d')}; "
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"numpy {np.__version__}, h5py {h5py.__version__}, torch {torch.__version__}).",
            "",
            f"Data: {results[0]['rows']:,} rows of **synthetic Pong-like** 64x64x3 uint8 frames "
            "(constant background, walls, two random-walk paddles, bouncing ball, score blocks; "
            "not real ALE frames), Discrete(6) actions, written by DatasetWriter with 20 "
            f"episodes per shard ({layout(WORK / COMPRESSIONS[0])}). Batches: B="
            f"{args.batch_size}, T={args.seq_len}; a batch holds "
            f"{args.batch_size * args.seq_len * SIZE * SIZE * 3 / 2**20:.0f} MiB of pixels.",
            "",
            table(results, build_info),
            "",
            "- *memory mode*: every column loaded into one contiguous array per key; a batch is "
            "one fancy index per key plus torch.from_numpy.",
            "- *disk mode* (`memory_budget=0`): flags, reward, action in memory; image windows "
            "read from the shards (kept open) with one h5py read per shard piece. Nothing of "
            "the budget is spare, so there is no HDF5 chunk cache: every window decompresses "
            "the 2-3 chunks of 32 frames it touches (96 frames for 64 used).",
            f"- *disk, {CACHE_BUDGET // 2**20} MiB*: disk mode with `memory_budget="
            f"{CACHE_BUDGET // 2**20} * 2**20`: images still on disk (they need "
            f"{results[0]['memory_gb']:.2f} GiB), the spare budget becomes HDF5 chunk cache "
            "(decompressed chunks are reused); warm rate.",
            f"- *cold*: shard files {cold} loading and before the first disk-mode batches "
            f"(the cold rate is averaged over up to 200 batches or {args.seconds:.0f} s, so it "
            "warms up as it goes); *warm*: the same sampler right after.",
            "- *write s*: time spent in DatasetWriter.add_episode/close, recorded when the "
            "dataset was built.",
            "- Loading and disk mode on compressed shards are bound by HDF5 decompression, "
            "which runs on one core with the GIL held (h5py), so a prefetch thread would not "
            "overlap it with training; worker processes or raw (`none`) shards would.",
        ]
    )
    print()
    print(section)
    if not args.no_results:
        update_results(section)
        print(f"\nupdated {RESULTS}")


if __name__ == "__main__":
    main()
