#!/usr/bin/env bash
# One-call GPU check: build the extension, run the CUDA tests, run compute-sanitizer on a small
# case, benchmark against the torch chain. Run from the repository root on the GPU machine
# (torch, nvcc, ninja, pybind11, pytest, pytest-benchmark already there; no package index).
# Writes everything under $OUT (default: bench/results/gpu_run); commit gpu_<card>.json from there
# to bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu_run}"
mkdir -p "$OUT"
export MAX_JOBS="${MAX_JOBS:-16}" HSC_CUDA=1
# The in-place build is imported from the working tree (nothing is installed there).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"  # the GPU image's python3 holds torch
[ -d /usr/local/cuda ] && export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"

step() { echo "== $1 ($(date +%T))"; }
step build
"$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
"$PY" -m hsc info | tee -a "$OUT/gpu.txt"

step "CUDA tests"
# (the host emulation of the CUDA kernels, test_cuda_emulation.py, runs in CI: not repeated here)
"$PY" -m pytest tests -q -x -k "cuda and not emulat" -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/tests.txt"

step "compute-sanitizer memcheck"
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
cat > /tmp/hsc_sanitize.py <<'PY'
import torch
from hsc import ops
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    for b in (3, 32, 33, 130):
        H = torch.randn(9, b, b, dtype=dtype, device="cuda"); H[2, 0, 0] = float("nan")
        G = torch.randn(9, b, 2, dtype=dtype, device="cuda")
        for mode in ("cholesky", "singular_safe"):
            ops.precondition(H, G, mode=mode); c = ops.correct(H, mode=mode)
            ops.correct_(c.factor, H, mode=mode, keep_failed=True); ops.solve(c, G)
    st = torch.zeros(5, 4, 4, dtype=dtype, device="cuda")
    ops.accumulate_probes(st, torch.randn(2, 4, 5, 4, dtype=dtype, device="cuda"),
                          torch.ones(2, 5, dtype=dtype, device="cuda"),
                          torch.ones(5, 4, dtype=torch.bool, device="cuda"), ema=0.9, first=True)
torch.cuda.synchronize(); print("sanitizer case done")
PY
timeout 240 "$SAN" --tool memcheck --error-exitcode 9 "$PY" /tmp/hsc_sanitize.py 2>&1 | tail -8 | tee "$OUT/sanitizer.txt"

step benchmark
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_' | tr -cd 'A-Za-z0-9_-')
timeout 300 "$PY" bench/gpu_bench.py --out "$OUT/gpu_${CARD:-unknown}.json" 2>&1 | tee "$OUT/bench.txt" | tail -30
step done
