"""Benchmark of the compiled ops against the unfused torch chain and a batched-matmul ceiling.

    python -m pytest bench/bench_ops.py

writes bench/results/cpu_ops.json and cpu_ops.md and prints the table. A quick check of the script
on small sizes, writing elsewhere:

    HSC_BENCH_OPS_MIB=1 HSC_BENCH_OPS_BLOCK_SIZES=8,16 HSC_BENCH_RESULTS=/tmp/r python -m pytest bench/bench_ops.py
"""
from __future__ import annotations

import os

import pytest
import torch

from hsc import ops

BLOCK_BYTES = int(os.environ.get("HSC_BENCH_OPS_MIB", 16)) << 20  # about 16 MiB of blocks per case
BLOCK_SIZES = [int(b) for b in os.environ.get("HSC_BENCH_OPS_BLOCK_SIZES", "8,16,32,64,128").split(",")]
DTYPES = [torch.float32, torch.float64]
DAMPING, SCALE = 1e-4, 1.0


def chain(H: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """The unfused torch route to M^{-1} g: symmetrise + damp, cholesky_ex, cholesky_inverse, add,
    cholesky_ex, cholesky_solve."""
    b = H.shape[-1]
    A = 0.5 * (H + H.mT) + DAMPING * torch.eye(b, dtype=H.dtype)
    L, _ = torch.linalg.cholesky_ex(A)
    M = A + SCALE ** 2 * torch.cholesky_inverse(L)
    LM, _ = torch.linalg.cholesky_ex(M)
    return torch.cholesky_solve(G.unsqueeze(-1), LM).squeeze(-1)


_inputs: dict = {}


def inputs(dtype: torch.dtype, b: int):
    """SPD blocks (so every method does the same work) and one gradient column per block."""
    key = (dtype, b)
    if key not in _inputs:
        _inputs.clear()
        g = torch.Generator().manual_seed(b)
        N = BLOCK_BYTES // (b * b * dtype.itemsize)
        X = torch.randn(N, b, b, dtype=dtype, generator=g)
        H = X @ X.mT / b + 0.1 * torch.eye(b, dtype=dtype)
        G = torch.randn(N, b, dtype=dtype, generator=g)
        _inputs[key] = (H, G)
    return _inputs[key]


METHODS = {
    "fused": lambda H, G: ops.precondition(H, G, damping=DAMPING, scale=SCALE),
    "correct_solve": lambda H, G: ops.solve(ops.correct(H, damping=DAMPING, scale=SCALE), G),
    "chain": chain,
    "matmul": lambda H, G: torch.bmm(H, H),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_gemm_ceiling(benchmark, collector, dtype):
    """A large matrix product: the machine's practical FLOP/s ceiling for this dtype."""
    n = 2048
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(n, n, dtype=dtype, generator=g), torch.randn(n, n, dtype=dtype, generator=g)
    benchmark.group = "gemm"
    benchmark.pedantic(torch.mm, args=(A, B), rounds=3, warmup_rounds=1)
    collector.add("gemm", (str(dtype),), "gemm", benchmark.stats.stats.median,
                  dtype=str(dtype).replace("torch.", ""), gflops=2 * n ** 3 / benchmark.stats.stats.median / 1e9)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("b", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_ops(benchmark, collector, dtype, b, method):
    H, G = inputs(dtype, b)
    fn = METHODS[method]
    if method == "fused":  # the benchmark is only meaningful if the op computes the chain's result
        P, _, status = fn(H, G)
        assert bool((status == 0).all())
        torch.testing.assert_close(P, chain(H, G), rtol=1e-3 if dtype == torch.float32 else 1e-8,
                                   atol=1e-5 if dtype == torch.float32 else 1e-12)
    benchmark.group = f"{str(dtype).replace('torch.', '')} b={b}"
    # Medians over many rounds of the fast methods: one hiccup of a shared 2-core machine moves a
    # median of five.
    rounds = (3 if b >= 64 else 5) if method == "chain" else 15
    benchmark.pedantic(fn, args=(H, G), rounds=rounds, warmup_rounds=1)
    collector.add("ops", (str(dtype), b), method, benchmark.stats.stats.median,
                  dtype=str(dtype).replace("torch.", ""), b=b, N=H.shape[0], itemsize=dtype.itemsize)
