"""CUDA kernels against the CPU kernels on the same inputs (every case skips where no GPU is
present). The full op suites in test_ops.py and test_spectral.py also run on CUDA through their
`device` fixture.

Blocks are compared one by one, each with its own tolerance from the error model of
tests/test_ops.py: a single norm over the whole tensor would hide a large error in a small block.
The helpers here are also used by test_cuda_emulation.py, which runs the same kernels on the host.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import spd_blocks
from hsc import ops
from hsc import reference as ref
from test_ops import (ERROR_CONSTANT, NUMERICALLY_SINGULAR, block_norm, damping_sequence, eps_of,
                      route_condition, scaled_norm, spectrum, start_damping)
from test_spectral import C_EIGEN, C_PRODUCT, C_STEP, eigh_errors, fro, product_scale, step_bound

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present")

MODES = ("cholesky", "singular_safe")

# b <= 32: a warp per block; 32 < b: a thread block per block; f64 at b >= 128 and f32 at b = 256:
# the workspace in global memory (it does not fit in shared memory), for correct's kernels and for
# eigh's.
BLOCK_SIZES = [1, 3, 16, 31, 32, 33, 64, 100, 128, 256]

KINDS = 6  # block k of mixed_blocks is of kind k % KINDS


def mixed_blocks(N: int, b: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Well-conditioned SPD (cond <= 100), Wishart SPD (ill-conditioned at large b), indefinite,
    rank-one, non-symmetric and non-finite blocks side by side (block k of kind k % KINDS)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, b, b, dtype=torch.float64, generator=g)
    H = X @ X.mT / b
    H[0::KINDS] = spd_blocks(len(range(0, N, KINDS)), b, g)
    H[2::KINDS] -= 2 * torch.eye(b, dtype=torch.float64)     # indefinite
    H[3::KINDS] = X[3::KINDS, :, :1] @ X[3::KINDS, :, :1].mT  # rank one
    H[4::KINDS] = X[4::KINDS]                                # not symmetric
    H[5::KINDS, 0, b - 1] = float("nan")
    return H.to(dtype)


# ---- per-block comparison (shared with test_cuda_emulation.py) --------------------------------

def symmetric_part(H: torch.Tensor) -> torch.Tensor:
    """S of every block in float64, 0 for the blocks with a NaN or Inf."""
    finite = torch.isfinite(H).flatten(1).all(dim=1)
    return torch.where(finite[:, None, None], ref.symmetrise(H), 0.0)


def precision_edge(H: torch.Tensor, damping: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    """Per block: whether rounding may decide its factorisation at `damping` (docs/contract.md §2),
    by the margins tests/test_ops.py uses: in mode cholesky, A = S + damping I has its smallest
    eigenvalue within a Cholesky backward error (2 b eps ||S||) of 0, or is positive definite with
    eps cond(A) >= NUMERICALLY_SINGULAR (then the pivots of M = A + mu^2 A^-1 carry its rounding);
    in mode singular_safe, eps cond(A^2 + mu^2 I) >= NUMERICALLY_SINGULAR. Two kernels that sum in
    different orders may decide such a block differently, and no other: a clearly indefinite A
    is rejected by both, a well-conditioned one accepted by both. (Against torch's float32 route,
    another summation order, every decision of the CPU op that differed, about 700 in sweeps of
    ill-conditioned, singular and indefinite blocks with mu from 0.01 to 3, met this.)"""
    b = H.shape[1]
    eps = eps_of(H.dtype)
    finite = torch.isfinite(H).flatten(1).all(dim=1) & torch.isfinite(damping)
    S = symmetric_part(H)
    lam = spectrum(S, torch.where(finite, damping.double(), 0.0))
    ill = eps * route_condition(lam, scale, mode) >= NUMERICALLY_SINGULAR
    if mode == "singular_safe":
        return finite & ill
    lo = lam[:, 0]
    margin = 2 * b * eps * torch.linalg.matrix_norm(S, 2)
    return finite & ((lo.abs() <= margin) | ((lo > margin) & ill))


def decisions_agree(H, damping, scale, mode, cpu, gpu, max_tries=32) -> torch.Tensor:
    """Asserts that the kernels' per-block decisions (damping, status) are the CPU's, except for
    blocks at the edge of the working precision at the smaller of the two dampings (the one the
    kernels decided differently); returns the mask of blocks with the same decision."""
    (d_cpu, s_cpu), (d_gpu, s_gpu) = cpu, gpu
    assert torch.equal(s_gpu == 2, s_cpu == 2), "status 2 (non-finite) is decided exactly"
    assert set(s_gpu.unique().tolist()) <= ({0, 1, 2, 3} if mode == "cholesky" else {0, 2, 3})
    differ = (s_cpu != s_gpu) | (d_cpu != d_gpu)
    if differ.any():
        edge = precision_edge(H, torch.minimum(d_cpu, d_gpu).double(), scale, mode)
        assert edge[differ].all(), \
            f"blocks {(differ & ~edge).nonzero().flatten().tolist()} decided differently away from " \
            f"the edge of the working precision: CPU {s_cpu[differ & ~edge].tolist()} " \
            f"{d_cpu[differ & ~edge].tolist()}, GPU {s_gpu[differ & ~edge].tolist()} " \
            f"{d_gpu[differ & ~edge].tolist()}"
        if mode == "cholesky":  # a damping of the sequence of docs/contract.md §2 all the same
            d0 = start_damping(damping, H.shape[0], H.dtype)
            seq = damping_sequence(d0, ref.tau(symmetric_part(H), ref.compute_dtype(H.dtype)), max_tries)
            eps = eps_of(H.dtype)
            at = ((seq - d_gpu.double()[:, None]).abs() <= 4 * eps * seq).any(dim=1)
            assert at[differ].all(), \
                f"blocks {(differ & ~at).nonzero().flatten().tolist()}: a damping off the sequence"
    return ~differ


def assert_blocks_close(H, G, damping_used, status, scale, mode, got, expected, compared):
    """Per block, where `compared`: `got` and `expected` (both P = M^-1 G, or, with G None, both the
    [N, b, b] blocks of M^-1) differ by at most twice the error bound of tests/test_ops.py, each
    being within it of the float64 reference:
      cholesky:      C sqrt(b) eps cond(A)            ||P_ref||
      singular_safe: C sqrt(b) eps cond(A^2 + mu^2 I) ||G|| / (2 mu)
    at the damping used. For M^-1 the bound on M^-1 g carries over to the Frobenius norm, as
    E ||X g||^2 = ||X||_F^2 for g ~ N(0, I) (for singular_safe: sqrt(b) / (2 mu)). Blocks whose
    bound exceeds 1 say nothing and are not compared; fallback blocks (status 2 and 3) must hold
    the fallback within 1 ulp. Returns the mask of blocks compared against the bound."""
    N, b = H.shape[0], H.shape[1]
    eps = eps_of(H.dtype)
    d = damping_used.double()
    kappa = route_condition(spectrum(symmetric_part(H), torch.where(status == 2, 0.0, d)), scale, mode)
    bound = ERROR_CONSTANT * math.sqrt(b) * eps * kappa
    if G is None:
        target, _, sr = ref.corrected_inverse(H, damping=d, scale=scale, mode=mode, max_tries=1)
        size = (scaled_norm(target) if mode == "cholesky"
                else torch.full((N,), math.sqrt(b) / (2 * scale), dtype=torch.float64))
        fallback = torch.eye(b, dtype=torch.float64).expand(N, b, b) / (1.0 + scale ** 2)
    else:
        target, _, sr = ref.precondition(H, G, damping=d, scale=scale, mode=mode, max_tries=1)
        size = scaled_norm(target) if mode == "cholesky" else block_norm(G) / (2 * scale)
        fallback = G.double() / (1.0 + scale ** 2)
    # Gradual underflow: entries below the smallest normal number carry an absolute error of up
    # to about that number (steps of zero blocks damped by tau).
    underflow = b * torch.finfo(ref.compute_dtype(H.dtype)).tiny
    factorised = status <= 1 if mode == "cholesky" else status == 0
    checked = compared & factorised & (sr == 0) & (bound <= 1)
    err = scaled_norm(got.double() - expected.double()) - underflow
    too_far = checked & (err > 2 * bound * size)
    assert not too_far.any(), \
        f"blocks {too_far.nonzero().flatten().tolist()}: errors " \
        f"{(err / (2 * bound * size))[too_far].tolist()} x twice the bound C sqrt(b) eps cond"
    failed = compared & (status >= 2)
    torch.testing.assert_close(got[failed].double(), fallback[failed],
                               rtol=torch.finfo(got.dtype).eps, atol=0)
    return checked


def assert_fold_close(new: torch.Tensor, expected: torch.Tensor, old: torch.Tensor,
                      estimate: torch.Tensor, ema: float) -> None:
    """The states of two backends after a fold (docs/contract.md §4), entry by entry: copies
    (restart, keep, padding) exactly equal, NaN included; averages ema * old + (1 - ema) * est
    within the rounding of a multiply-add that either backend may fuse: 4 eps (ema |old| +
    (1 - ema) |est|) (a few roundings each, of terms no larger than these)."""
    eps = torch.finfo(new.dtype).eps
    tol = 4 * eps * (ema * old.double().abs() + (1 - ema) * estimate.double().abs())
    tol = torch.nan_to_num(tol, nan=0.0, posinf=0.0)  # non-finite inputs are only ever copied
    same = (new == expected) | (new.isnan() & expected.isnan())
    close = (new.double() - expected.double()).abs() <= tol
    bad = ~(same | close)
    assert not bad.any(), f"entries {bad.nonzero().tolist()[:10]}: {new[bad][:10]} vs {expected[bad][:10]}"


def assert_eigh_matches_cpu(H: torch.Tensor, got: ops.Eigh, cpu: ops.Eigh) -> None:
    """eigh's result from the kernels against the CPU op's, block by block, by the error model of
    tests/test_spectral.py (never raw eigenvector columns, which are not unique): the same status
    (the cases keep clear of the sweep limit), NaN eigenpairs exactly where H is not finite, and
    elsewhere finite (no sentinel left), ascending, orthogonal to C_EIGEN sqrt(b) eps with Rayleigh
    quotients within C_EIGEN sqrt(b) eps ||S||_F of the eigenvalues; for converged blocks the
    eigenvalues and the reconstruction V Lambda V^T within that of the float64 reference, hence the
    eigenvalues within twice that of the CPU's, and the invariant subspaces below each clear gap
    within the Davis-Kahan bound of the CPU's."""
    N, b = H.shape[0], H.shape[1]
    eps = torch.finfo(H.dtype).eps
    assert torch.equal(got.status, cpu.status), f"statuses {got.status.tolist()} vs {cpu.status.tolist()}"
    bad = got.status == 2
    assert torch.equal(bad, ~torch.isfinite(H).flatten(1).all(1))
    assert torch.isnan(got.eigenvalues[bad]).all() and torch.isnan(got.eigenvectors[bad]).all()
    fine = ~bad
    values, vectors = got.eigenvalues[fine], got.eigenvectors[fine]
    assert torch.isfinite(values).all() and torch.isfinite(vectors).all()
    assert (values.diff(dim=1) >= 0).all(), "eigenvalues ascending"
    err = eigh_errors(H[fine], ops.Eigh(values, vectors, got.status[fine]))
    converged = got.status[fine] == 0
    for name in ("orthogonality", "rayleigh"):
        assert (err[name] <= C_EIGEN).all(), f"{name}: {err[name].max().item():.3g} x its scale"
    for name in ("eigenvalues", "reconstruction"):
        assert (err[name][converged] <= C_EIGEN).all(), f"{name}: {err[name].max().item():.3g} x its scale"
    S = ref.symmetrise(H[fine])
    backward = C_EIGEN * math.sqrt(b) * eps * fro(S)
    ok = converged & (cpu.status[fine] == 0)
    gap_cpu = (values.double() - cpu.eigenvalues[fine].double()).abs().amax(1)
    assert (gap_cpu[ok] <= 2 * backward[ok]).all()
    lam = ref.eigh(H[fine]).eigenvalues
    for m in range(1, b):
        gap = lam[:, m] - lam[:, m - 1]
        separated = ok & (gap > 1e3 * backward)
        P, Q = vectors[:, :, :m].double(), cpu.eigenvectors[fine][:, :, :m].double()
        dist = fro(P @ P.mT - Q @ Q.mT)
        assert (dist <= 2 * math.sqrt(2) * backward / (gap - backward))[separated].all()


def assert_spectral_matches_cpu(H, G, status, P, F, expected_P, expected_F, *, scale, mode):
    """The kernels' P (the fused step) and factor F (packed) of a spectral mode against the CPU op's
    (expected_*), per block: converged blocks within the error model of tests/test_spectral.py,
    ||p - p_ref|| <= C_STEP sqrt(b) eps (||S||_F / mu^2 + 1/mu) ||g|| against the float64
    reference, hence within twice that of the CPU's, for P and for the factor applied to G, and
    the factor's spectrum within that (per unit g) of f(eigenvalues of S) (Weyl); blocks of
    status 2 and 3 hold the fallback exactly as the CPU rounds it; lanes past the last block 0."""
    N, b = H.shape[0], H.shape[1]
    eps = torch.finfo(H.dtype).eps
    assert torch.isfinite(P).all() and torch.isfinite(F).all()
    assert (F[-1, :, (N - 1) % ops.TILE + 1:] == 0).all()
    blocks_F, blocks_cpu = ops.unpack(F, N), ops.unpack(expected_F, N)
    failed = status >= 2
    assert torch.equal(P[failed], expected_P[failed]) and torch.equal(blocks_F[failed], blocks_cpu[failed])
    ok = status == 0
    if not ok.any():
        return
    S = ref.symmetrise(H[ok])
    Gm = G[ok].double() if G.dim() == 3 else G[ok].double().unsqueeze(-1)
    P_ref = ref.precondition(H[ok], G[ok], scale=scale, mode=mode)[0].double()
    bound = step_bound(S, G[ok], scale, eps)
    from_factor = (blocks_F[ok].double() @ Gm).reshape(P_ref.shape)
    for name, got in (("precondition", P[ok].double()), ("factor @ G", from_factor)):
        ratio = fro(got - P_ref) / bound
        assert (ratio <= 1).all(), f"{name}: {ratio.max().item():.3g} x the error model"
    assert (fro(P[ok].double() - expected_P[ok].double()) <= 2 * bound).all()
    unit = C_STEP * math.sqrt(b) * eps * (fro(S) / scale ** 2 + 1.0 / scale)
    f_ref = ref.spectral_multiplier(mode, ref.eigh(H[ok]).eigenvalues, scale).sort(dim=1).values
    assert ((torch.linalg.eigvalsh(blocks_F[ok].double()) - f_ref).abs().amax(1) <= unit).all()


def fold_case(N: int, b: int, dtype: torch.dtype, seed: int):
    """(state, estimate, mask) for fold_estimate_: a non-symmetric estimate (a transposed read
    shows), an Inf estimate in a real slot (block 4: rejected, state kept), NaN estimates in a
    padding slot only (block N - 1: accepted), a NaN state (block 7: restarted), a state and an
    estimate both non-finite (block 2: restarted into the non-finite estimate), a NaN state in a
    padding slot (block N - 2: restarted), padding slots in two blocks."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(N, b, b, dtype=dtype, generator=g)
    estimate = torch.randn(N, b, b, dtype=dtype, generator=g)
    mask = torch.ones(N, b, dtype=torch.bool)
    mask[N - 1, -2:] = False
    mask[N - 2, 0] = False
    estimate[4, 1, 2] = float("inf")
    estimate[N - 1, b - 1, 1] = float("nan")
    estimate[N - 1, 0, b - 2] = float("-inf")
    state[7, 0, 0] = float("nan")
    state[2, b - 1, b - 1] = float("inf")
    estimate[2, 0, 1] = float("nan")
    state[N - 2, 0, b - 1] = float("nan")
    return state, estimate, mask


def run_correction(H, G, device, **kw):
    """(P, damping, status) of precondition and the Correction of correct on `device`, back on
    the CPU."""
    P, d, s = (t.cpu() for t in ops.precondition(H.to(device), G.to(device), **kw))
    c = ops.correct(H.to(device), **kw)
    return (P, d, s), ops.Correction(*(t.cpu() for t in c))


# ---- the kernels of correct, correct_ and precondition ----------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("b", BLOCK_SIZES)
def test_cuda_matches_cpu(b, dtype, mode):
    N, scale, damping = 37, 1.0, 1e-4  # three tiles of the factor, the last one partly used
    H = mixed_blocks(N, b, dtype, seed=b)
    G = torch.randn(N, b, 2, dtype=dtype, generator=torch.Generator().manual_seed(1))
    (P_cpu, d_cpu, s_cpu), c_cpu = run_correction(H, G, "cpu", mode=mode)
    (P_gpu, d_gpu, s_gpu), c_gpu = run_correction(H, G, "cuda", mode=mode)
    # Both paths of the GPU run the same factorisation: the same decisions.
    assert torch.equal(c_gpu.status, s_gpu) and torch.equal(c_gpu.damping, d_gpu)
    # Both kernels run the same arithmetic in a different order (parallel reductions on the GPU):
    # decisions may differ only for blocks at the edge of the working precision.
    same = decisions_agree(H, damping, scale, mode, (d_cpu, s_cpu), (d_gpu, s_gpu))
    assert same[0::KINDS].all() and same[5::KINDS].all()  # far from any edge, and non-finite
    assert (s_gpu[5::KINDS] == 2).all()
    assert torch.isfinite(P_gpu).all() and torch.isfinite(c_gpu.factor).all()
    compared = assert_blocks_close(H, G, d_cpu, s_cpu, scale, mode, P_gpu, P_cpu, same)
    F_gpu, F_cpu = ops.unpack(c_gpu.factor, N), ops.unpack(c_cpu.factor, N)
    assert_blocks_close(H, None, d_cpu, s_cpu, scale, mode, F_gpu, F_cpu, same)
    # The well-conditioned blocks are compared against a tight bound in every case: the check
    # cannot become empty.
    assert compared[0::KINDS].all()
    assert (c_gpu.factor[-1, :, N % ops.TILE:] == 0).all()  # lanes past the last block
    # solve on the GPU (its own kernel) against the CPU's, on the same factor: entry by entry
    # within twice the rounding of a length-b dot product, b eps |M^-1| |g| (Higham, 3.5).
    S_gpu = ops.solve(c_gpu._replace(factor=c_gpu.factor.cuda()), G.cuda()).cpu()
    S_cpu = ops.solve(c_gpu, G)
    tol = 2 * b * eps_of(dtype) * (F_gpu.double().abs() @ G.double().abs())
    assert ((S_gpu.double() - S_cpu.double()).abs() <= tol).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b,dtype", [(6, torch.float32), (40, torch.float64)], ids=["warp", "team"])
def test_cuda_bad_damping_entry_takes_fallback(b, dtype, mode):
    """On CUDA a damping tensor is not checked on the host (that would synchronise): a block whose
    damping is negative, NaN or infinite gets status 2 and the fallback, and reports its damping
    as given (docs/contract.md §3); every other block is what the CPU gives it."""
    N, scale = 19, 0.7
    H = mixed_blocks(N, b, dtype, seed=5 * b)
    G = torch.randn(N, b, dtype=dtype, generator=torch.Generator().manual_seed(2))
    damping = torch.full((N,), 1e-3, dtype=dtype)
    bad = torch.tensor([1, 8, 11, 15, 16])  # kinds 1, 2, 5 (a non-finite H too), 3 and 4
    damping[bad] = torch.tensor([-1.0, float("nan"), float("inf"), float("-inf"), -1e-30], dtype=dtype)
    good = torch.ones(N, dtype=torch.bool)
    good[bad] = False
    clean = torch.where(good, damping, 1e-3)  # what the CPU accepts
    (P_cpu, d_cpu, s_cpu), c_cpu = run_correction(H, G, "cpu", damping=clean, scale=scale, mode=mode)
    P_gpu, d_gpu, s_gpu = (t.cpu() for t in ops.precondition(H.cuda(), G.cuda(), damping=damping.cuda(),
                                                             scale=scale, mode=mode))
    c_gpu = ops.Correction(*(t.cpu() for t in ops.correct(H.cuda(), damping=damping.cuda(), scale=scale,
                                                          mode=mode)))
    for G_, d, s, got, expected in ((G, d_gpu, s_gpu, P_gpu, P_cpu),
                                    (None, c_gpu.damping, c_gpu.status, ops.unpack(c_gpu.factor, N),
                                     ops.unpack(c_cpu.factor, N))):
        assert (s[bad] == 2).all()
        torch.testing.assert_close(d[bad], damping[bad], rtol=0, atol=0, equal_nan=True)
        compared = ~good  # the bad blocks: the fallback
        compared[good] = decisions_agree(H[good], clean[good], scale, mode, (d_cpu[good], s_cpu[good]),
                                         (d[good], s[good]))
        assert compared[0::KINDS].all()
        assert_blocks_close(H, G_, d_cpu, torch.where(good, s_cpu, 2), scale, mode, got, expected,
                            compared)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b,dtype", [(5, torch.float32), (40, torch.float64)], ids=["warp", "team"])
def test_cuda_correct_in_place_keep_mask(b, dtype, mode):
    """correct_ with a per-block keep_failed mask (docs/contract.md §5): a failed block (status 2 or
    3) keeps its previous factor where its flag is set and gets the fallback where not; the other
    blocks are refactorised; lanes past the last block are set to 0. Against the CPU op."""
    N, scale = 37, 1.0
    H = mixed_blocks(N, b, dtype, seed=7 * b)
    # damping 0 and a single try: the indefinite blocks fail in mode cholesky
    kw = dict(damping=0.0, scale=scale, mode=mode, max_tries=1)
    gen = torch.Generator().manual_seed(b)
    previous = torch.randn(ops.factor_shape(N, b), dtype=ref.compute_dtype(dtype), generator=gen)
    previous[-1, :, N % ops.TILE:] = float("nan")  # correct_ sets these lanes to 0
    keep = (torch.arange(N) // KINDS) % 2 == 0      # both flags among each kind of block
    F_cpu = previous.clone()
    d_cpu, s_cpu = ops.correct_(F_cpu, H, keep_failed=keep, **kw)[1:]
    F_dev = previous.cuda()
    d_gpu, s_gpu = (t.cpu() for t in ops.correct_(F_dev, H.cuda(), keep_failed=keep.cuda(), **kw)[1:])
    F_gpu = F_dev.cpu()
    assert (F_gpu[-1, :, N % ops.TILE:] == 0).all()
    same = decisions_agree(H, 0.0, scale, mode, (d_cpu, s_cpu), (d_gpu, s_gpu), max_tries=1)
    blocks_gpu, blocks_prev = ops.unpack(F_gpu, N), ops.unpack(previous, N)
    # The GPU's own status says what its factor holds, for every block.
    kept = (s_gpu >= 2) & keep
    assert torch.equal(blocks_gpu[kept], blocks_prev[kept])
    assert kept.any() and ((s_cpu >= 2) & ~keep).any()  # both sides of the mask are exercised
    fallback = torch.eye(b, dtype=F_gpu.dtype) / (1.0 + scale ** 2)
    replaced = (s_gpu >= 2) & ~keep
    torch.testing.assert_close(blocks_gpu[replaced], fallback.expand(int(replaced.sum()), b, b),
                               rtol=torch.finfo(F_gpu.dtype).eps, atol=0)
    assert torch.isfinite(blocks_gpu[s_gpu <= 1]).all()
    assert_blocks_close(H, None, d_cpu, s_cpu, scale, mode, blocks_gpu, ops.unpack(F_cpu, N),
                        same & ~kept)


# ---- eigh, correct_from_eigh_ and the spectral modes -------------------------------------------

EIGH_MODES = ops.EIGH_MODES


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("b", BLOCK_SIZES)
def test_cuda_eigh_matches_cpu(b, dtype):
    """eigh's kernels (b <= 32: a warp per block in registers; larger b: a thread block per block,
    in shared memory or, at b = 128 in float64 and b = 256, in global scratch) against the CPU op
    on mixed_blocks, block by block by the error model of tests/test_spectral.py (assert_eigh_matches_cpu);
    the rotation orders differ, the statuses do not (the default sweep limit is far from both)."""
    N = 37
    H = mixed_blocks(N, b, dtype, seed=100 + b)
    gpu = ops.Eigh(*(t.cpu() for t in ops.eigh(H.cuda())))
    cpu = ops.eigh(H)
    assert_eigh_matches_cpu(H, gpu, cpu)
    assert (gpu.status[5::KINDS] == 2).all() and (gpu.status[0::KINDS] == 0).all()


@pytest.mark.parametrize("mode", EIGH_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("b", BLOCK_SIZES)
def test_cuda_spectral_modes_match_cpu(b, dtype, mode):
    """precondition, correct and correct_ in a spectral mode on CUDA (eigh's kernels, then the
    fused step or the factor) against the CPU ops, per block (assert_spectral_matches_cpu): the
    same statuses, damping 0, steps and factors within the error model, the fallback exactly as
    the CPU rounds it; correct_ into a used buffer writes what correct returns; solve on the
    factor agrees with the fused step within the rounding of the last products."""
    N, scale = 37, 0.7
    H = mixed_blocks(N, b, dtype, seed=200 + b)
    G = torch.randn(N, b, 2, dtype=dtype, generator=torch.Generator().manual_seed(b))
    P, d, s = (t.cpu() for t in ops.precondition(H.cuda(), G.cuda(), scale=scale, mode=mode))
    c = ops.correct(H.cuda(), scale=scale, mode=mode)
    buffer = torch.full_like(c.factor, 3.0)
    d2, s2 = (t.cpu() for t in ops.correct_(buffer, H.cuda(), scale=scale, mode=mode)[1:])
    P_cpu, d_cpu, s_cpu = ops.precondition(H, G, scale=scale, mode=mode)
    c_cpu = ops.correct(H, scale=scale, mode=mode)
    for status, damping in ((s, d), (c.status.cpu(), c.damping.cpu()), (s2, d2)):
        assert torch.equal(status, s_cpu) and (damping == 0).all() and damping.dtype == dtype
    assert torch.equal(buffer, c.factor)
    assert (s[5::KINDS] == 2).all() and (s[0::KINDS] == 0).all()
    assert_spectral_matches_cpu(H, G, s, P, c.factor.cpu(), P_cpu, c_cpu.factor, scale=scale, mode=mode)
    ok = s == 0
    e = ops.Eigh(*(t.cpu() for t in ops.eigh(H.cuda())))
    unit = b * eps_of(dtype) * product_scale(ops.Eigh(*(t[ok] for t in e)), mode, scale)
    solved = ops.solve(c, G.cuda()).cpu()
    assert ((solved[ok].double() - P[ok].double()).abs() <= C_PRODUCT * unit @ G[ok].double().abs()).all()


@pytest.mark.parametrize("b,dtype", [(2, torch.float64), (8, torch.float32), (40, torch.float64)],
                         ids=["warp4", "warp8", "team"])
def test_cuda_eigh_sweep_limit(b, dtype):
    """max_sweeps = 1 and 2 on Gaussian blocks (b >= 3 needs more than 2 sweeps in any order; b = 2
    exactly 2; diagonal blocks 1): status 3 with the last iterate, as on the CPU; the spectral
    modes give those blocks the fallback. At b = 40 the CPU takes its tridiagonal route, where
    max_sweeps bounds each eigenvalue's QL iterations: every Gaussian block there needs more than
    2 for some eigenvalue (measured: status 3 on all of them at 1, 2 and 3), so the statuses agree."""
    N = 21
    g = torch.Generator().manual_seed(b)
    H = torch.randn(N, b, b, dtype=torch.float64, generator=g)
    H[::4] = torch.diag_embed(torch.randn(len(range(0, N, 4)), b, dtype=torch.float64, generator=g))
    H[1, 0, 0] = float("nan")
    H = H.to(dtype)
    G = torch.randn(N, b, dtype=dtype, generator=g)
    for max_sweeps in (1, 2):
        gpu = ops.Eigh(*(t.cpu() for t in ops.eigh(H.cuda(), max_sweeps=max_sweeps)))
        assert_eigh_matches_cpu(H, gpu, ops.eigh(H, max_sweeps=max_sweeps))
        assert (gpu.status[::4] == 0).all() and gpu.status[1] == 2
        assert (gpu.status == 3).any() == (b > 2 or max_sweeps == 1)
        mode = "saddle_free"
        P, _, s = (t.cpu() for t in ops.precondition(H.cuda(), G.cuda(), scale=0.5, mode=mode,
                                                     max_sweeps=max_sweeps))
        F = ops.correct(H.cuda(), scale=0.5, mode=mode, max_sweeps=max_sweeps).factor.cpu()
        P_cpu, _, s_cpu = ops.precondition(H, G, scale=0.5, mode=mode, max_sweeps=max_sweeps)
        assert torch.equal(s, gpu.status) and torch.equal(s_cpu, s)
        assert_spectral_matches_cpu(H, G, s, P, F, P_cpu,
                                    ops.correct(H, scale=0.5, mode=mode, max_sweeps=max_sweeps).factor,
                                    scale=0.5, mode=mode)


@pytest.mark.parametrize("mode", EIGH_MODES)
@pytest.mark.parametrize("b,dtype", [(5, torch.float32), (40, torch.float64)], ids=["b5", "b40"])
def test_cuda_correct_from_eigh_matches_cpu(b, dtype, mode):
    """correct_from_eigh_ on CUDA from the CPU's eigen-decomposition (the same input to both) into
    a used buffer with a keep_failed mask (statuses 0, 2, 3), M^-1 and M^-1/2 where the mode
    allows: entry by entry within the rounding of the last product (C_PRODUCT b eps |V| |f|^power
    |V|^T), failed blocks kept or given the fallback exactly as the CPU, lanes past the last block
    0."""
    N, scale = 37, 0.4
    H = mixed_blocks(N, b, dtype, seed=300 + b)
    e = ops.eigh(H)
    status = e.status.clone()
    status[torch.arange(N) % 7 == 3] = 3  # as for a block that did not converge: its last iterate
    e = e._replace(status=status)
    keep = torch.arange(N) % 2 == 1
    failed, ok = status >= 2, status == 0
    assert (failed & keep).any() and (failed & ~keep).any()
    V = e.eigenvectors[ok].double()
    f = ref.spectral_multiplier(mode, e.eigenvalues[ok].double(), scale).abs()
    for power in (1.0, 0.5) if mode != "spectral" else (1.0,):
        gen = torch.Generator().manual_seed(b)
        previous = torch.randn(ops.factor_shape(N, b), dtype=dtype, generator=gen)
        previous[-1, :, N % ops.TILE:] = float("nan")
        F_cpu = previous.clone()
        ops.correct_from_eigh_(F_cpu, e, scale=scale, mode=mode, keep_failed=keep, power=power)
        F_dev = previous.cuda()
        got = ops.correct_from_eigh_(F_dev, ops.Eigh(*(t.cuda() for t in e)), scale=scale, mode=mode,
                                     keep_failed=keep.cuda(), power=power)
        assert got.factor is F_dev and (got.damping == 0).all() and torch.equal(got.status.cpu(), status)
        F_gpu = F_dev.cpu()
        assert (F_gpu[-1, :, N % ops.TILE:] == 0).all()
        blocks, blocks_cpu = ops.unpack(F_gpu, N), ops.unpack(F_cpu, N)
        assert torch.equal(blocks[failed & keep], ops.unpack(previous, N)[failed & keep])
        assert torch.equal(blocks[failed], blocks_cpu[failed])
        unit = b * eps_of(dtype) * (V.abs() * f[:, None, :] ** power) @ V.abs().mT
        assert ((blocks[ok].double() - blocks_cpu[ok].double()).abs() <= C_PRODUCT * unit).all()


# ---- the estimate ------------------------------------------------------------------------------

@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_cuda_accumulate_probes_matches_cpu(dtype, first):
    g = torch.Generator().manual_seed(3)
    S, b, N = 2, 6, 11
    hvps = torch.randn(S, b, N, b, dtype=dtype, generator=g)
    hvps[0, 1, 4, 2] = float("inf")
    signs = torch.randint(0, 2, (S, N), generator=g).to(dtype) * 2 - 1
    mask = torch.ones(N, b, dtype=torch.bool)
    mask[-1, -2:] = False
    state = torch.randn(N, b, b, dtype=dtype, generator=g)
    state[7, 0, 0] = float("nan")
    cpu, gpu = state.clone(), state.cuda()
    ok_cpu = ops.accumulate_probes(cpu, hvps, signs, mask, ema=0.8, first=first)
    ok_gpu = ops.accumulate_probes(gpu, hvps.cuda(), signs.cuda(), mask.cuda(), ema=0.8, first=first)
    assert torch.equal(ok_cpu, ok_gpu.cpu()) and not ok_cpu[4]
    torch.testing.assert_close(gpu.cpu(), cpu, equal_nan=True)


@pytest.mark.parametrize("b", [6, 17])  # 17: b^2 > 256 threads, each thread folds several entries
@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_cuda_fold_estimate_matches_cpu(dtype, first, b):
    """fold_estimate_ on CUDA against the CPU op (docs/contract.md §4): the same accepted flags,
    the same copies, averages within rounding."""
    N, ema = 11, 0.8
    state, estimate, mask = fold_case(N, b, dtype, seed=b)
    cpu, gpu = state.clone(), state.cuda()
    ok_cpu = ops.fold_estimate_(cpu, estimate, mask, ema=ema, first=first)
    ok_gpu = ops.fold_estimate_(gpu, estimate.cuda(), mask.cuda(), ema=ema, first=first).cpu()
    assert torch.equal(ok_gpu, ok_cpu) and not ok_cpu[4] and not ok_cpu[2] and ok_cpu[N - 1]
    assert_fold_close(gpu.cpu(), cpu, state, estimate, ema)


# ---- streams -----------------------------------------------------------------------------------

def op_inputs(N: int, b: int, seed: int, device: str) -> dict:
    """Inputs of every op, float32, on `device`."""
    g = torch.Generator().manual_seed(seed)
    H = mixed_blocks(N, b, torch.float32, seed)
    S = 2
    x = dict(H=H, G=torch.randn(N, b, 2, generator=g),
             damping=torch.rand(N, generator=g) * 1e-3,
             factor=torch.randn(ops.factor_shape(N, b), generator=g),
             keep=torch.rand(N, generator=g) < 0.5,
             state=torch.randn(N, b, b, generator=g),
             hvps=torch.randn(S, b, N, b, generator=g),
             signs=torch.randint(0, 2, (S, N), generator=g).float() * 2 - 1,
             mask=torch.rand(N, b, generator=g) < 0.9,
             estimate=torch.randn(N, b, b, generator=g))
    return {k: v.to(device) for k, v in x.items()}


def all_ops(x: dict) -> list:
    """Every op once, on the current stream (the in-place ones on copies of their inputs)."""
    out = list(ops.precondition(x["H"], x["G"], damping=x["damping"]))
    c = ops.correct(x["H"], damping=x["damping"])
    out += list(c) + [ops.solve(c, x["G"])]
    factor = x["factor"].clone()
    out += [factor, *ops.correct_(factor, x["H"], damping=x["damping"], keep_failed=x["keep"])[1:]]
    state = x["state"].clone()
    out += [ops.accumulate_probes(state, x["hvps"], x["signs"], x["mask"], ema=0.8, first=False), state]
    state = x["state"].clone()
    out += [ops.fold_estimate_(state, x["estimate"], x["mask"], ema=0.8, first=False), state]
    e = ops.eigh(x["H"])
    out += list(e)
    factor = x["factor"].clone()
    out += [ops.correct_from_eigh_(factor, e, scale=0.5, mode="saddle_free", keep_failed=x["keep"]).factor]
    for mode in ops.EIGH_MODES:
        out += list(ops.precondition(x["H"], x["G"], scale=0.5, mode=mode))
        out += list(ops.correct(x["H"], scale=0.5, mode=mode))
    factor = x["factor"].clone()
    out += [factor, *ops.correct_(factor, x["H"], scale=0.5, mode="spectral", keep_failed=x["keep"],
                                  max_sweeps=2)[1:]]
    return out


def assert_identical(got: list, expected: list) -> None:
    # The same kernels on the same inputs: the same bits.
    assert len(got) == len(expected)
    for i, (a, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"result {i}: {m}")


@pytest.mark.parametrize("b", [16, 40])  # warp kernel, team kernel
def test_cuda_ops_run_on_current_stream(b):
    """Each op's kernels wait for the work queued before them on the current stream: a side
    stream is held back (torch.cuda._sleep) before its inputs are written, and a kernel launched
    on any other stream would run at once on the NaN placeholders left there (the streams torch
    creates do not synchronise with the default one)."""
    x = op_inputs(37, b, seed=2, device="cuda")
    expected = all_ops(x)
    late = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else ~v for k, v in x.items()}
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(1 << 28)  # ~0.1 s at 2-3 GHz: far longer than launching every op takes
        for k in late:
            late[k].copy_(x[k])
        got = all_ops(late)
    torch.cuda.current_stream().wait_stream(side)
    assert_identical(got, expected)


@pytest.mark.parametrize("b", [16, 40])  # warp kernel, team kernel
def test_cuda_ops_capture_in_graph(b):
    """A CUDA graph records only the work launched on the capturing stream (a side stream): a
    kernel launched on the legacy default stream during capture is an error, and one launched on
    any other stream runs once at capture time and is missing from the replays, which would then
    return the results of the inputs at capture, not of those at replay."""
    static = op_inputs(37, b, seed=3, device="cuda")
    fresh = op_inputs(37, b, seed=4, device="cuda")
    warm = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graph asks
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        all_ops(static)
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = all_ops(static)
    for k in static:
        static[k].copy_(fresh[k])
    graph.replay()
    torch.cuda.synchronize()
    assert_identical(captured, all_ops(fresh))
