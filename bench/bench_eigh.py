"""Benchmark of the eigensolver and the spectral modes against torch.linalg.eigh.

    python -m pytest bench/bench_eigh.py

Per dtype and block size b, on about 16 MB of random symmetric blocks: the baseline is
torch.linalg.eigh of the batch plus the torch ops that form M^-1 = V f(Lambda) V^T (mode
saddle_free_root, mu = 1); against it, hsc.ops.eigh alone, the fused hsc.ops.correct in mode
saddle_free_root (eigen-decomposition and M^-1, packed), and, for the cost relative to the Cholesky
route, hsc.ops.correct in mode cholesky on the same blocks. Writes bench/results/cpu_eigh.json and
cpu_eigh.md. HSC_BENCH_EIGH_MIB and HSC_BENCH_EIGH_BLOCK_SIZES change the sizes (quick checks).
"""
from __future__ import annotations

import os

import pytest
import torch

from bench_ops import test_gemm_ceiling  # noqa: F401  (the GEMM ceiling, measured in this run too)
from hsc import ops

BLOCK_BYTES = int(os.environ.get("HSC_BENCH_EIGH_MIB", "16")) << 20
BLOCK_SIZES = [int(b) for b in os.environ.get("HSC_BENCH_EIGH_BLOCK_SIZES", "8,16,24,32,64").split(",")]
DTYPES = [torch.float32, torch.float64]
SCALE = 1.0


def torch_route(H: torch.Tensor) -> torch.Tensor:
    """torch.linalg.eigh, then M^-1 = V f(Lambda) V^T with torch ops ([N, b, b], not packed)."""
    lam, V = torch.linalg.eigh(H)
    f = (lam * lam + SCALE ** 2).rsqrt()
    return (V * f[:, None, :]) @ V.mT


_inputs: dict = {}


def blocks(dtype: torch.dtype, b: int) -> torch.Tensor:
    """Symmetric Gaussian blocks (indefinite, as the curvature blocks of the applications are)."""
    key = (dtype, b)
    if key not in _inputs:
        _inputs.clear()
        g = torch.Generator().manual_seed(b)
        N = BLOCK_BYTES // (b * b * dtype.itemsize)
        X = torch.randn(N, b, b, dtype=dtype, generator=g)
        _inputs[key] = 0.5 * (X + X.mT)
    return _inputs[key]


METHODS = {
    "torch": torch_route,
    "eigh": lambda H: ops.eigh(H),
    "spectral_correct": lambda H: ops.correct(H, scale=SCALE, mode="saddle_free_root"),
    "cholesky_correct": lambda H: ops.correct(H, scale=SCALE, mode="cholesky"),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("b", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_eigh(benchmark, collector, dtype, b, method):
    H = blocks(dtype, b)
    fn = METHODS[method]
    if method == "spectral_correct":  # only meaningful if the op computes the baseline's result
        c = fn(H)
        assert bool((c.status == 0).all())
        torch.testing.assert_close(ops.unpack(c.factor, H.shape[0]), torch_route(H),
                                   rtol=1e-3 if dtype == torch.float32 else 1e-9,
                                   atol=1e-4 if dtype == torch.float32 else 1e-12)
    benchmark.group = f"eigh {str(dtype).replace('torch.', '')} b={b}"
    rounds = 3 if method == "torch" else 7
    benchmark.pedantic(fn, args=(H,), rounds=rounds, warmup_rounds=1)
    collector.add("eigh", (str(dtype), b), method, benchmark.stats.stats.median,
                  dtype=str(dtype).replace("torch.", ""), b=b, N=H.shape[0], itemsize=dtype.itemsize)
