"""CUDA kernels against the CPU kernels on the same inputs (every case skips where no GPU is
present). The full op suite in test_ops.py also runs on CUDA through its `device` fixture."""
from __future__ import annotations

import pytest
import torch

from hsc import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present")

# b <= 32: a warp per block; 32 < b: a thread block per block; f64 at b >= 128 and f32 at b = 256:
# the workspace in global memory (it does not fit in shared memory).
BLOCK_SIZES = [1, 3, 16, 31, 32, 33, 64, 100, 128, 256]


def mixed_blocks(N: int, b: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """SPD, indefinite, singular, non-symmetric and non-finite blocks side by side."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, b, b, dtype=torch.float64, generator=g)
    H = X @ X.mT / b
    H[1::5] -= 2 * torch.eye(b, dtype=torch.float64)        # indefinite
    H[2::5] = X[2::5, :, :1] @ X[2::5, :, :1].mT             # rank one
    H[3::5] = X[3::5]                                        # not symmetric
    H[4::5, 0, b - 1] = float("nan")
    return H.to(dtype)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300))


@pytest.mark.parametrize("mode", ["cholesky", "singular_safe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("b", BLOCK_SIZES)
def test_cuda_matches_cpu(b, dtype, mode):
    N = 37
    H = mixed_blocks(N, b, dtype, seed=b)
    G = torch.randn(N, b, 2, dtype=dtype, generator=torch.Generator().manual_seed(1))
    P_cpu, d_cpu, s_cpu = ops.precondition(H, G, mode=mode)
    P_gpu, d_gpu, s_gpu = ops.precondition(H.cuda(), G.cuda(), mode=mode)
    c_cpu, c_gpu = ops.correct(H, mode=mode), ops.correct(H.cuda(), mode=mode)
    # Both kernels run the same arithmetic in a different order (parallel reductions on the GPU):
    # statuses may differ only for blocks at the edge of the working precision.
    same = (s_cpu == s_gpu.cpu()) & (d_cpu == d_gpu.cpu())
    assert same.float().mean() >= 0.9, (s_cpu, s_gpu)
    assert torch.equal(s_cpu[4::5], s_gpu.cpu()[4::5])  # non-finite blocks: status 2 everywhere
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    assert relative_error(P_gpu.cpu()[same], P_cpu[same]) < tol
    F_gpu, F_cpu = ops.unpack(c_gpu.factor.cpu(), N), ops.unpack(c_cpu.factor, N)
    assert relative_error(F_gpu[same], F_cpu[same]) < tol
    assert torch.isfinite(P_gpu).all() and torch.isfinite(c_gpu.factor).all()
    # solve on the GPU (its own kernel) against the CPU's, on the same factor
    S_gpu, S_cpu = ops.solve(c_gpu, G.cuda()).cpu(), ops.solve(c_gpu._replace(factor=c_gpu.factor.cpu()), G)
    assert relative_error(S_gpu, S_cpu) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_cuda_accumulate_probes_matches_cpu(dtype):
    g = torch.Generator().manual_seed(3)
    S, b, N = 2, 6, 11
    hvps = torch.randn(S, b, N, b, dtype=dtype, generator=g)
    hvps[0, 1, 4, 2] = float("inf")
    signs = torch.randint(0, 2, (S, N), generator=g).to(dtype) * 2 - 1
    mask = torch.ones(N, b, dtype=torch.bool)
    mask[-1, -2:] = False
    state = torch.randn(N, b, b, dtype=dtype, generator=g)
    cpu, gpu = state.clone(), state.cuda()
    ok_cpu = ops.accumulate_probes(cpu, hvps, signs, mask, ema=0.8, first=False)
    ok_gpu = ops.accumulate_probes(gpu, hvps.cuda(), signs.cuda(), mask.cuda(), ema=0.8, first=False)
    assert torch.equal(ok_cpu, ok_gpu.cpu())
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_cuda_respects_current_stream():
    H = mixed_blocks(64, 16, torch.float32, seed=0).cuda()
    G = torch.randn(64, 16, device="cuda")
    expected = ops.precondition(H, G)[0]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        P = ops.precondition(H, G)[0]
    stream.synchronize()
    torch.testing.assert_close(P, expected)
