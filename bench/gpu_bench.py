"""GPU benchmark of the fused op against the torch chain (cuSOLVER underneath), with CUDA events.

    python bench/gpu_bench.py --out $OUT/gpu.json

Reports per case: µs per block, achieved GB/s (H and G read once, P written once) against a
device-to-device copy measured in the same run, useful TFLOP/s (4b³/3 flops per block), and the
ratio to the chain. Then the eigensolver ("eigh_rows"): hsc.ops.eigh and hsc.ops.correct in mode
saddle_free_root (eigen-decomposition and the packed M^-1) against torch.linalg.eigh of the batch
(cuSOLVER's batched Jacobi or QR underneath) plus M^-1 = V f(Lambda) V^T formed with torch ops, in
µs per block, with the sweep-limit status and the agreement of the factors. Then hsc.ops.graft_ against
the same grafting composed of torch ops ("graft_rows"). Needs a GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import hsc
from hsc import ops

CASES = [(N, b) for b in (16, 32, 64, 128) for N in (10 ** 3, 10 ** 5, 10 ** 6) if N < 10 ** 6 or b <= 32]
# torch.linalg.eigh batches Jacobi (cuSOLVER syevjBatched) only up to b = 32 and loops over the
# matrices above: the torch route is timed at N = 1000 there (TORCH_EIGH_LIMIT).
EIGH_CASES = [(N, b) for b in (8, 16, 32) for N in (10 ** 4, 10 ** 5)] + \
             [(N, b) for b in (64, 128) for N in (10 ** 3, 10 ** 4)]
TORCH_EIGH_LIMIT = {8: 10 ** 5, 16: 10 ** 5, 32: 10 ** 5, 64: 10 ** 3, 128: 10 ** 3}
SCALE = 1.0


def chain(H, G, damping=1e-4, scale=1.0):
    b = H.shape[-1]
    A = 0.5 * (H + H.mT) + damping * torch.eye(b, dtype=H.dtype, device=H.device)
    L, _ = torch.linalg.cholesky_ex(A)
    M = A + scale ** 2 * torch.cholesky_inverse(L)
    LM, _ = torch.linalg.cholesky_ex(M)
    return torch.cholesky_solve(G.unsqueeze(-1), LM).squeeze(-1)


def cuda_time(fn, warmup=3, repeats=10, budget_s=20.0):
    """Median milliseconds of fn() by CUDA events, after warm-up; fewer repeats if slow."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    t_start = time.perf_counter()
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if time.perf_counter() - t_start > budget_s:
            break
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth_gbs(nbytes=2 << 30):
    x = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = cuda_time(lambda: y.copy_(x))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def spd_blocks(N, b, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    X = torch.randn(N, b, b, dtype=dtype, device="cuda", generator=g)
    H = X @ X.mT / b + 0.1 * torch.eye(b, dtype=dtype, device="cuda")
    G = torch.randn(N, b, dtype=dtype, device="cuda", generator=g)
    return H, G


def torch_saddle_free_root(H):
    """torch.linalg.eigh of the batch, then M^-1 = V f(Lambda) V^T, f = 1 / sqrt(lambda^2 + mu^2)."""
    lam, V = torch.linalg.eigh(H)
    f = (lam * lam + SCALE ** 2).rsqrt()
    return (V * f[:, None, :]) @ V.mT


def symmetric_blocks(N, b, dtype, seed):
    """Gaussian symmetric blocks (indefinite, as the curvature blocks of the applications are)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    X = torch.randn(N, b, b, dtype=dtype, device="cuda", generator=g)
    return 0.5 * (X + X.mT)


def eigh_rows():
    rows = []
    for dtype in (torch.float32, torch.float64):
        for N, b in EIGH_CASES:
            H = symmetric_blocks(N, b, dtype, seed=N + b)
            c = ops.correct(H, scale=SCALE, mode="saddle_free_root")
            eigh_ms = cuda_time(lambda: ops.eigh(H))
            correct_ms = cuda_time(lambda: ops.correct(H, scale=SCALE, mode="saddle_free_root"))
            timed = N <= TORCH_EIGH_LIMIT[b]
            rel = torch_eigh_ms = torch_ms = None
            if timed:
                expected = torch_saddle_free_root(H)
                rel = float((ops.unpack(c.factor, N) - expected).norm() / expected.norm())
                del expected
                torch_eigh_ms = cuda_time(lambda: torch.linalg.eigh(H), warmup=1, repeats=5)
                torch_ms = cuda_time(lambda: torch_saddle_free_root(H), warmup=1, repeats=5)
            per_block = lambda ms: None if ms is None else ms * 1e3 / N  # noqa: E731
            row = {
                "dtype": str(dtype).replace("torch.", ""), "N": N, "b": b,
                "eigh_us_per_block": per_block(eigh_ms),
                "correct_saddle_free_root_us_per_block": per_block(correct_ms),
                "torch_eigh_us_per_block": per_block(torch_eigh_ms),
                "torch_eigh_and_factor_us_per_block": per_block(torch_ms),
                "speedup_correct_vs_torch": None if torch_ms is None else torch_ms / correct_ms,
                "all_status_0": bool((c.status == 0).all()),
                "rel_err_factor_vs_torch": rel,
            }
            rows.append(row)
            nan = float("nan")
            print(f"{row['dtype']:8s} b={b:4d} N={N:8d} eigh {row['eigh_us_per_block']:9.4f} us/blk "
                  f"correct(saddle_free_root) {row['correct_saddle_free_root_us_per_block']:9.4f} "
                  f"torch eigh {row['torch_eigh_us_per_block'] or nan:9.4f} +factor "
                  f"{row['torch_eigh_and_factor_us_per_block'] or nan:9.4f} "
                  f"x{row['speedup_correct_vs_torch'] or nan:6.1f} err {rel if rel is not None else nan:.1e}",
                  flush=True)
            del H, c
            torch.cuda.empty_cache()
    return rows


# graft_: (parameters, tensors) of one player's layout at b = 16, the DCGAN generator's size and larger.
GRAFT_CASES = [(540_000, 8), (16 * 2 ** 20, 16)]


def graft_rows(copy_gbs: float):
    """hsc.ops.graft_ against the same grafting composed of torch ops (graft_baseline.torch_graft),
    float32, b = 16, equal tensors; GB/s on 3 reads and 1 write per entry."""
    from graft_baseline import segment_owner, torch_graft

    rows = []
    for numel, tensors in GRAFT_CASES:
        N = numel // 16
        P, G = torch.randn(N, 16, device="cuda"), torch.randn(N, 16, device="cuda")
        ends = torch.linspace(N / tensors, N, tensors, device="cuda").round().long()
        owner = segment_owner(ends)
        op_ms = cuda_time(lambda: bool(ops.graft_(P, G, ends).all()))  # the apply reads the flag too
        torch_ms = cuda_time(lambda: torch_graft(P, G, owner, tensors))
        nbytes = 4 * N * 16 * 4
        rows.append({"parameters": numel, "tensors": tensors, "graft_us": op_ms * 1e3, "torch_us": torch_ms * 1e3,
                     "speedup": torch_ms / op_ms, "achieved_GBps": nbytes / (op_ms * 1e-3) / 1e9,
                     "copy_GBps": copy_gbs})
        print(f"graft_ {numel:9d} entries in {tensors:2d} tensors: {op_ms * 1e3:8.1f} us, torch ops "
              f"{torch_ms * 1e3:8.1f} us (x{torch_ms / op_ms:.1f}), {rows[-1]['achieved_GBps']:.0f} GB/s", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--chain-limit", type=int, default=10 ** 5,
                        help="largest N at which the (slow) torch chain is timed")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no GPU present", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name()
    copy_gbs = copy_bandwidth_gbs()
    rows = []
    for dtype in (torch.float32, torch.float64):
        for N, b in CASES:
            H, G = spd_blocks(N, b, dtype, seed=N + b)
            P, _, status = ops.precondition(H, G)
            ref = chain(H, G)
            rel = float((P - ref).norm() / ref.norm())
            fused_ms = cuda_time(lambda: ops.precondition(H, G))
            chain_ms = cuda_time(lambda: chain(H, G)) if N <= args.chain_limit else None
            nbytes = (N * b * b + 2 * N * b) * dtype.itemsize
            row = {
                "dtype": str(dtype).replace("torch.", ""), "N": N, "b": b,
                "fused_us_per_block": fused_ms * 1e3 / N,
                "chain_us_per_block": None if chain_ms is None else chain_ms * 1e3 / N,
                "speedup_vs_chain": None if chain_ms is None else chain_ms / fused_ms,
                "achieved_GBps": nbytes / (fused_ms * 1e-3) / 1e9,
                "memory_floor_ms": nbytes / (copy_gbs * 1e9) * 1e3,
                "fused_ms": fused_ms,
                "useful_TFLOPs": 4 * b ** 3 / 3 * N / (fused_ms * 1e-3) / 1e12,
                "all_status_0": bool((status == 0).all()),
                "rel_err_vs_chain": rel,
            }
            rows.append(row)
            print(f"{row['dtype']:8s} b={b:4d} N={N:8d} fused {row['fused_us_per_block']:9.4f} us/blk "
                  f"chain {row['chain_us_per_block'] or float('nan'):9.4f} x{row['speedup_vs_chain'] or float('nan'):6.1f} "
                  f"{row['achieved_GBps']:7.1f} GB/s {row['useful_TFLOPs']:6.2f} TFLOP/s err {rel:.1e}", flush=True)
            del H, G, P, ref
            torch.cuda.empty_cache()
    result = {"card": card, "torch": torch.__version__, "hsc": hsc.__version__,
              "copy_GBps": copy_gbs, "command": "python bench/gpu_bench.py --out ...", "rows": rows,
              "eigh_rows": eigh_rows(), "graft_rows": graft_rows(copy_gbs)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"card {card}; device-to-device copy {copy_gbs:.0f} GB/s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
