#!/usr/bin/env bash
# One-call GPU check: build the extension, run the CUDA tests, run compute-sanitizer (memcheck on
# every op, racecheck on the shared-memory kernels) on small cases, benchmark against the torch
# chains (cuSOLVER underneath). Run from the repository root on the GPU machine
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
        # eigh (b = 130: float32 in shared memory, float64 in global scratch) and the spectral modes
        e = ops.eigh(H); ops.eigh(H, max_sweeps=1)
        for mode in ("spectral", "saddle_free", "saddle_free_root"):
            ops.precondition(H, G, mode=mode); c = ops.correct(H, mode=mode)
            ops.correct_(c.factor, H, mode=mode, keep_failed=True, max_sweeps=1)
        ops.correct_from_eigh_(c.factor, e, mode="saddle_free", keep_failed=True)
        ops.correct_from_eigh_(c.factor, e, mode="saddle_free_root", power=0.5)
    st = torch.zeros(5, 4, 4, dtype=dtype, device="cuda")
    ops.accumulate_probes(st, torch.randn(2, 4, 5, 4, dtype=dtype, device="cuda"),
                          torch.ones(2, 5, dtype=dtype, device="cuda"),
                          torch.ones(5, 4, dtype=torch.bool, device="cuda"), ema=0.9, first=True)
    # graft_: segments longer than a thread block, an empty one, an end beyond N (clipped)
    P = torch.randn(500, 7, dtype=dtype, device="cuda"); P[30, 1] = float("nan")
    ops.graft_(P, torch.randn_like(P), torch.tensor([0, 200, 200, 450, 999], device="cuda"))
torch.cuda.synchronize(); print("sanitizer case done")
PY
timeout 300 "$SAN" --tool memcheck --error-exitcode 9 "$PY" /tmp/hsc_sanitize.py 2>&1 | tail -8 | tee "$OUT/sanitizer.txt"

step "compute-sanitizer racecheck (the thread-block kernels' shared memory)"
cat > /tmp/hsc_racecheck.py <<'PY'
import torch
from hsc import ops
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    for b in (33, 70):
        H = torch.randn(3, b, b, dtype=dtype, device="cuda"); H[1, 0, 0] = float("nan")
        G = torch.randn(3, b, dtype=dtype, device="cuda")
        ops.precondition(H, G); ops.correct(H, mode="singular_safe"); ops.eigh(H)
    P = torch.randn(300, 5, dtype=dtype, device="cuda")
    ops.graft_(P, torch.randn_like(P), torch.tensor([100, 300], device="cuda"))
torch.cuda.synchronize(); print("racecheck case done")
PY
timeout 240 "$SAN" --tool racecheck --error-exitcode 9 "$PY" /tmp/hsc_racecheck.py 2>&1 | tail -8 | tee "$OUT/racecheck.txt"

step benchmark
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_' | tr -cd 'A-Za-z0-9_-')
timeout 480 "$PY" bench/gpu_bench.py --out "$OUT/gpu_${CARD:-unknown}.json" 2>&1 | tee "$OUT/bench.txt" | tail -30
step "image GAN on the GPU (hsc gan --device cuda: DCGAN players, both methods)"
# A short run of each image set: it must train and evaluate on the GPU (classifier trained once
# and cached), and its steps a second set beside the CPU tables of gan_images.md.
for data in mnist stacked-mnist; do
  timeout 300 "$PY" -m hsc gan --data "$data" --optim hsc,adam --steps 400 --eval-every 200 --device cuda \
    --out "$OUT/gan_cuda_$data" 2>&1 | tail -8 | tee -a "$OUT/gan_cuda.txt"
done
step done
