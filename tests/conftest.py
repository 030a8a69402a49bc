"""Shared helpers for the hsc tests: devices, random block generators and NaN/Inf injection.

Every generator builds its blocks in float64 from a torch.Generator, so a failing case is
reproduced by its seed; callers cast to the dtype under test.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# deadline=None: the first call of a case pays for LAPACK/thread start-up, which says nothing
# about the ops. The example counts are set per test to keep the suite within its time budget.
# Under CI the examples are derandomised, so a run there is reproducible; locally they vary.
settings.register_profile("hsc", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          derandomize=bool(os.environ.get("CI")))
settings.load_profile("hsc")

GPU_PRESENT = torch.cuda.is_available()

# CUDA cases stay in every device-parametrised test and are reported as skipped without a GPU.
devices = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda",
                 marks=pytest.mark.skipif(not GPU_PRESENT, reason="no GPU present")),
]


@pytest.fixture(params=devices, scope="session")
def device(request) -> str:
    # Session scope: hypothesis refuses function-scoped fixtures inside @given tests.
    return request.param


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def rotations(N: int, b: int, gen: torch.Generator) -> torch.Tensor:
    """N random orthogonal b x b matrices (Q of the QR of a Gaussian matrix), float64."""
    Q, _ = torch.linalg.qr(torch.randn(N, b, b, dtype=torch.float64, generator=gen))
    return Q


def blocks_with_spectrum(lam: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Symmetric blocks Q diag(lam) Q^T with random rotations Q; lam is [N, b]."""
    Q = rotations(lam.shape[0], lam.shape[1], gen)
    return (Q * lam[:, None, :]) @ Q.mT


def log_uniform(N: int, b: int, gen: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    u = torch.rand(N, b, dtype=torch.float64, generator=gen)
    return lo * (hi / lo) ** u


def spd_blocks(N: int, b: int, gen: torch.Generator, lo: float = 0.1, hi: float = 10.0):
    """Symmetric positive definite blocks, eigenvalues log-uniform in [lo, hi] (cond <= hi/lo)."""
    return blocks_with_spectrum(log_uniform(N, b, gen, lo, hi), gen)


def psd_singular_blocks(N: int, b: int, gen: torch.Generator) -> torch.Tensor:
    """Positive semi-definite blocks of rank floor(b/2): half the eigenvalues are exactly 0."""
    lam = log_uniform(N, b, gen, 0.1, 10.0)
    lam[:, b // 2:] = 0.0
    return blocks_with_spectrum(lam, gen)


def indefinite_blocks(N: int, b: int, gen: torch.Generator) -> torch.Tensor:
    """Symmetric blocks with |eigenvalues| in [0.1, 10] and random signs, at least one negative."""
    lam = log_uniform(N, b, gen, 0.1, 10.0)
    sign = torch.where(torch.rand(N, b, generator=gen) < 0.5, -1.0, 1.0).double()
    sign[:, 0] = -1.0
    return blocks_with_spectrum(lam * sign, gen)


def ill_conditioned_blocks(N: int, b: int, cond: float, gen: torch.Generator, top: float = 1.0):
    """SPD blocks with eigenvalues log-spaced from `top` down to `top / cond`."""
    lam = top * torch.logspace(0.0, -math.log10(cond), b, dtype=torch.float64)
    return blocks_with_spectrum(lam.expand(N, b).clone(), gen)


def nonsymmetric_blocks(N: int, b: int, gen: torch.Generator) -> torch.Tensor:
    """SPD blocks plus an antisymmetric part of the same size: (H + H^T)/2 is the SPD block."""
    K = torch.randn(N, b, b, dtype=torch.float64, generator=gen)
    return spd_blocks(N, b, gen) + (K - K.mT)


BLOCK_FAMILIES = {
    "spd": spd_blocks,
    "psd_singular": psd_singular_blocks,
    "indefinite": indefinite_blocks,
    "nonsymmetric": nonsymmetric_blocks,
}


def inject_nonfinite(H: torch.Tensor, bad: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A copy of H where each block with bad[k] has one entry (random place, upper or lower
    triangle or diagonal) replaced by NaN, +Inf or -Inf."""
    H = H.clone()
    b = H.shape[-1]
    values = (float("nan"), float("inf"), float("-inf"))
    for k in bad.nonzero().flatten().tolist():
        i, j, v = torch.randint(0, b, (2,), generator=gen).tolist() + \
            torch.randint(0, 3, (1,), generator=gen).tolist()
        H[k, i, j] = values[v]
    return H


class FakeClock:
    """Stands in for the ``time`` module of a module under test (monkeypatch its ``time``): its
    perf_counter reads a clock that moves only when the test advances it, so that budget logic is
    checked without depending on how fast the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
