#!/usr/bin/env bash
# What a CUDA machine says about dreamer-core, in one go (installs nothing):
#
#   benchmarks/gpu_check.sh            # from anywhere, with the venv that has torch + CUDA active
#
# 1. torch, CUDA, cuDNN, NCCL and the GPUs torch sees (and nvidia-smi, when there is one);
# 2. the CUDA tests (`pytest -m cuda`);
# 3. full updates per second (world model + actor-critic, B=16 x T=64) on one GPU, sizes XS and S,
#    vector and 64x64x3 pixel observations (benchmarks/bench_update.py --device cuda);
# 4. stage 02 world-model updates per second through the CLI on one GPU and on all GPUs
#    (torchrun, data-parallel: each rank samples 16 windows, global batch = GPUs x 16), on small
#    datasets of the dummy envs (dreamer/DummyDiscrete-v0: a 4-vector; dreamer/DummyImage-v0:
#    64x64x3 frames).
#
# Without CUDA it checks what it can (this script's syntax, that the benchmark compiles and the
# package imports, that the CUDA tests are collected and skip), says "no CUDA" and exits 0.
# Exit status: 0 when every check passed (or there is no CUDA), 1 when one failed.
#
# Environment: PYTHON (default: python), UPDATES (stage 02 updates per run, default 200),
# REPEATS (timed updates per benchmark worker, default 10), SIZES (default "XS S"), WORK (scratch
# folder, default: a new temporary one, removed at the end). FORCE_CPU=1 runs sections 3 and 4 on
# the CPU with NPROC (default 2) gloo processes instead of GPUs: a dry run of this script on a
# machine without CUDA (slow; its figures say nothing about GPUs), e.g.
#   FORCE_CPU=1 SIZES=tiny UPDATES=8 REPEATS=2 benchmarks/gpu_check.sh
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.." || exit 1
PYTHON=${PYTHON:-python}
UPDATES=${UPDATES:-200}
REPEATS=${REPEATS:-10}
SIZES=${SIZES:-XS S}
status=0

section() { printf '\n== %s ==\n' "$*"; }
fail() { echo "FAILED: $*"; status=1; }

section "checks that need no GPU"
if bash -n "$here/gpu_check.sh"; then echo "gpu_check.sh: syntax ok"; else fail "gpu_check.sh has a syntax error"; fi
if "$PYTHON" -m py_compile benchmarks/bench_update.py; then echo "bench_update.py: compiles"; else fail "bench_update.py"; fi
"$PYTHON" -c "import dreamer_core; print('dreamer_core', dreamer_core.__version__, 'imports')" || {
    echo "dreamer_core does not import with $PYTHON: activate the project's venv (pip install -e .) first."
    exit 1
}

section "torch / CUDA / GPUs"
"$PYTHON" - <<'PY'
import platform

import torch

cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA build {torch.version.cuda}, "
      f"cuDNN {cudnn}), cuda available: {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i}  {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
if torch.cuda.is_available():
    import torch.distributed as dist

    nccl = dist.is_nccl_available()
    print(f"  NCCL available: {nccl}" + (f" (version {'.'.join(map(str, torch.cuda.nccl.version()))})" if nccl else ""))
PY
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.used,memory.total,utilization.gpu --format=csv
else
    echo "nvidia-smi: not on PATH"
fi
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
device=cuda
if [ "${FORCE_CPU:-0}" = 1 ]; then
    device=cpu
    gpus=${NPROC:-2}
    echo "FORCE_CPU=1: sections 3 and 4 run on the CPU with $gpus processes (a dry run: no GPU figures)"
elif [ "$gpus" -eq 0 ]; then
    section "CUDA tests (collected here; they skip without a GPU)"
    "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider tests/test_gpu_check.py || fail "pytest -m cuda"
    echo
    echo "no CUDA: torch sees no GPU on this machine, so the CUDA tests and the GPU speed figures were skipped."
    echo "Run this script on a machine with an NVIDIA GPU and a CUDA build of torch."
    exit "$status"
fi

if [ "$device" = cuda ]; then
    section "CUDA tests: pytest -m cuda"
    "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider tests || fail "pytest -m cuda"
fi
work=${WORK:-}
if [ -z "$work" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

section "full update (world model + actor-critic) on 1 device: benchmarks/bench_update.py --device $device"
# shellcheck disable=SC2086  # SIZES is a list of words
if "$PYTHON" benchmarks/bench_update.py --device "$device" --sizes $SIZES --obs vector image --rounds 1 \
        --repeats "$REPEATS" --no-write >"$work/bench.txt" 2>&1; then
    cat "$work/bench.txt"
    "$PYTHON" - "$work/bench.txt" <<'PY'
import sys

for row in open(sys.argv[1]):
    if row.startswith("| this toolkit |"):
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        print(f"  {cells[1]:4s} {cells[2]:6s} {1000 / float(cells[4]):8.2f} full updates/s")
PY
else
    fail "bench_update.py --device $device"
    tail -20 "$work/bench.txt"
fi

section "stage 02 world-model updates/s: 1 and $gpus $device device(s) with torchrun ($UPDATES updates each)"
"$PYTHON" -m dreamer_core collect --env dreamer/DummyDiscrete-v0 --out "$work/vector" --steps 20000 -q >/dev/null \
    || fail "collect vector data"
"$PYTHON" -m dreamer_core collect --env dreamer/DummyImage-v0 --out "$work/pixels" --steps 5000 -q >/dev/null \
    || fail "collect pixel data"

steady_rate() {  # updates/s between the first and the last log record (the warm-up left out)
    "$PYTHON" - "$1/metrics.jsonl" <<'PY'
import json
import sys

rows = [r for r in map(json.loads, open(sys.argv[1])) if "wm/updates_per_second" in r]
(u1, r1), (u2, r2) = [(r["step"], r["wm/updates_per_second"]) for r in (rows[0], rows[-1])]
print(f"{(u2 - u1) / (u2 / r2 - u1 / r1):.2f}" if u2 > u1 else f"{r2:.2f}")
PY
}

log_every=$(( UPDATES / 4 > 0 ? UPDATES / 4 : 1 ))
stage02=(train-world-model --updates "$UPDATES" --device "$device" -q --set "log_every=$log_every"
         --set checkpoint_every=0 --set eval_every=0)
printf '%-5s %-7s %14s %16s %10s\n' size obs "1 dev upd/s" "$gpus dev upd/s" "samples x"
for size in $SIZES; do
    for obs in vector pixels; do
        one=$work/run-$size-$obs-1
        all=$work/run-$size-$obs-$gpus
        if "$PYTHON" -m dreamer_core "${stage02[@]}" "$work/$obs" --out "$one" --preset "$size" >"$one.log" 2>&1; then
            rate1=$(steady_rate "$one")
        else
            rate1=failed
            fail "stage 02 $size $obs on 1 device (log: $one.log)"
            tail -5 "$one.log"
        fi
        rate_n=-
        if [ "$gpus" -gt 1 ]; then
            if "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$gpus" -m dreamer_core \
                    "${stage02[@]}" "$work/$obs" --out "$all" --preset "$size" >"$all.log" 2>&1; then
                rate_n=$(steady_rate "$all")
            else
                rate_n=failed
                fail "stage 02 $size $obs on $gpus devices (log: $all.log)"
                tail -5 "$all.log"
            fi
        fi
        speedup=$("$PYTHON" -c "import sys
try: print(f'{float(sys.argv[1]) * int(sys.argv[3]) / float(sys.argv[2]):.2f}x')
except ValueError: print('-')" "$rate_n" "$rate1" "$gpus")
        printf '%-5s %-7s %14s %16s %10s\n' "$size" "$obs" "$rate1" "$rate_n" "$speedup"
    done
done
echo "(samples x: windows per second on all devices over one device's; each rank samples 16 windows)"

section "result"
if [ "$status" -eq 0 ]; then echo "GPU check passed"; else echo "GPU check: some checks FAILED (see above)"; fi
exit "$status"
