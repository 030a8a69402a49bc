"""The hsc ops (correct, solve, precondition) against hsc.reference and the contract of docs/contract.md §2-3.

The op is always compared with the float64 reference AT THE DAMPING THE OP REPORTS (docs/contract.md §2:
float32 and float64 may stop at neighbouring values of the retry sequence); the retry logic
itself is checked separately against the sequence d_0 = delta, d_{i+1} = max(2 d_i, tau).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (BLOCK_FAMILIES, GPU_PRESENT, generator, ill_conditioned_blocks,
                      indefinite_blocks, inject_nonfinite, log_uniform, psd_singular_blocks,
                      rotations, spd_blocks)
from hsc import ops
from hsc import reference as ref

MODES = ("cholesky", "singular_safe")
FLOATS = (torch.float32, torch.float64)
BLOCK_SIZES = (1, 2, 3, 7, 8, 16, 31, 32, 33, 64, 128, 256)

# ---- Error model ------------------------------------------------------------------------------
# Measured per block against the float64 reference at the op's damping (sweeps over b = 1..256,
# eigenvalues spread up to 1e8, mu = 0.1..10, ~1e5 blocks, both dtypes and both paths):
#   cholesky:      ||P - P_ref|| <= C sqrt(b) eps cond(A)              ||P_ref||
#   singular_safe: ||P - P_ref|| <= C sqrt(b) eps cond(A^2 + mu^2 I)   ||G|| / (2 mu)
# with A = S + delta_k I at the reported damping and eps = finfo(compute dtype).eps. The largest
# ratio err / (sqrt(b) eps cond) seen was 2.8 at cond < 100 (b = 1: a handful of roundings) and
# 0.71 at cond >= 100, so C = 8 leaves a margin of ~3 where rounding dominates and >= 10 where
# conditioning does. sqrt(b): rounding errors of length-b inner products grow like sqrt(b) u
# (Higham & Mary 2019).
# Why not cond(M): the cholesky route forms A^{-1} explicitly, and the problem itself is
# ill-conditioned in A where M is not: float32 H = [[396.15048, -489.09637], [-489.09637,
# 603.84949]] (lambda = 2e-6, 1e3), mu = 0.1: cond(M) = 5, relative error 17.
# singular_safe forms A^2, hence cond(A^2 + mu^2 I), measured against the largest possible step
# ||G||/(2 mu) because P vanishes on A's null space.
# Where C sqrt(b) eps cond > 1 the bound allows a 100 % error and says nothing; such blocks
# (cond >~ 1e6 / sqrt(b) in float32) are only required to be finite.
ERROR_CONSTANT = 8.0

# The accuracy targets: relative error 1e-4 (float32) and 1e-10 (float64) on
# well-conditioned blocks. float64 meets 1e-10 up to cond 1e4 (largest error seen 2.1e-12), but
# float32 cannot meet 1e-4 at cond 1e4 (eps * 1e4 = 1.2e-3; 8.4e-4 was measured at cond(A) = 1e4),
# so its tier stops at cond 1e2, where the largest error seen was 5.4e-6. (singular_safe: error
# relative to ||G|| / (2 mu), as in the bound.)
TIGHT = {torch.float32: (1e2, 1e-4), torch.float64: (1e4, 1e-10)}

# A factorisation may fail only when its matrix is within an order of magnitude of singular in
# the working precision (eps * cond >= 0.1); observed failures start at eps * cond ~ 6.
NUMERICALLY_SINGULAR = 0.1


# ---- helpers ----------------------------------------------------------------------------------

def eps_of(dtype: torch.dtype) -> float:
    return torch.finfo(ref.compute_dtype(dtype)).eps


def block_norm(x: torch.Tensor) -> torch.Tensor:
    return x.double().flatten(1).norm(dim=1)


def scaled_norm(x: torch.Tensor) -> torch.Tensor:
    """block_norm without underflow: a zero block damped by tau = the smallest normal number
    gives steps near 1e-308, whose squares would vanish."""
    x = x.double().flatten(1)
    s = x.abs().amax(dim=1)
    s = torch.where(s > 0, s, 1.0)
    return s * block_norm(x / s[:, None])


def start_damping(damping, N: int, dtype: torch.dtype) -> torch.Tensor:
    """d_0 per block as the op sees it: a float becomes a tensor of H's dtype, and every damping
    is rounded to the compute dtype (float64 values, for comparisons)."""
    d = damping if isinstance(damping, torch.Tensor) else torch.full((N,), float(damping),
                                                                     dtype=dtype)
    return d.to(ref.compute_dtype(dtype)).double()


def damping_sequence(d0: torch.Tensor, tau: torch.Tensor, length: int) -> torch.Tensor:
    """[N, length]: d_0 = delta, d_{i+1} = max(2 d_i, tau) (docs/contract.md §2), in float64."""
    seq = [d0]
    for _ in range(length - 1):
        seq.append(torch.maximum(2 * seq[-1], tau))
    return torch.stack(seq, dim=1)


def symmetric_part(H: torch.Tensor) -> torch.Tensor:
    """S = (H + H^T)/2 in float64, computed here and not by hsc.reference, so that the reference's
    own symmetrisation is under test as well."""
    H = H.double()
    return 0.5 * H + 0.5 * H.mT


def spectrum(S: torch.Tensor, damping: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of A = S + damping I, float64."""
    eye = torch.eye(S.shape[-1], dtype=torch.float64)
    return torch.linalg.eigvalsh(S + damping.double()[:, None, None] * eye)


def multiplier(lam: torch.Tensor, scale: float) -> torch.Tensor:
    """The step multiplier lambda / (lambda^2 + mu^2) of docs/contract.md §2 on an eigenvalue of A:
    M^{-1} in both modes (mode cholesky: M = A + mu^2 A^{-1} has eigenvalues lambda + mu^2 / lambda)."""
    return lam / (lam ** 2 + scale ** 2)


def eigen_step(S: torch.Tensor, damping: torch.Tensor, G: torch.Tensor, scale: float):
    """P = Q diag(lambda / (lambda^2 + mu^2)) Q^T G from the eigendecomposition of A = S + damping I
    in float64: a second route to the step, sharing nothing with the reference's Cholesky route or
    with the op. Returns (P, ascending eigenvalues of A)."""
    eye = torch.eye(S.shape[-1], dtype=torch.float64)
    lam, Q = torch.linalg.eigh(S + damping.double()[:, None, None] * eye)
    Gm = G.double().unsqueeze(-1) if G.dim() == 2 else G.double()
    P = Q @ (multiplier(lam, scale)[..., None] * (Q.mT @ Gm))
    return P.reshape(G.shape), lam


def route_condition(lam: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    """The condition number the error of each route follows (see the error model above)."""
    if mode == "cholesky":
        kappa = lam[:, -1] / lam[:, 0]
        return torch.where(lam[:, 0] > 0, kappa, torch.inf)
    c = lam ** 2 + scale ** 2
    return c.amax(dim=1) / c.amin(dim=1)


def fallback(G: torch.Tensor, scale: float) -> torch.Tensor:
    """docs/contract.md §3, status 2 and 3: p = g / (1 + mu^2)."""
    return G / (1.0 + scale ** 2)


def assert_fallback(P: torch.Tensor, G: torch.Tensor, scale: float) -> None:
    # 1 ulp: the op divides by (1 + mu^2) rounded to the compute dtype, torch by its own rounding.
    torch.testing.assert_close(P, fallback(G, scale), rtol=torch.finfo(P.dtype).eps, atol=0)


def to_device(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else x


def run_ops(H, G, device, **kwargs):
    """precondition, and correct followed by solve, on `device`; every result back on the CPU."""
    kw = {k: to_device(v, device) for k, v in kwargs.items()}
    P, d, s = ops.precondition(H.to(device), G.to(device), **kw)
    corr = ops.correct(H.to(device), **kw)
    P2 = ops.solve(corr, G.to(device))
    corr = ops.Correction(*(t.cpu() for t in corr))
    return P.cpu(), d.cpu(), s.cpu(), corr, P2.cpu()


def check_against_reference(H, G, *, device="cpu", damping=1e-4, scale=1.0, mode="cholesky",
                            max_tries=32):
    """Runs both paths of the op on (H, G) and checks every block against docs/contract.md §2-3, the
    reference and eigen_step. Returns (P, damping, status) of precondition, on the CPU."""
    assert H.dtype in FLOATS and G.dtype == H.dtype, "half precision is tested against float32"
    N, b = H.shape[0], H.shape[1]
    eps = eps_of(H.dtype)
    P, d, s, corr, P2 = run_ops(H, G, device, damping=damping, scale=scale, mode=mode,
                                max_tries=max_tries)
    assert P.shape == G.shape and P.dtype == G.dtype and P2.dtype == G.dtype
    assert d.shape == s.shape == (N,) and d.dtype == H.dtype and s.dtype == torch.int32
    assert corr.factor.shape == ops.factor_shape(N, b)
    # The fused and the two-step path take the same per-block decisions.
    assert torch.equal(corr.damping, d) and torch.equal(corr.status, s)
    if N == 0:
        return P, d, s

    finite = torch.isfinite(H).flatten(1).all(dim=1)
    S = torch.where(finite[:, None, None], symmetric_part(H), 0.0)
    d0, dd = start_damping(damping, N, H.dtype), d.double()
    P_eig, lam = eigen_step(S, dd, G, scale)
    kappa = route_condition(lam, scale, mode)

    # Status codes (docs/contract.md §3) and the damping each one reports (hsc.ops.Correction).
    assert torch.equal(s == 2, ~finite), "status 2 exactly on the blocks with a NaN or Inf"
    assert set(s.unique().tolist()) <= ({0, 1, 2, 3} if mode == "cholesky" else {0, 2, 3})
    keeps_input = (s == 0) | (s == 2) if mode == "cholesky" else torch.ones_like(finite)
    assert torch.equal(dd[keeps_input], d0[keeps_input])
    if mode == "cholesky":
        seq = damping_sequence(d0, ref.tau(S, ref.compute_dtype(H.dtype)), max_tries)
        at = (seq - dd[:, None]).abs() <= 4 * eps * seq  # tau is rounded to the compute dtype
        assert at.any(dim=1)[finite].all(), "every reported damping is a value of the sequence"
        index = at.to(torch.int8).argmax(dim=1)
        assert (s[index > 0] != 0).all() and (s[index == 0] != 1).all()  # 1 = raised
        # Near the boundary of definiteness rounding decides: the accepted damping must
        # factorise up to a Cholesky backward error (~(b+1) u ||S||), the one before it not.
        margin = 2 * b * eps * torch.linalg.matrix_norm(S, 2)
        # A's pivot floor b eps max_j A_jj (docs/contract.md §2): a pivot is at least lambda_min,
        # so a damping is refused for the floor only where lambda_min(A) is at most about it.
        diagonal_max = S.diagonal(dim1=-2, dim2=-1).amax(-1)
        ok = s <= 1
        assert (lam[ok, 0] > -margin[ok]).all(), "accepted a damping that cannot factorise"
        raised = (s == 1).nonzero().flatten()
        previous = seq[raised, index[raised] - 1]
        spectrum_prev = spectrum(S[raised], previous)
        lam_prev, top_prev = spectrum_prev[:, 0], spectrum_prev[:, -1]
        # The damping is also raised where A factorises but rounding destroys M = A + mu^2 A^-1
        # (a pivot of M below mu, csrc/block_math.h): only where the error of mu^2 A^-1, about
        # mu^2 b eps ||A|| / lambda_min^2, is no longer small against mu (generous factor 1e-3),
        # or where mu^2 / lambda_min overflows the dtype.
        big = torch.finfo(ref.compute_dtype(H.dtype)).max
        destroyed = ((scale ** 2 * b * eps * top_prev >= 1e-3 * scale * lam_prev ** 2)
                     | (scale ** 2 >= 0.5 * big * lam_prev))
        floor_prev = 2 * b * eps * (S[raised].diagonal(dim1=-2, dim2=-1).amax(-1) + previous)
        assert ((lam_prev <= torch.maximum(margin[raised], floor_prev)) | destroyed).all(), \
            "skipped a damping that factorises"
        # Status 3 after the whole budget (docs/contract.md §3). The op also stops when the second
        # factorisation (of M = A + mu^2 A^{-1}) fails, which it does when A is singular to
        # working precision or mu^2 / lambda_min(A) overflows: the known issues at the end.
        failed_early = (s == 3) & (index < max_tries - 1)
        m_overflows = scale ** 2 / lam[:, 0] >= torch.finfo(ref.compute_dtype(H.dtype)).max / 4
        numerically_singular = eps * kappa >= NUMERICALLY_SINGULAR
        assert (numerically_singular | m_overflows)[failed_early].all()
    else:
        assert (eps * kappa[s == 3] >= NUMERICALLY_SINGULAR).all()

    # Blocks the op could not factorise get the fallback (docs/contract.md §3), in both paths.
    bad = s >= 2
    assert_fallback(P[bad], G[bad], scale)
    assert_fallback(P2[bad], G[bad], scale)
    fb = torch.eye(b, dtype=corr.factor.dtype) / (1.0 + scale ** 2)
    torch.testing.assert_close(ops.unpack(corr.factor, N)[bad], fb.expand(int(bad.sum()), b, b),
                               rtol=torch.finfo(corr.factor.dtype).eps, atol=0)
    assert torch.isfinite(P).all() and torch.isfinite(P2).all()

    # Accuracy. Every block the op factorised is compared, at the damping the op reports, with
    # the reference and with a second route, A's eigendecomposition (eigen_step), so that a bug
    # the reference shares with the op cannot hide.
    Pr, _, sr = ref.precondition(H, G, damping=dd, scale=scale, mode=mode, max_tries=1)
    factorised = s <= 1
    # The float64 reference may fail at a damping the op accepted only where its own rules are
    # decided by float64 rounding: A within a float64 Cholesky backward error of singular, M
    # destroyed by the float64 rounding of mu^2 A^{-1} (the criterion above, at the reported
    # damping), or the route's matrix singular to float64 precision. Any other failure is a
    # disagreement between the op and the reference, not a block to leave out.
    eps64 = torch.finfo(torch.float64).eps
    if mode == "cholesky":
        margin64 = margin * (eps64 / eps)
        big64 = torch.finfo(torch.float64).max
        lam_min, top = lam[:, 0], lam[:, -1]
        # ... and A's pivot floor, which the reference applies with the op's eps: near it the
        # float64 pivots and the op's decide differently
        explained = ((lam_min <= margin64) | (scale ** 2 >= 0.5 * big64 * lam_min)
                     | (scale ** 2 * b * eps64 * top >= 1e-3 * scale * lam_min ** 2)
                     | (lam_min <= 2 * b * eps * (diagonal_max + dd)))
    else:
        explained = eps64 * kappa >= NUMERICALLY_SINGULAR
    dropped = factorised & (sr != 0)
    assert (explained | ~dropped).all(), \
        f"the reference fails at the op's damping without a reason, blocks " \
        f"{(dropped & ~explained).nonzero().flatten().tolist()[:10]} (reference status " \
        f"{sr[dropped & ~explained].unique().tolist()})"
    valid = factorised & (sr == 0)
    bound = ERROR_CONSTANT * math.sqrt(b) * eps * kappa
    # The eigen route is a float64 computation of the same step, with its own error of the same
    # model in float64: the op may differ from it by the sum of the two bounds.
    bound_eig = bound + ERROR_CONSTANT * math.sqrt(b) * eps64 * kappa
    informative = valid & (bound <= 1)
    informative_eig = factorised & (bound_eig <= 1)
    cond_max, tol = TIGHT[H.dtype]
    tight = valid & (kappa <= cond_max)
    # singular_safe: relative to the largest step ||G|| / (2 mu), as P_ref vanishes on the null
    # space of A.
    size = scaled_norm(Pr) if mode == "cholesky" else block_norm(G) / (2 * scale)
    size_eig = scaled_norm(P_eig) if mode == "cholesky" else size
    # Gradual underflow: entries below the smallest normal number have an absolute error of up
    # to about that number, not a relative one (steps of zero blocks damped by tau).
    underflow = math.sqrt(b) * torch.finfo(ref.compute_dtype(H.dtype)).tiny
    for path, Pop in (("precondition", P), ("correct+solve", P2)):
        err = scaled_norm(Pop.double() - Pr) - underflow
        ratio = err / (bound * size)
        assert (err <= bound * size)[informative].all(), \
            f"{path}: error {ratio[informative].max().item():.3g} x the bound C sqrt(b) eps cond"
        assert (err <= tol * size)[tight].all(), \
            f"{path}: relative error {(err / size)[tight].max().item():.3g} > {tol} at cond <= " \
            f"{cond_max}"
        err = scaled_norm(Pop.double() - P_eig) - underflow
        ratio = err / (bound_eig * size_eig)
        assert (err <= bound_eig * size_eig)[informative_eig].all(), \
            f"{path}: error against the eigen route {ratio[informative_eig].max().item():.3g} x " \
            f"its bound"
    return P, d, s


def damping_for(kind: str, N: int, gen: torch.Generator):
    """A float, or a per-block tensor mixing zero, tiny and large dampings."""
    if kind == "tensor":
        choices = torch.tensor([0.0, 1e-7, 1e-4, 1e-2, 1.0], dtype=torch.float64)
        return choices[torch.randint(0, 5, (N,), generator=gen)]
    return {"zero": 0.0, "default": 1e-4, "large": 0.5}[kind]


def gradients(N: int, b: int, r, gen: torch.Generator) -> torch.Tensor:
    shape = (N, b) if r is None else (N, b, r)
    return torch.randn(*shape, dtype=torch.float64, generator=gen)


def max_blocks(b: int) -> int:
    """Enough blocks for several SIMD lane groups at small b, few at large b (reference cost)."""
    return max(2, min(40, 4096 // (b * b)))


# ---- against the reference --------------------------------------------------------------------

@settings(max_examples=400)
@given(family=st.sampled_from(sorted(BLOCK_FAMILIES)), b=st.sampled_from(BLOCK_SIZES),
       n=st.integers(0, 40), dtype=st.sampled_from(FLOATS), mode=st.sampled_from(MODES),
       scale=st.sampled_from([0.5, 1.0, 2.0]), r=st.sampled_from([None, 1, 3]),
       damping=st.sampled_from(["zero", "default", "large", "tensor"]),
       seed=st.integers(0, 2 ** 31 - 1))
def test_matches_reference(device, family, b, n, dtype, mode, scale, r, damping, seed):
    gen = generator(seed)
    N = min(n, max_blocks(b))
    H = BLOCK_FAMILIES[family](N, b, gen).to(dtype)
    G = gradients(N, b, r, gen).to(dtype)
    check_against_reference(H, G, device=device, damping=damping_for(damping, N, gen),
                            scale=scale, mode=mode)


@settings(max_examples=300)
@given(log10_cond=st.floats(2.0, 8.0), top=st.sampled_from([1e-2, 1.0, 1e2]),
       b=st.sampled_from([2, 3, 8, 16, 32]), dtype=st.sampled_from(FLOATS),
       mode=st.sampled_from(MODES), scale=st.sampled_from([0.1, 1.0, 10.0]),
       damping=st.sampled_from([0.0, 1e-4]), seed=st.integers(0, 2 ** 31 - 1))
def test_ill_conditioned(device, log10_cond, top, b, dtype, mode, scale, damping, seed):
    """cond(A) from 1e2 to 1e8: results finite (checked in check_against_reference), the error
    bound wherever it is informative, and no fallback unless A (or A^2 + mu^2 I) is singular to
    working precision."""
    gen = generator(seed)
    H = ill_conditioned_blocks(16, b, 10.0 ** log10_cond, gen, top=top).to(dtype)
    G = gradients(16, b, None, gen).to(dtype)
    check_against_reference(H, G, device=device, damping=damping, scale=scale, mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b", BLOCK_SIZES)
def test_every_block_size(device, b, mode):
    """Fixed seeds, so every block size runs in every session (SPD and indefinite blocks, more
    than one float32 lane group of 16 where the reference is cheap)."""
    gen = generator(1000 + b)
    N = 17 if b <= 33 else 2
    H = torch.cat([spd_blocks(N, b, gen), indefinite_blocks(N, b, gen)])
    G = gradients(2 * N, b, 2, gen)
    for dtype in FLOATS:
        check_against_reference(H.to(dtype), G.to(dtype), device=device, mode=mode)


@pytest.mark.parametrize("N,b", [(0, 4), (1, 4), (1, 256), (1000, 1), (1000, 3), (1000, 8)])
@pytest.mark.parametrize("mode", MODES)
def test_number_of_blocks(device, N, b, mode):
    gen = generator(N + b)
    H = torch.cat([spd_blocks(N - N // 2, b, gen), indefinite_blocks(N // 2, b, gen)])
    G = gradients(N, b, None, gen)
    for dtype in FLOATS:
        check_against_reference(H.to(dtype), G.to(dtype), device=device, mode=mode)


# ---- layouts: the op must only see values, never strides --------------------------------------

def assert_same_results(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def assert_same_product(x, y, factor, G):
    """solve is one product per block, whose summation order may follow the layout: entries may
    differ by the rounding of a length-b dot product, b eps |F| |g| (Higham, 3.5)."""
    Gm = G.unsqueeze(-1) if G.dim() == 2 else G
    tol = (G.shape[1] * eps_of(G.dtype) * (ops.unpack(factor, G.shape[0]).abs() @ Gm.abs())).reshape(G.shape)
    assert ((x - y).abs() <= tol).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_transposed_and_nonsymmetric_blocks(device, mode, dtype):
    """H, H^T and (H + H^T)/2 give bit-identical results: only the symmetric part counts, and
    halving before the sum (docs/contract.md §2, S = (H + H^T)/2) is exact and order-independent."""
    gen = generator(7)
    H = torch.randn(20, 9, 9, dtype=torch.float64, generator=gen).to(dtype).to(device)
    G = torch.randn(20, 9, dtype=dtype, generator=gen).to(device)
    S = 0.5 * H + 0.5 * H.mT
    expected = ops.precondition(S, G, mode=mode, damping=0.1)
    assert_same_results(ops.precondition(H, G, mode=mode, damping=0.1), expected)
    assert_same_results(ops.precondition(H.mT, G, mode=mode, damping=0.1), expected)
    assert_same_results(ops.correct(H.mT, mode=mode), ops.correct(S, mode=mode))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_expanded_blocks(device, mode, dtype):
    """One block expanded to N (stride 0) equals N copies, and each equals the block alone."""
    gen = generator(8)
    H1 = indefinite_blocks(1, 6, gen).to(dtype).to(device)
    G = torch.randn(21, 6, dtype=dtype, generator=gen).to(device)
    expanded = ops.precondition(H1.expand(21, 6, 6), G, mode=mode)
    assert_same_results(expanded, ops.precondition(H1.repeat(21, 1, 1), G, mode=mode))
    for k in (0, 20):
        alone = ops.precondition(H1, G[k:k + 1], mode=mode)
        assert_same_results((t[k:k + 1] for t in expanded), alone)
    check_against_reference(H1.expand(21, 6, 6).cpu(), G.cpu(), device=device, mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_noncontiguous_inputs(device, mode, dtype):
    """Strided slices of H, G and damping give the results of their contiguous copies."""
    gen = generator(9)
    big_H = torch.randn(40, 11, 12, dtype=torch.float64, generator=gen).to(dtype).to(device)
    big_G = torch.randn(7, 40, 9, dtype=dtype, generator=gen).to(device)
    big_d = torch.rand(40, dtype=dtype, generator=gen).to(device)
    H, G, d = big_H[::2, 1:9, 2:10], big_G[2, ::2, :8], big_d[::2]
    assert not (H.is_contiguous() or G.is_contiguous() or d.is_contiguous())
    expected = ops.precondition(H.contiguous(), G.contiguous(), damping=d.contiguous(), mode=mode)
    assert_same_results(ops.precondition(H, G, damping=d, mode=mode), expected)
    G3 = big_G[:, ::2, :8].permute(1, 2, 0)  # [20, 8, 7], not contiguous
    corr = ops.correct(H, damping=d, mode=mode)
    assert_same_results(corr, ops.correct(H.contiguous(), damping=d.contiguous(), mode=mode))
    assert_same_product(ops.solve(corr, G3), ops.solve(corr, G3.contiguous()), corr.factor, G3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_gradient_columns_are_independent(device, mode, dtype):
    """G of shape [N, b, r]: column j of P is the op applied to column j of G (bit for bit in
    the fused path, within the rounding of one product in solve)."""
    gen = generator(10)
    H = spd_blocks(19, 5, gen).to(dtype).to(device)
    G = torch.randn(19, 5, 4, dtype=dtype, generator=gen).to(device)
    P = ops.precondition(H, G, mode=mode)[0]
    corr = ops.correct(H, mode=mode)
    P2 = ops.solve(corr, G)
    for j in range(4):
        assert torch.equal(P[..., j], ops.precondition(H, G[..., j], mode=mode)[0])
        assert_same_product(P2[..., j], ops.solve(corr, G[..., j]), corr.factor, G[..., j])


# ---- NaN / Inf blocks -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("b", [1, 3, 8, 17])
def test_nonfinite_blocks_do_not_touch_the_others(device, mode, dtype, b):
    """docs/contract.md §3: a block with a NaN or Inf gets status 2 and p = g / (1 + mu^2), and the other
    blocks are BIT-identical to a run without the bad blocks (lanes never mix)."""
    gen = generator(b)
    N, scale = 45, 0.7
    good = torch.cat([spd_blocks(N - 15, b, gen), indefinite_blocks(15, b, gen)])
    good = good[torch.randperm(N, generator=gen)].to(dtype)
    bad = torch.rand(N, generator=gen) < 0.3
    bad[[0, N - 1]] = True  # first and last lane of their groups too
    H = inject_nonfinite(good, bad, gen)
    G = torch.randn(N, b, 2, dtype=dtype, generator=gen)
    damping = torch.rand(N, dtype=dtype, generator=gen) * 1e-3

    P, d, s, corr, P2 = run_ops(H, G, device, damping=damping, scale=scale, mode=mode)
    Pk, dk, sk, corrk, P2k = run_ops(H[~bad], G[~bad], device, damping=damping[~bad],
                                     scale=scale, mode=mode)
    F, Fk = ops.unpack(corr.factor, N), ops.unpack(corrk.factor, int((~bad).sum()))
    for x, y in ((P, Pk), (d, dk), (s, sk), (P2, P2k), (F, Fk)):
        assert torch.equal(x[~bad], y)
    assert (s[bad] == 2).all()
    assert torch.equal(d[bad], damping[bad])  # status 2 reports the input damping
    assert_fallback(P[bad], G[bad], scale)
    assert_fallback(P2[bad], G[bad], scale)
    check_against_reference(H, G, device=device, damping=damping, scale=scale, mode=mode)


# ---- the damping retries (mode cholesky) ------------------------------------------------------

@settings(max_examples=150)
@given(b=st.sampled_from([1, 2, 3, 8, 16]), dtype=st.sampled_from(FLOATS),
       start=st.sampled_from(["zero", "below_tau", "above_tau"]),
       scale=st.sampled_from([0.5, 1.0, 2.0]), seed=st.integers(0, 2 ** 31 - 1))
def test_retry_stops_at_first_factorising_damping(device, b, dtype, start, scale, seed):
    """Blocks whose smallest eigenvalue is -sqrt(d_{k-1} d_k) for a chosen k: a factor sqrt(2)
    from both neighbours, far beyond rounding, so the op must return exactly d_k with status 1,
    and d_{k-1} must not factorise in float64."""
    gen = generator(seed)
    N = 12
    if b == 1:
        start = "above_tau"  # tau = 1e-6 |S| would follow lambda_min itself: no gap to aim at
    lam = log_uniform(N, b, gen, 0.5, 2.0)
    Q = rotations(N, b, gen)

    def blocks(lam_min):
        lam[:, 0] = lam_min
        return ((Q * lam[:, None, :]) @ Q.mT).to(dtype)

    tau = ref.tau(ref.symmetrise(blocks(0.0)), dtype)
    d0 = {"zero": torch.zeros(N, dtype=torch.float64), "below_tau": 0.1 * tau,
          "above_tau": 1e-3 * 10 ** torch.rand(N, dtype=torch.float64, generator=gen)}[start]
    d0 = d0.to(dtype).double()
    # k with d_{k-1} >= 1e-3 (S is exact to ~eps ||S|| <= 1e-6 in float32) and d_k <= 0.05.
    seq = damping_sequence(d0, tau, 32)
    k = torch.empty(N, dtype=torch.long)
    for n, row in enumerate(seq.tolist()):
        candidates = [i for i in range(1, 32) if row[i - 1] >= 1e-3 and row[i] <= 0.05]
        k[n] = candidates[torch.randint(0, len(candidates), (1,), generator=gen).item()]
    rows = torch.arange(N)
    # tau depends on lambda_min through max |S_ij| (weakly): iterate to the fixed point.
    for _ in range(4):
        H = blocks(-(seq[rows, k - 1] * seq[rows, k]).sqrt())
        S = ref.symmetrise(H)
        seq = damping_sequence(d0, ref.tau(S, dtype), 32)
    lam_min = torch.linalg.eigvalsh(S)[:, 0]
    assert ((-lam_min / seq[rows, k - 1] > 1.2) & (seq[rows, k] / -lam_min > 1.2)).all(), \
        "test construction: -lambda_min must sit well between d_{k-1} and d_k"

    G = torch.randn(N, b, dtype=dtype, generator=gen)
    P, d, s = check_against_reference(H, G, device=device, damping=d0.to(dtype), scale=scale)
    assert (s == 1).all()
    torch.testing.assert_close(d.double(), seq[rows, k], rtol=4 * eps_of(dtype), atol=0)
    eye = torch.eye(b, dtype=torch.float64)
    assert (torch.linalg.cholesky_ex(S + seq[rows, k - 1, None, None] * eye).info > 0).all()
    assert (torch.linalg.cholesky_ex(S + d.double()[:, None, None] * eye).info == 0).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_near_boundary_psd_singular(device, dtype):
    """delta = 0 on singular PSD blocks sits exactly on the boundary: rounding decides whether
    d_0 = 0 factorises, so float32 and float64 may stop at neighbouring values. The checks of
    check_against_reference (a value of the sequence, the accepted value factorises up to
    rounding, the previous one does not) are what must hold."""
    gen = generator(11)
    H = psd_singular_blocks(64, 6, gen).to(dtype)
    G = torch.randn(64, 6, dtype=dtype, generator=gen)
    _, d, s = check_against_reference(H, G, device=device, damping=0.0)
    # Which of d_0 and d_1 a block stops at is rounding's choice, but nothing beyond d_1:
    # d_1 = tau lifts the zero eigenvalues to tau = 1e-6 max |S_ij| (cond(A) <= 6e6 at b = 6),
    # where A factorises and M's pivots stay above mu in either dtype. Status 0 reports d_0 = 0,
    # status 1 reports d_1 = tau.
    tau = ref.tau(symmetric_part(H), ref.compute_dtype(dtype))
    assert set(s.unique().tolist()) <= {ops.Status.FACTORISED, ops.Status.DAMPING_RAISED}
    assert (d[s == 0] == 0).all()
    torch.testing.assert_close(d[s == 1].double(), tau[s == 1], rtol=4 * eps_of(dtype), atol=0)
    assert (s == 1).any(), "some singular blocks must need a raised damping"


@pytest.mark.parametrize("max_tries", [1, 2, 5])
@pytest.mark.parametrize("dtype", FLOATS)
def test_too_few_tries_gives_status_3(device, dtype, max_tries):
    """lambda_min(S) <= -0.1 while the sequence from delta = 1e-4 reaches at most 1.6e-3 in five
    tries: every block fails, returns the fallback and the last damping tried (d_{max_tries-1});
    with the default budget every block factorises after raising the damping."""
    gen = generator(12)
    H = indefinite_blocks(20, 5, gen).to(dtype)
    G = torch.randn(20, 5, dtype=dtype, generator=gen)
    _, d, s = check_against_reference(H, G, device=device, damping=1e-4, scale=0.5,
                                      max_tries=max_tries)
    assert (s == 3).all()
    expected = torch.full((20,), 1e-4 * 2 ** (max_tries - 1), dtype=dtype)
    torch.testing.assert_close(d, expected, rtol=4 * eps_of(dtype), atol=0)
    _, _, s = check_against_reference(H, G, device=device, damping=1e-4, scale=0.5)
    assert (s == 1).all()


# ---- properties of docs/contract.md §2-3 ------------------------------------------------------------------

def step_allowance(H: torch.Tensor, damping: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    """Rounding allowance of the step norm, relative to ||G|| / (2 mu), per block at the damping
    the op reports: the error model (C sqrt(b) eps cond) of the op against the float64 reference
    plus the reference's own (the same model in float64), as the bound holds for the exact step.
    Capped at 1, where the model says nothing: the pivot floors are there so that rounding does
    not destroy the step (docs/contract.md §2), and a matrix whose eigenvalues stay above them
    (mu for M, mu^2 / 2 for A^2 + mu^2 I) gives a step of at most ||G|| / mu."""
    b = H.shape[-1]
    kappa = route_condition(spectrum(symmetric_part(H), damping), scale, mode)
    beta = ERROR_CONSTANT * math.sqrt(b) * (eps_of(H.dtype) + torch.finfo(torch.float64).eps) * kappa
    return beta.clamp(max=1.0)


@settings(max_examples=150)
@given(family=st.sampled_from(sorted(BLOCK_FAMILIES)), b=st.sampled_from(BLOCK_SIZES[:9]),
       dtype=st.sampled_from(FLOATS), mode=st.sampled_from(MODES),
       scale=st.sampled_from([0.5, 1.0, 2.0]), max_tries=st.sampled_from([1, 32]),
       seed=st.integers(0, 2 ** 31 - 1))
def test_step_norm_at_most_gradient_over_two_mu(device, family, b, dtype, mode, scale, max_tries,
                                                 seed):
    """docs/contract.md §2-3, per status, for every family and both modes.
    Status 0 and 1: the multiplier lambda / (lambda^2 + mu^2) lies in [-1/(2 mu), 1/(2 mu)] for
    every real lambda, so ||P|| <= ||G|| / (2 mu) (up to step_allowance); in mode cholesky A is
    positive definite, the multiplier lies in (0, 1/(2 mu)], and so 2 mu ||P||^2 <= G.P as well.
    Status 2 and 3: P = G / (1 + mu^2) (1 ulp), and ||G|| / (1 + mu^2) <= ||G|| / (2 mu) since
    1 + mu^2 >= 2 mu. Half the gradients lie along the eigenvector of S whose multiplier is the
    largest, where the bound is nearly attained; a tenth of the blocks hold a NaN or Inf."""
    gen = generator(seed)
    N = 32
    H = BLOCK_FAMILIES[family](N, b, gen).to(dtype)
    lam, Q = torch.linalg.eigh(symmetric_part(H))
    top = multiplier(lam, scale).abs().argmax(dim=1)
    G = torch.randn(N, b, dtype=torch.float64, generator=gen)
    along = Q[torch.arange(N), :, top] * block_norm(G)[:, None]
    G = torch.where((torch.arange(N) % 2 == 1)[:, None], along, G).to(dtype)
    bad = torch.rand(N, generator=gen) < 0.1
    Hbad = inject_nonfinite(H, bad, gen)
    P, d, s = ops.precondition(Hbad.to(device), G.to(device), scale=scale, mode=mode,
                               max_tries=max_tries)
    P, d, s = P.cpu(), d.cpu(), s.cpu()

    # Statuses: S's eigenvalues lie in [0.1, 10] (spd, nonsymmetric), are 0 or in [0.1, 10]
    # (psd_singular), or include one <= -0.1 (indefinite). Mode cholesky from delta = 1e-4:
    # d_0 factorises the first two (cond(A) <= 1e2); it cannot factorise indefinite blocks, for
    # which the sequence passes 10 within 18 tries; psd_singular blocks (cond(A) = 1e5 at d_0) may
    # see M's rounding raise the damping. singular_safe: cond(A^2 + mu^2 I) <= 4e2, status 0.
    beyond_d0 = ops.Status.FAILED if max_tries == 1 else ops.Status.DAMPING_RAISED
    allowed = {0}
    if mode == "cholesky" and family == "indefinite":
        allowed = {beyond_d0}
    elif mode == "cholesky" and family == "psd_singular":
        allowed = {0, beyond_d0}
    assert torch.equal(s == 2, bad), "status 2 exactly on the blocks with a NaN or Inf"
    assert set(s[~bad].unique().tolist()) <= allowed

    norm_P, norm_G = block_norm(P), block_norm(G)
    bound = norm_G / (2 * scale)
    fell_back = s >= 2
    assert_fallback(P[fell_back], G[fell_back], scale)
    assert (norm_P <= bound * (1 + eps_of(dtype)))[fell_back].all()
    ok = s <= 1
    beta = step_allowance(H, d, scale, mode)
    assert (norm_P <= bound * (1 + beta))[ok].all(), \
        f"||P|| / (||G|| / (2 mu)) = {(norm_P / bound)[ok].max().item():.6g}"
    if mode == "cholesky":
        # P = P_ref + E with ||E|| <= beta ||G|| / (2 mu) and 2 mu ||P_ref||^2 <= G.P_ref give
        # 2 mu ||P||^2 <= G.P + (3 beta + beta^2) ||G||^2 / (2 mu).
        descent = (P.double() * G.double()).sum(dim=1)
        slack = (3 * beta + beta ** 2) * norm_G * bound
        assert (2 * scale * norm_P ** 2 <= descent + slack)[ok].all(), \
            "mode cholesky: a step against the gradient, or a multiplier above 1/(2 mu)"


@pytest.mark.parametrize("dtype", FLOATS)
def test_singular_safe_on_singular_blocks(device, dtype):
    """Singular A (zero, rank one, rank b/2) is fine for singular_safe: status 0, finite P,
    and exactly 0 for A = 0 (the multiplier vanishes at lambda = 0)."""
    gen = generator(13)
    v = torch.randn(10, 6, 1, dtype=torch.float64, generator=gen)
    H = torch.cat([torch.zeros(10, 6, 6, dtype=torch.float64), v @ v.mT,
                   psd_singular_blocks(10, 6, gen)]).to(dtype)
    G = torch.randn(30, 6, dtype=dtype, generator=gen)
    P, _, s = check_against_reference(H, G, device=device, damping=0.0, mode="singular_safe")
    assert (s == 0).all() and torch.isfinite(P).all()
    assert torch.equal(P[:10], torch.zeros_like(P[:10]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_solve_and_precondition_agree(device, mode, dtype):
    """solve(correct(H), G) agrees with precondition(H, G) within twice the error bound. The
    factor is M^{-1}'s lower triangle (symmetric by construction); in singular_safe mode it is the
    lower triangle of A C^{-1}, symmetric in exact arithmetic only, which this bounds too."""
    gen = generator(14)
    H = spd_blocks(20, 7, gen)
    if mode == "singular_safe":
        H = torch.cat([H, indefinite_blocks(20, 7, gen)])
    H = H.to(dtype)
    G = torch.randn(H.shape[0], 7, dtype=dtype, generator=gen)
    P, d, s, corr, P2 = run_ops(H, G, device, mode=mode)
    kappa = route_condition(spectrum(ref.symmetrise(H), d), 1.0, mode)
    bound = ERROR_CONSTANT * math.sqrt(7) * eps_of(dtype) * kappa
    size = block_norm(P) if mode == "cholesky" else block_norm(G) / 2
    assert (block_norm(P2 - P) <= 2 * bound * size).all()


@pytest.mark.parametrize("N", [0, 1, 16, 21])
@pytest.mark.parametrize("b", [1, 2, 5, 16])
def test_pack_and_unpack(N, b):
    """Correction.factor's layout: entry (i, j), j <= i, of block k at
    [k // 16, i (i + 1) / 2 + j, k % 16], zeros past the last block; unpack mirrors it."""
    M = torch.randn(N, b, b, dtype=torch.float64, generator=generator(b))
    packed = ops.pack(M)
    assert packed.shape == ops.factor_shape(N, b) == (-(-N // 16), b * (b + 1) // 2, 16)
    for k in range(N):
        for i in range(b):
            for j in range(i + 1):
                assert packed[k // 16, i * (i + 1) // 2 + j, k % 16] == M[k, i, j]
    if N % 16:
        assert (packed[-1, :, N % 16:] == 0).all()
    full = ops.unpack(packed, N)
    assert torch.equal(full, full.mT) and torch.equal(full.tril(), M.tril())
    assert torch.equal(ops.pack(full), packed)
    with pytest.raises(ValueError, match=r"factor must have shape \[ceil\(N / 16\), b \(b \+ 1\) / 2, 16\]"):
        ops.unpack(packed, N + 16)


# ---- solve on any factor, and correct_ in place ---------------------------------------------------

@settings(max_examples=200)
@given(b=st.sampled_from(BLOCK_SIZES[:10]), n=st.integers(0, 40), r=st.sampled_from([None, 1, 3]),
       factor_dtype=st.sampled_from(FLOATS), G_dtype=st.sampled_from(FLOATS),
       strided=st.booleans(), seed=st.integers(0, 2 ** 31 - 1))
def test_solve_is_the_product_for_any_factor(device, b, n, r, factor_dtype, G_dtype, strided, seed):
    """solve(correction, G) = unpack(factor) G per block for any factor (random entries, not one
    correct produced, nonzero lanes past the last block included), any b and N (whole and
    partial SIMD lane groups and tiles), any number of columns, mixed dtypes. Checked
    against the float64 product within the rounding of a length-b dot product and of the result
    to G's dtype."""
    gen = generator(seed)
    N = min(n, max_blocks(b))
    tiles, t, tile = ops.factor_shape(N, b)
    F = torch.randn(tiles, t, 2 * tile if strided else tile, dtype=torch.float64, generator=gen)
    F = (F[..., ::2] if strided else F).to(factor_dtype)  # strided: a non-contiguous factor
    G = gradients(N, b, r, gen).to(G_dtype)
    corr = ops.Correction(F.to(device), torch.zeros(N), torch.zeros(N, dtype=torch.int32))
    P = ops.solve(corr, G.to(device)).cpu()
    assert P.shape == G.shape and P.dtype == G_dtype
    full = ops.unpack(F.double(), N)
    Gm = G.double().unsqueeze(-1) if G.dim() == 2 else G.double()
    exact = (full @ Gm).reshape(G.shape)
    eps = eps_of(torch.promote_types(factor_dtype, G_dtype))
    tol = (2 * b * eps * (full.abs() @ Gm.abs())).reshape(G.shape) + eps_of(G_dtype) * exact.abs()
    assert ((P.double() - exact).abs() <= tol).all()


@pytest.mark.parametrize("b", [1, 5, 16, 33])
@pytest.mark.parametrize("r", [None, 3])
@pytest.mark.parametrize("dtype", FLOATS)
def test_solve_composite_kernel(b, r, dtype):
    """The composite kernel of solve (expand the packed factor, batched matmul), which serves the
    devices without a kernel of their own (neither CPU nor CUDA), run on the CPU through the
    dispatcher: it agrees with the CPU kernel within the rounding of a product."""
    gen = generator(50 + b)
    F = torch.randn(ops.factor_shape(21, b), dtype=dtype, generator=gen)
    G = gradients(21, b, r, gen).to(dtype)
    composite = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    P = torch.ops.hsc.solve.default.redispatch(composite, F, G)
    corr = ops.Correction(F, torch.zeros(21), torch.zeros(21, dtype=torch.int32))
    assert P.shape == G.shape and P.dtype == dtype
    assert_same_product(P, ops.solve(corr, G), F, G)


@pytest.mark.parametrize("b", [3, 8, 16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_correct_in_place_equals_correct(device, b, mode, dtype):
    """correct_ writes exactly what correct returns (40 blocks: full SIMD lane groups, moved by
    register transposes, and a short last group), whatever the buffer held before."""
    gen = generator(30 + b)
    H = torch.cat([spd_blocks(20, b, gen), indefinite_blocks(20, b, gen)]).to(dtype).to(device)
    H[5, 0, b - 1] = float("nan")
    expected = ops.correct(H, mode=mode, scale=0.5)
    factor = torch.full_like(expected.factor, 7.0)
    got = ops.correct_(factor, H, mode=mode, scale=0.5)
    assert got.factor is factor
    assert_same_results(got, expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_correct_in_place_keeps_failed_blocks(device, mode, dtype):
    """keep_failed=True: blocks of status 2 (non-finite H) and 3 (no success within max_tries)
    keep the factor they held, the others are refactorised (docs/contract.md §5); keep_failed=False writes
    the fallback, as correct does."""
    gen = generator(40)
    b = 16
    H = torch.cat([spd_blocks(18, b, gen), -spd_blocks(18, b, gen)]).to(dtype).to(device)
    H[3, 2, 2] = float("inf")
    H[20, 1, 0] = float("nan")
    previous = torch.randn(ops.factor_shape(36, b), dtype=dtype, generator=gen).to(device)
    factor = previous.clone()
    # One try: the negative definite blocks cannot factorise at the input damping in mode cholesky.
    got = ops.correct_(factor, H, mode=mode, max_tries=1, keep_failed=True)
    expected = ops.correct(H, mode=mode, max_tries=1)
    # docs/contract.md §3: status 2 on the two non-finite blocks; in mode cholesky status 3 on
    # the negative definite ones (d_0 = 1e-4 cannot factorise them and there is one try); status 0
    # elsewhere (singular_safe: cond(A^2 + I) <= 1e2).
    status = torch.zeros(36, dtype=torch.int32)
    if mode == "cholesky":
        status[18:] = ops.Status.FAILED
    status[[3, 20]] = ops.Status.NON_FINITE
    assert torch.equal(got.status.cpu(), status)
    assert torch.equal(got.damping.cpu(), torch.full((36,), 1e-4, dtype=dtype))
    failed = (got.status >= 2).cpu()
    assert torch.equal(got.status, expected.status) and torch.equal(got.damping, expected.damping)
    F, F_previous, F_expected = (ops.unpack(x.cpu(), 36) for x in (factor, previous, expected.factor))
    assert torch.equal(F[failed], F_previous[failed])
    assert torch.equal(F[~failed], F_expected[~failed])
    ops.correct_(factor, H, mode=mode, max_tries=1, keep_failed=False)
    assert torch.equal(factor, expected.factor)
    # A per-block mask: failed blocks keep their factor only where the mask says so (the others
    # get the fallback, as a block that never had a factor of its own does).
    keep = torch.arange(36) % 3 == 0
    factor = previous.clone()
    ops.correct_(factor, H, mode=mode, max_tries=1, keep_failed=keep.to(device))
    F = ops.unpack(factor.cpu(), 36)
    assert torch.equal(F[failed & keep], F_previous[failed & keep])
    assert torch.equal(F[~(failed & keep)], F_expected[~(failed & keep)])


def _correct_in_place(**changes):
    def call():
        args = {"factor": torch.zeros(1, 6, 16), "H": _inputs()[0], **changes}
        return ops.correct_(args.pop("factor"), args.pop("H"), **args)
    return call


BAD_IN_PLACE = {
    "factor full blocks": (_correct_in_place(factor=torch.zeros(4, 3, 3)), ValueError,
                           r"\bfactor\b must have shape \[ceil\(N / 16\), b \(b \+ 1\) / 2, 16\] "
                           r"= \[1, 6, 16\] for N = 4 blocks of b = 3"),
    "factor wrong N": (_correct_in_place(factor=torch.zeros(2, 6, 16)), ValueError,
                       r"\bfactor\b must have shape"),
    "factor wrong dtype": (_correct_in_place(factor=torch.zeros(1, 6, 16, dtype=torch.float64)),
                           TypeError, r"\bfactor\b must have dtype Float"),
    "factor not contiguous": (_correct_in_place(factor=torch.zeros(1, 16, 6).mT), ValueError,
                              r"\bfactor\b must be contiguous"),
    "factor not a tensor": (_correct_in_place(factor=[[1.0]]), TypeError,
                            r"\bfactor\b must be a torch.Tensor"),
    "factor on another device": (_correct_in_place(factor=torch.zeros(1, 6, 16, device="meta")),
                                 (ValueError, RuntimeError), r"\bfactor\b is on meta"),
    "H bad": (_correct_in_place(H=torch.zeros(4, 3)), ValueError, r"\bH\b must have shape"),
    "keep_failed wrong length": (_correct_in_place(keep_failed=torch.ones(3, dtype=torch.bool)),
                                 ValueError, r"\bkeep_failed\b must have shape \[N\] = \[4\]"),
    "keep_failed not bool": (_correct_in_place(keep_failed=torch.ones(4)), TypeError,
                             r"\bkeep_failed\b must be a bool tensor"),
    "keep_failed a list": (_correct_in_place(keep_failed=[True] * 4), TypeError,
                           r"\bkeep_failed\b must be a bool or a \[N\] bool tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD_IN_PLACE))
def test_correct_in_place_refuses_bad_input(case):
    call, error, message = BAD_IN_PLACE[case]
    with pytest.raises(error, match=message):
        call()


# ---- float16 / bfloat16 -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(device, mode, dtype):
    """float16/bfloat16 are computed in float32 (hsc/ops.py): P comes back in the input dtype
    and differs from the float32 run on the same (rounded) values only by the final rounding,
    at most eps/2 per entry; the factor of correct stays float32."""
    gen = generator(15)
    H = torch.cat([spd_blocks(20, 6, gen), indefinite_blocks(20, 6, gen)]).to(dtype)
    G = torch.randn(40, 6, generator=gen).to(dtype)
    damping = torch.full((40,), 1e-3)  # the same float32 damping for both runs
    half = run_ops(H, G, device, damping=damping, mode=mode)
    single = run_ops(H.float(), G.float(), device, damping=damping, mode=mode)
    (P, d, s, corr, P2), (P32, d32, s32, corr32, P2_32) = half, single
    assert P.dtype == P2.dtype == d.dtype == dtype and corr.factor.dtype == torch.float32
    assert torch.equal(s, s32) and torch.equal(d, d32.to(dtype))
    assert torch.equal(corr.factor, corr32.factor)
    eps = torch.finfo(dtype).eps
    for low, high in ((P, P32), (P2, P2_32)):
        assert (block_norm(low.float() - high) <= eps * block_norm(high)).all()


# ---- bad input --------------------------------------------------------------------------------

def _inputs():
    H = torch.eye(3).expand(4, 3, 3).clone()
    return H, torch.ones(4, 3)


def _precondition(**changes):
    H, G = _inputs()
    return lambda: ops.precondition(**{"H": H, "G": G, **changes})


def _correct(**changes):
    return lambda: ops.correct(**{"H": _inputs()[0], **changes})


def _solve(G):
    return lambda: ops.solve(ops.correct(_inputs()[0]), G)


BAD_INPUTS = {
    "H rank 2": (_precondition(H=torch.eye(3)), ValueError, r"\bH\b must have shape \[N, b, b\]"),
    "H rank 4": (_correct(H=torch.zeros(1, 4, 3, 3)), ValueError, r"\bH\b must have shape"),
    "H not square": (_precondition(H=torch.zeros(4, 3, 2)), ValueError, r"\bH\b must hold square"),
    "H b = 0": (_correct(H=torch.zeros(4, 0, 0)), ValueError, r"\bH\b's block size"),
    "G rank 1": (_precondition(G=torch.ones(3)), ValueError, r"\bG\b must have shape"),
    "G rank 4": (_precondition(G=torch.ones(4, 3, 1, 1)), ValueError, r"\bG\b must have shape"),
    "G wrong N": (_precondition(G=torch.ones(5, 3)), ValueError, r"\bG\b.*N = 4.*match H"),
    "G wrong b": (_precondition(G=torch.ones(4, 2, 2)), ValueError, r"\bG\b.*b = 3.*match H"),
    "solve G wrong N": (_solve(torch.ones(2, 3)), ValueError, r"\bG\b.*N = 4 to match the correction"),
    "solve G wrong b": (_solve(torch.ones(4, 2)), ValueError, r"\bfactor\b must have shape .* b = 2"),
    "H int": (_precondition(H=torch.eye(3, dtype=torch.int32).expand(4, 3, 3)), TypeError,
              r"\bH\b must be a floating-point tensor"),
    "H complex": (_correct(H=torch.eye(3, dtype=torch.complex64).expand(4, 3, 3)), TypeError,
                  r"\bH\b must be a floating-point tensor"),
    "G int": (_precondition(G=torch.ones(4, 3, dtype=torch.int64)), TypeError,
              r"\bG\b must be a floating-point tensor"),
    "G complex": (_precondition(G=torch.ones(4, 3, dtype=torch.complex128)), TypeError,
                  r"\bG\b must be a floating-point tensor"),
    "solve G complex": (_solve(torch.ones(4, 3, dtype=torch.complex64)), TypeError,
                        r"\bG\b must be a floating-point tensor"),
    "H not a tensor": (_correct(H=[[1.0]]), TypeError, r"\bH\b must be a torch.Tensor"),
    "correction not a Correction": (lambda: ops.solve((torch.eye(3)[None],) * 3, torch.ones(1, 3)),
                                    TypeError, r"correction must be the Correction"),
    "damping negative": (_precondition(damping=-1e-3), ValueError, r"damping must be"),
    "damping NaN": (_correct(damping=float("nan")), ValueError, r"damping must be"),
    "damping tensor negative": (_precondition(damping=torch.tensor([0.0, 1.0, -1e-9, 0.0])),
                                ValueError, r"damping must be finite and >= 0"),
    "damping tensor NaN": (_correct(damping=torch.tensor([0.0, float("nan"), 0.0, 0.0])),
                           ValueError, r"damping must be finite and >= 0"),
    "damping tensor wrong N": (_precondition(damping=torch.zeros(3)), ValueError,
                               r"damping must be a float or a tensor of shape \[N\] = \[4\]"),
    "damping tensor 2-D": (_correct(damping=torch.zeros(4, 1)), ValueError,
                           r"damping must be a float or a tensor of shape \[N\]"),
    "damping tensor int": (_precondition(damping=torch.zeros(4, dtype=torch.int64)), TypeError,
                           r"damping must be a floating-point tensor"),
    "damping string": (_correct(damping="0.1"), TypeError, r"damping must be a float"),
    "scale 0": (_precondition(scale=0.0), ValueError, r"scale \(mu\) must be a finite number > 0"),
    "scale negative": (_correct(scale=-1.0), ValueError, r"scale \(mu\) must be"),
    "scale NaN": (_precondition(scale=float("nan")), ValueError, r"scale \(mu\) must be"),
    "scale Inf": (_correct(scale=float("inf")), ValueError, r"scale \(mu\) must be"),
    "unknown mode": (_precondition(mode="lu"), ValueError,
                     r"mode must be one of 'cholesky', 'singular_safe', 'spectral', 'saddle_free', 'saddle_free_root', got 'lu'"),
    "max_tries 0": (_correct(max_tries=0), ValueError, r"max_tries must be >= 1, got 0"),
    "max_tries negative": (_precondition(max_tries=-3), ValueError, r"max_tries must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_its_name(case):
    call, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        call()


# With a GPU the second device is CUDA; without one it is 'meta', which the dispatcher routes to
# the fake kernels registered in hsc/ops.py, which check devices too.
OTHER_DEVICE = "cuda" if GPU_PRESENT else "meta"


@pytest.mark.parametrize("op,moved", [("precondition", "H"), ("precondition", "G"),
                                      ("precondition", "damping"), ("correct", "damping"),
                                      ("solve", "G"), ("solve", "factor")])
def test_two_devices_are_refused(op, moved):
    H, G = _inputs()
    args = {"H": H, "G": G, "damping": torch.zeros(4)}
    corr = ops.correct(H)
    args["factor"] = corr.factor
    args[moved] = args[moved].to(OTHER_DEVICE)
    with pytest.raises((ValueError, RuntimeError), match=rf"\b{moved}\b.*device"):
        if op == "precondition":
            ops.precondition(args["H"], args["G"], damping=args["damping"])
        elif op == "correct":
            ops.correct(args["H"], damping=args["damping"])
        else:
            ops.solve(corr._replace(factor=args["factor"]), args["G"])


# ---- torch.library integration ----------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_opcheck(device, mode, dtype):
    gen = generator(16)
    H = torch.cat([spd_blocks(4, 5, gen), indefinite_blocks(3, 5, gen)]).to(dtype).to(device)
    H[2, 1, 3] = float("nan")
    damping = torch.full((7,), 1e-4, dtype=dtype, device=device)
    factor = ops.correct(H, mode=mode).factor
    torch.library.opcheck(torch.ops.hsc.correct.default, (H, damping, 1.0, mode, 32, ops.MAX_SWEEPS))
    for keep_failed in (None, torch.ones(7, dtype=torch.bool, device=device),
                        torch.arange(7, device=device) % 2 == 0):
        torch.library.opcheck(torch.ops.hsc.correct_.default,
                              (factor.clone(), H, damping, 1.0, mode, 32, keep_failed, ops.MAX_SWEEPS))
    for G in (torch.randn(7, 5, dtype=dtype, generator=gen),
              torch.randn(7, 5, 3, dtype=dtype, generator=gen)):
        G = G.to(device)
        torch.library.opcheck(torch.ops.hsc.precondition.default, (H, G, damping, 0.5, mode, 4, ops.MAX_SWEEPS))
        torch.library.opcheck(torch.ops.hsc.solve.default, (factor, G))


@pytest.mark.parametrize("op", ["precondition", "solve"])
def test_opcheck_transposed_gradient(op):
    H = spd_blocks(4, 5, generator(17)).float()
    G = torch.randn(4, 3, 5).mT  # [4, 5, 3], column-major blocks
    args = ((H, G, torch.zeros(4), 1.0, "cholesky", 32, ops.MAX_SWEEPS) if op == "precondition"
            else (ops.correct(H).factor, G))
    result = torch.library.opcheck(getattr(torch.ops.hsc, op).default, args,
                                   raise_exception=False)
    assert result == dict.fromkeys(result, "SUCCESS"), result


@pytest.mark.parametrize("mode", MODES)
def test_compile_fullgraph_matches_eager(device, mode):
    torch._dynamo.reset()

    def step(H, G):
        P, damping, status = ops.precondition(H, G, damping=1e-3, scale=0.5, mode=mode)
        return 2.0 * P, damping, status

    gen = generator(18)
    H = indefinite_blocks(9, 4, gen).float().to(device)
    G = torch.randn(9, 4, generator=gen).to(device)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_same_results(compiled(H, G), step(H, G))


def test_compile_fullgraph_in_place(device):
    """correct_ mutates its factor argument; compiled code must see the same writes."""
    torch._dynamo.reset()

    def refresh(factor, H):
        c = ops.correct_(factor, H, damping=1e-3, keep_failed=True)
        return factor.sum(), c.status

    gen = generator(19)
    H = indefinite_blocks(9, 4, gen).float().to(device)
    H[4, 1, 1] = float("nan")
    eager, compiled = (torch.zeros(ops.factor_shape(9, 4), device=device) for _ in range(2))
    expected = refresh(eager, H)
    got = torch.compile(refresh, fullgraph=True, backend="aot_eager")(compiled, H)
    assert_same_results(got, expected)
    assert torch.equal(compiled, eager) and (compiled[0, :, 4] == 0).all()


# ---- edge cases found by these tests, fixed in the ops ------------------------------------------

def assert_step_within_model(P, H, G, damping, *, scale, mode):
    """P against the float64 reference at the op's damping within the error model, also where the
    bound exceeds 1 (check_against_reference then leaves the block out), and ||P|| within
    step_allowance of ||G|| / (2 mu) (docs/contract.md §2)."""
    Pr, _, sr = ref.precondition(H, G, damping=damping, scale=scale, mode=mode, max_tries=1)
    assert (sr == 0).all(), "the reference factorises at the op's damping"
    kappa = route_condition(spectrum(symmetric_part(H), damping), scale, mode)
    bound = ERROR_CONSTANT * math.sqrt(H.shape[-1]) * eps_of(H.dtype) * kappa
    size = scaled_norm(Pr) if mode == "cholesky" else block_norm(G) / (2 * scale)
    assert (scaled_norm(P.double() - Pr) <= bound * size).all()
    allowance = step_allowance(H, damping, scale, mode)
    assert (block_norm(P) <= block_norm(G) / (2 * scale) * (1 + allowance)).all()


# float32, mode cholesky, delta = 0: A = S factorises but M = A + mu^2 A^-1 does not (A^-1 is
# rounding noise); the damping must be raised rather than status 3 returned with tries unused.
def test_status_3_only_after_max_tries():
    # A rank-one float32 block (v v^T rounded): PD in exact arithmetic, lambda = 3e-9 and 0.25.
    # At d_0 = 0 A is singular to float32 precision (eps cond(A) = 9): its last pivot is rounding
    # noise (0, or 4e-9 with fused multiply-adds, against 1.3e-8 exactly), and so is M's, below
    # the floor mu. At d_1 = tau = 1.9e-7 M's last pivot is 5.5 mu in either evaluation: status 1
    # at d_1 (docs/contract.md §2-3).
    H = torch.tensor([[[0.06278962641954422, 0.10872073471546173],
                       [0.10872073471546173, 0.1882508248090744]]], dtype=torch.float32)
    G = torch.ones(1, 2)
    P, d, s = check_against_reference(H, G, damping=0.0)
    assert s.item() == ops.Status.DAMPING_RAISED
    tau = ref.tau(symmetric_part(H), torch.float32)
    torch.testing.assert_close(d.double(), tau, rtol=4 * eps_of(torch.float32), atol=0)
    assert_step_within_model(P, H, G, d, scale=1.0, mode="cholesky")


# A zero block: tau is the smallest normal number, so mu^2 / tau overflows M once mu >= 2 at d_1;
# the damping must keep rising instead of falling back.
@pytest.mark.parametrize("dtype", FLOATS)
def test_zero_block_large_scale(dtype):
    H, G = torch.zeros(1, 3, 3, dtype=dtype), torch.ones(1, 3, dtype=dtype)
    scale, tiny, big = 2.0, torch.finfo(dtype).tiny, torch.finfo(dtype).max
    # d_0 = 0 leaves A = 0; at d_1 = tau = tiny, M = (d_1 + mu^2 / d_1) I overflows (mu^2 / tiny
    # is 2^128 in float32, 2^1024 in float64); at d_2 = max(2 d_1, tau) = 2 tiny it is finite:
    # status 1 at d_2, and P = G d_2 / (d_2^2 + mu^2) (M = (d + mu^2 / d) I), a subnormal number.
    assert scale ** 2 / tiny > big > scale ** 2 / (2 * tiny)
    P, d, s = check_against_reference(H, G, damping=0.0, scale=scale)
    assert s.item() == ops.Status.DAMPING_RAISED and d.item() == 2 * tiny
    d2 = torch.tensor(2 * tiny, dtype=torch.float64)
    expected = (G.double() * d2 / (d2 ** 2 + scale ** 2)).to(dtype)
    # Subnormal results are rounded to a multiple of the smallest subnormal number, tiny * eps.
    torch.testing.assert_close(P, expected, rtol=torch.finfo(dtype).eps,
                               atol=tiny * torch.finfo(dtype).eps)


# float32 blocks beyond the working precision (cond(A^2 + mu^2 I) = 5e7, cond(A) = 1e8) must not get
# status 0 with steps longer than ||G|| / (2 mu): M's (or C's) pivots are checked against their
# lower bound, and the damping is raised (cholesky) or the block falls back (singular_safe).
# singular_safe: C = A^2 + mu^2 I has eigenvalues 0.02 and 1e6 (eps cond(C) = 6); forming A^2
# rounds its entries by ~eps ||A||^2 = 0.1, more than C's last pivot, 0.048 exactly, which comes
# out as 0 (7e-5 with fused multiply-adds), below the floor mu^2 / 2 = 5e-3: status 3, the input
# damping and the fallback, ||G|| / (1 + mu^2) <= ||G|| / (2 mu).
# cholesky: at d_0 = 0 A's last pivot is rounding noise (0, or 9e-9 against 2e-8 exactly) and
# M's too (1e-2 against the floor mu); at d_1 = tau = 7.4e-7 M's last pivot is 7.5 mu: status 1
# at d_1, with the step of that damping.
@pytest.mark.parametrize("mode,H,scale,status", [
    ("singular_safe", [[419.6529846191406, -493.4433288574219],
                       [-493.4433288574219, 580.447021484375]], 0.1,
     ops.Status.FAILED),  # lambda = 0.1, 1e3
    ("cholesky", [[0.7376193404197693, 0.43992844223976135],
                  [0.43992844223976135, 0.2623806595802307]], 1.0,
     ops.Status.DAMPING_RAISED),  # lambda = 1e-8, 1
])
def test_step_norm_beyond_working_precision(mode, H, scale, status):
    H, G = torch.tensor([H]), torch.ones(1, 2)
    P, d, s = check_against_reference(H, G, damping=0.0, scale=scale, mode=mode)
    assert s.item() == status
    if status == ops.Status.FAILED:
        assert d.item() == 0.0
        assert_fallback(P, G, scale)
        assert block_norm(P).item() <= block_norm(G).item() / (2 * scale)
    else:
        tau = ref.tau(symmetric_part(H), torch.float32)
        torch.testing.assert_close(d.double(), tau, rtol=4 * eps_of(torch.float32), atol=0)
        assert_step_within_model(P, H, G, d, scale=scale, mode=mode)


# Found by the step-norm property at damping 0 (mode cholesky, float64, a rank-one PSD block:
# lambda = 3e-19 and 1.4, exactly). At d_0 = 0 A is singular to working precision; its Cholesky
# factorisation succeeds by rounding, mu^2 A^{-1} is rounding noise of size 1e17, and M's pivots
# would still clear their floor mu, because a Cholesky pivot bounds M's smallest eigenvalue from
# above, not from below: the step was 32 times ||g|| / (2 mu). A's pivots must now clear
# b eps max_j A_jj (docs/contract.md §2), so d_0 is refused and the damping raised to d_1 = tau.
def test_step_norm_on_singular_block_at_zero_damping():
    H = torch.tensor([[[1.4066517213553256, 0.11681660059304846],
                       [0.11681660059304846, 0.0097011349482924]]], dtype=torch.float64)
    G = torch.tensor([[0.9118069133219611, -1.288926801272551]], dtype=torch.float64)
    scale = 2.0
    P, d, s = ops.precondition(H, G, damping=0.0, scale=scale)
    assert s.item() == ops.Status.DAMPING_RAISED
    assert d.item() == ref.tau(ref.symmetrise(H), torch.float64).item()
    allowance = step_allowance(H, d, scale, "cholesky")
    assert block_norm(P).item() <= block_norm(G).item() / (2 * scale) * (1 + allowance.item())


def test_infinite_damping_tensor_is_refused():
    H, G = _inputs()
    with pytest.raises(ValueError, match=r"damping must be"):
        ops.precondition(H, G, damping=torch.full((4,), float("inf")))
