"""The eigensolver hsc.ops.eigh and the spectral modes (spectral, saddle_free, saddle_free_root) of
correct, correct_, precondition and correct_from_eigh(_) against hsc.reference and
docs/contract.md §2-3.

Every accuracy check is per block against the float64 reference (torch.linalg.eigh of
S = (H + H^T)/2), with the error models below; eigenvectors are compared through reconstructions,
Rayleigh quotients and invariant subspaces, never column by column (repeated eigenvalues make
them non-unique).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (BLOCK_FAMILIES, GPU_PRESENT, blocks_with_spectrum, generator,
                      ill_conditioned_blocks, indefinite_blocks, inject_nonfinite, log_uniform,
                      psd_singular_blocks, rotations, spd_blocks)
from hsc import ops
from hsc import reference as ref

FLOATS = (torch.float32, torch.float64)
EIGH_MODES = ops.EIGH_MODES
BLOCK_SIZES = (1, 2, 3, 5, 8, 16, 17, 31, 32, 33, 64)
# Blocks per SIMD lane group of the CPU kernels (AVX-512): a block's result must not depend on
# which blocks share its group.
LANES = {torch.float32: 16, torch.float64: 8}

# ---- Error model ------------------------------------------------------------------------------
# eps = finfo(compute dtype).eps, norms per block, S = (H + H^T)/2, mu the scale.
#
# eigh (status 0). Measured over ~2e4 blocks (every family of conftest, cond 1e6, clustered and
# rank-one spectra, b = 1..64, both dtypes) and then 1500 examples of each hypothesis test below;
# largest ratio seen in brackets:
#   eigenvalues     max_j |lambda_j - lambda_ref_j| <= 8 sqrt(b) eps ||S||_F   [2.9 at b = 3]
#   orthogonality   ||V^T V - I||_max              <= 8 sqrt(b) eps           [2.3]
#   reconstruction  ||V diag(lambda) V^T - S||_F   <= 8 sqrt(b) eps ||S||_F   [2.3]
#   Rayleigh        max_j |v_j^T S v_j - lambda_j| <= 8 sqrt(b) eps ||S||_F   (also status 3) [2.0]
# Why sqrt(b) and not b: measured relative to eps ||S||_F, the eigenvalue error stays flat
# (<= 6) from b = 3 to 64, and the orthogonality and reconstruction errors grow like sqrt(b):
# each entry of V is updated by many rotations whose roundings are independent and add up like a
# random walk; a bound in b would be 8x looser at b = 64 than anything measured. Jacobi stops
# when every |a_pq| <= eps ||A||_F / b, so the neglected off-diagonal part is itself
# <= eps ||A||_F / sqrt(2) (Weyl: an eigenvalue error of that order).
#
# Spectral modes, status 0. The computed eigenpairs are exact for some S + E with
# ||E||_F <= 8 sqrt(b) eps ||S||_F (above), V is orthogonal to O(sqrt(b) eps), and the product
# V f(Lambda) V^T g rounds like a length-b dot product. Each f is Lipschitz with constant
# <= 1 / mu^2 (spectral, saddle_free: |f'| <= 1/mu^2 at lambda = 0; saddle_free_root: 0.385/mu^2)
# and so, in the Frobenius norm, is the matrix function S -> f(S) (a Lipschitz f is
# operator-Lipschitz in the Frobenius norm with the same constant); |f| <= 1/mu. Hence
#   ||p - p_ref|| <= 8 sqrt(b) eps (||S||_F / mu^2 + 1 / mu) ||g||     [3.4, saddle_free_root]
# and the same for the spectrum of the factor: |eig(F) - f(lambda_ref)| <= the same without
# ||g|| (Weyl) [3.3].
# The three paths (fused precondition; correct + solve; eigh + correct_from_eigh + solve) run the
# same Jacobi iteration on the same data and differ only in how the last product is summed:
# each rounds by at most 2 b eps (|V| |f| |V|^T) |g| elementwise (Higham, 3.5: two length-b
# products), so two paths differ by at most 4 b eps (|V| |f| |V|^T) |g| [0.96 b eps ...], and the
# factors of correct and correct_from_eigh by 4 b eps |V| |f| |V|^T [0.5 b eps ...].
# Step norm: p = V f V^T g with V orthogonal to rounding and every computed f <= f_max, so
# ||p|| <= f_max ||g|| (1 + 8 sqrt(b) eps) whatever the accuracy of the eigenvalues, with
# f_max = 1/(2 mu) (spectral, saddle_free) or 1/mu (saddle_free_root); the fallback's
# 1/(1 + mu^2) is below both.
C_EIGEN = 8.0
C_STEP = 8.0
C_PRODUCT = 4.0


# ---- helpers ----------------------------------------------------------------------------------

def eps_of(dtype: torch.dtype) -> float:
    return torch.finfo(ref.compute_dtype(dtype)).eps


def fro(x: torch.Tensor) -> torch.Tensor:
    """Frobenius (or 2-) norm per block, float64."""
    return x.double().flatten(1).norm(dim=1)


def max_step_multiplier(mode: str, scale: float) -> float:
    """max_lambda |f(lambda)|: 1/(2 mu) at |lambda| = mu, or 1/mu at lambda = 0 (root)."""
    return 1.0 / scale if mode == "saddle_free_root" else 0.5 / scale


def max_blocks(b: int) -> int:
    """Several lane groups at small b, few blocks at large b (the reference's cost)."""
    return max(2, min(40, 4096 // (b * b)))


def to_device(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else x


def cpu(result):
    return type(result)(*(t.cpu() for t in result))


def same(a, b) -> bool:
    """Bit-identical tensors, NaN equal to NaN (torch.equal says NaN != NaN)."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        ((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def assert_same_results(x, y):
    for a, b in zip(x, y):
        assert same(a, b)


def random_blocks(N, b, gen):
    """Gaussian blocks, not symmetric: S has a semicircle-like spectrum of both signs."""
    return torch.randn(N, b, b, dtype=torch.float64, generator=gen)


def rank_one_blocks(N, b, gen):
    v = torch.randn(N, b, 1, dtype=torch.float64, generator=gen)
    return v @ v.mT


def zero_blocks(N, b, gen):
    return torch.zeros(N, b, b, dtype=torch.float64)


def diagonal_blocks(N, b, gen):
    """Already diagonal, with a repeated entry where b > 1."""
    d = torch.randn(N, b, dtype=torch.float64, generator=gen)
    if b > 1:
        d[:, -1] = d[:, 0]
    return torch.diag_embed(d)


def ill_blocks(N, b, gen):
    return ill_conditioned_blocks(N, b, 1e6, gen, top=float(10 ** torch.randint(-2, 3, (1,), generator=gen)))


def clustered_blocks(N, b, gen):
    """Two clusters, at -2 and 1, each of width 1e-7 (neither repeated nor separated in float32)."""
    lam = torch.ones(N, b, dtype=torch.float64) + 1e-7 * torch.randn(N, b, dtype=torch.float64, generator=gen)
    lam[:, : b // 2] -= 3.0
    return blocks_with_spectrum(lam, gen)


EIGH_FAMILIES = {**BLOCK_FAMILIES, "random": random_blocks, "rank_one": rank_one_blocks,
                 "zero": zero_blocks, "diagonal": diagonal_blocks, "ill_conditioned": ill_blocks,
                 "clustered": clustered_blocks}
MODE_FAMILIES = {**BLOCK_FAMILIES, "random": random_blocks, "ill_conditioned": ill_blocks,
                 "rank_one": rank_one_blocks, "zero": zero_blocks}


# ---- eigh: the checks -------------------------------------------------------------------------

def eigh_errors(H: torch.Tensor, e: ops.Eigh) -> dict:
    """Per block, the errors of the error model divided by their scale (sqrt(b) eps, times
    ||S||_F where it applies): each must be <= C_EIGEN. NaN where the block has status 2."""
    b = H.shape[-1]
    eps = eps_of(H.dtype)
    S = ref.symmetrise(H)
    nS = fro(S)
    scale = math.sqrt(b) * eps * torch.where(nS > 0, nS, 1.0)  # a zero block must come out exact
    lam, V = e.eigenvalues.double(), e.eigenvectors.double()
    eye = torch.eye(b, dtype=torch.float64)
    lam_ref = ref.eigh(H).eigenvalues
    rayleigh = torch.einsum("nij,nik,nkj->nj", V, S, V)
    return {
        "eigenvalues": (lam - lam_ref).abs().amax(1) / scale,
        "orthogonality": (V.mT @ V - eye).abs().flatten(1).amax(1) / (math.sqrt(b) * eps),
        "reconstruction": fro((V * lam[:, None, :]) @ V.mT - S) / scale,
        "rayleigh": (rayleigh - lam).abs().amax(1) / scale,
    }


def check_eigh(H: torch.Tensor, *, device="cpu", max_sweeps: int = ops.MAX_SWEEPS) -> ops.Eigh:
    """ops.eigh(H) on `device` against the contract and the reference (float32/float64 H);
    returns the result on the CPU."""
    N, b = H.shape[0], H.shape[-1]
    e = cpu(ops.eigh(H.to(device), max_sweeps=max_sweeps))
    dtype = ref.compute_dtype(H.dtype)
    assert e.eigenvalues.shape == (N, b) and e.eigenvectors.shape == (N, b, b) and e.status.shape == (N,)
    assert e.eigenvalues.dtype == e.eigenvectors.dtype == dtype and e.status.dtype == torch.int32
    if N == 0:
        return e
    finite = torch.isfinite(H).flatten(1).all(1)
    s = e.status
    assert torch.equal(s == 2, ~finite), "status 2 exactly on the blocks with a NaN or Inf"
    assert set(s.tolist()) <= {0, 2, 3}
    assert torch.equal(torch.where(s == 3, 0, s), ref.eigh(H).status)  # the reference has no sweep limit
    if max_sweeps == ops.MAX_SWEEPS:
        # Cyclic Jacobi converges quadratically: 4 to 10 sweeps were measured on every family.
        assert not (s == 3).any(), "no convergence within the default sweep limit"
    assert torch.isnan(e.eigenvalues[~finite]).all() and torch.isnan(e.eigenvectors[~finite]).all()
    kept = finite
    assert torch.isfinite(e.eigenvalues[kept]).all() and torch.isfinite(e.eigenvectors[kept]).all()
    assert (e.eigenvalues[kept].diff(dim=1) >= 0).all(), "eigenvalues ascending"
    err = eigh_errors(H[kept], ops.Eigh(*(t[kept] for t in e)))
    converged = s[kept] == 0
    # The last iterate of a block that did not converge is still an orthogonal transformation of S
    # with its diagonal as eigenvalues: orthogonality and Rayleigh quotients hold for status 3 too.
    for name, applies in (("orthogonality", True), ("rayleigh", True),
                          ("eigenvalues", converged), ("reconstruction", converged)):
        ratio = err[name][applies] if isinstance(applies, torch.Tensor) else err[name]
        assert (ratio <= C_EIGEN).all(), f"{name}: {ratio.max().item():.3g} x its scale (bound {C_EIGEN})"
    return e


# ---- eigh: accuracy ---------------------------------------------------------------------------

@settings(max_examples=60)
@given(family=st.sampled_from(sorted(EIGH_FAMILIES)), b=st.sampled_from(BLOCK_SIZES),
       n=st.integers(0, 40), dtype=st.sampled_from(FLOATS), seed=st.integers(0, 2 ** 31 - 1))
def test_eigh_matches_reference(device, family, b, n, dtype, seed):
    gen = generator(seed)
    H = EIGH_FAMILIES[family](min(n, max_blocks(b)), b, gen).to(dtype)
    check_eigh(H, device=device)


@st.composite
def spectra(draw, b):
    """Eigenvalues with chosen multiplicities: all equal, a few repeated values, or clusters of
    width 10^-k around a few centres (both signs)."""
    kind = draw(st.sampled_from(["equal", "repeated", "clustered"]))
    centres = draw(st.lists(st.sampled_from([-3.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0]),
                            min_size=1, max_size=3))
    pick = draw(st.lists(st.integers(0, len(centres) - 1), min_size=b, max_size=b))
    lam = torch.tensor([centres[i] for i in pick] if kind != "equal" else [centres[0]] * b,
                       dtype=torch.float64)
    if kind == "clustered":
        width = 10.0 ** -draw(st.integers(3, 12))
        lam = lam + width * torch.linspace(-1, 1, b, dtype=torch.float64)
    return lam


@settings(max_examples=40)
@given(data=st.data(), b=st.sampled_from([2, 3, 5, 8, 16, 17]), dtype=st.sampled_from(FLOATS),
       seed=st.integers(0, 2 ** 31 - 1))
def test_eigh_repeated_and_clustered_eigenvalues(device, data, b, dtype, seed):
    """blocks_with_spectrum with chosen spectra; with repeated eigenvalues the eigenvectors are not
    unique, so the checks compare invariant subspaces: the projector onto the eigenvectors of the
    eigenvalues below each gap in the spectrum agrees with the reference's within
    ||E||_F / gap (Davis-Kahan), E the backward error of the error model."""
    gen = generator(seed)
    lam = data.draw(spectra(b))
    H = blocks_with_spectrum(lam.expand(9, b).clone(), gen).to(dtype)
    e = check_eigh(H, device=device)
    S = ref.symmetrise(H)
    r = ref.eigh(H)
    backward = C_EIGEN * math.sqrt(b) * eps_of(dtype) * fro(S)
    for m in range(1, b):
        gap = r.eigenvalues[:, m] - r.eigenvalues[:, m - 1]
        separated = gap > 1e3 * backward  # else the split is within rounding and means nothing
        P = e.eigenvectors[:, :, :m].double()
        Q = r.eigenvectors[:, :, :m]
        dist = fro(P @ P.mT - Q @ Q.mT)
        assert (dist <= math.sqrt(2) * backward / (gap - backward))[separated].all()


@pytest.mark.parametrize("b", BLOCK_SIZES)
def test_eigh_every_block_size(device, b):
    """Fixed seeds, so every block size runs in every session: more than one lane group where the
    reference is cheap, spd, indefinite and Gaussian blocks, both dtypes."""
    gen = generator(2000 + b)
    N = 17 if b <= 17 else 3
    H = torch.cat([spd_blocks(N, b, gen), indefinite_blocks(N, b, gen), random_blocks(N, b, gen)])
    for dtype in FLOATS:
        check_eigh(H.to(dtype), device=device)


@pytest.mark.parametrize("dtype", FLOATS)
def test_eigh_diagonal_blocks_are_exact(device, dtype):
    """An already diagonal block needs no rotation: it converges in the first sweep (status 0 even
    with max_sweeps=1), its eigenvalues are its sorted diagonal bit for bit and its eigenvectors
    a permutation matrix, exactly."""
    gen = generator(21)
    for b in (1, 2, 5, 16, 33):  # 16, 33: the CPU's tridiagonal route (no reflection, no QL iteration)
        D = diagonal_blocks(20, b, gen).to(dtype)
        e = cpu(ops.eigh(D.to(device), max_sweeps=1))
        assert (e.status == 0).all()
        assert torch.equal(e.eigenvalues, D.diagonal(dim1=1, dim2=2).sort(dim=1).values)
        V = e.eigenvectors
        assert ((V == 0) | (V == 1)).all() and (V.sum(1) == 1).all() and (V.sum(2) == 1).all()
        assert torch.equal((V * e.eigenvalues[:, None, :]) @ V.mT, D)


@pytest.mark.parametrize("dtype", FLOATS)
def test_eigh_zero_and_rank_one_blocks(device, dtype):
    """Zero blocks: eigenvalues exactly 0, eigenvectors orthogonal. Rank one v v^T: one eigenvalue
    ||v||^2 with eigenvector +-v/||v||, the others 0, all within the error model."""
    gen = generator(22)
    for b in (1, 3, 8, 33):
        Z = torch.zeros(20, b, b, dtype=dtype)
        e = check_eigh(Z, device=device)
        assert (e.status == 0).all() and (e.eigenvalues == 0).all()
        v = torch.randn(20, b, 1, dtype=torch.float64, generator=gen)
        H = (v @ v.mT).to(dtype)
        e = check_eigh(H, device=device)
        n2 = fro(ref.symmetrise(H))
        tol = C_EIGEN * math.sqrt(b) * eps_of(dtype) * n2
        lam = e.eigenvalues.double()
        assert ((lam[:, -1] - n2).abs() <= tol).all()  # ||v v^T||_F = ||v||^2 = the top eigenvalue
        assert (lam[:, :-1].abs() <= tol[:, None]).all()
        # Davis-Kahan: the top eigenvector is within ||E|| / gap of +-v/||v||, the gap being ||v||^2.
        top, unit = e.eigenvectors[:, :, -1].double(), v[:, :, 0] / fro(v[:, :, 0])[:, None]
        sign = torch.where((top * unit).sum(1) < 0, -1.0, 1.0)
        assert (fro(sign[:, None] * top - unit) <= 2 * tol / n2).all()


@pytest.mark.parametrize("dtype,exponent", [(torch.float32, 100), (torch.float32, -100),
                                            (torch.float64, 997), (torch.float64, -997)])
def test_eigh_huge_and_tiny_scales(device, dtype, exponent):
    """Entries ~1e30 / 1e-30 (float32) and ~1e300 / 1e-300 (float64), mixed in one batch with
    blocks of order 1: ||S||_F^2 overflows or underflows the dtype, so Jacobi runs on S scaled
    by a power of two per block (csrc/cpu/lane_eigh.h). Results are finite and as accurate,
    relative to ||S||_F, as at scale 1; and since scaling by 2^k is exact, eigh(2^k H) is
    2^k eigh(H) bit for bit, with the same eigenvectors."""
    gen = generator(23)
    for b in (2, 7, 16):
        H = torch.cat([indefinite_blocks(12, b, gen), spd_blocks(12, b, gen)]).to(dtype)
        scaled = H.clone()
        scaled[::2] *= 2.0 ** exponent  # every other block huge (or tiny), the others not
        assert torch.isfinite(scaled).all()
        assert (scaled[::2][H[::2] != 0].abs() >= torch.finfo(dtype).tiny).all()  # no subnormals
        e = cpu(ops.eigh(scaled.to(device)))
        plain = cpu(ops.eigh(H.to(device)))
        assert (e.status == 0).all()
        assert torch.isfinite(e.eigenvalues).all() and torch.isfinite(e.eigenvectors).all()
        assert torch.equal(e.eigenvalues[::2], plain.eigenvalues[::2] * 2.0 ** exponent)
        assert torch.equal(e.eigenvectors, plain.eigenvectors)
        # Accuracy against the reference of the unscaled blocks (exact: a power of two).
        values = e.eigenvalues.clone()
        values[::2] *= 2.0 ** -exponent
        for name, ratio in eigh_errors(H, e._replace(eigenvalues=values)).items():
            assert (ratio <= C_EIGEN).all(), name
        if dtype == torch.float32:  # a scale that is no power of two; float64 holds the norms
            check_eigh((H.double() * 10.0 ** math.copysign(30, exponent)).float(), device=device)


@pytest.mark.parametrize("dtype", FLOATS)
def test_eigh_no_blocks_and_scalar_blocks(device, dtype):
    """N = 0 gives empty results of the right shapes; b = 1 is its own eigen-decomposition,
    exactly (eigenvalue H, eigenvector 1)."""
    for b in (1, 4):
        e = cpu(ops.eigh(torch.zeros(0, b, b, dtype=dtype, device=device)))
        assert e.eigenvalues.shape == (0, b) and e.eigenvectors.shape == (0, b, b)
        assert e.status.shape == (0,) and e.eigenvalues.dtype == dtype
    H = torch.randn(37, 1, 1, dtype=torch.float64, generator=generator(24)).to(dtype)
    H[3] = 0.0
    e = cpu(ops.eigh(H.to(device)))
    assert (e.status == 0).all()
    assert torch.equal(e.eigenvalues, H[:, 0]) and torch.equal(e.eigenvectors, torch.ones_like(H))


@pytest.mark.parametrize("dtype", FLOATS)
def test_eigh_only_the_symmetric_part_counts(device, dtype):
    """H, H^T and S = (H + H^T)/2 give bit-identical results (halving before the sum is exact)."""
    gen = generator(25)
    H = random_blocks(30, 9, gen).to(dtype).to(device)
    S = 0.5 * H + 0.5 * H.mT
    expected = ops.eigh(S)
    assert_same_results(ops.eigh(H), expected)
    assert_same_results(ops.eigh(H.mT), expected)
    assert not torch.equal(H, S)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("b", [1, 3, 8, 17])
def test_eigh_nonfinite_blocks_do_not_touch_the_others(device, dtype, b):
    """A NaN or Inf gives status 2 and NaN eigenpairs; the other blocks are bit-identical to a run
    without the bad ones (lanes never mix)."""
    gen = generator(26 + b)
    N = 45
    good = torch.cat([indefinite_blocks(25, b, gen), random_blocks(20, b, gen)])
    good = good[torch.randperm(N, generator=gen)].to(dtype)
    bad = torch.rand(N, generator=gen) < 0.3
    bad[[0, N - 1]] = True
    H = inject_nonfinite(good, bad, gen)
    e = check_eigh(H, device=device)
    alone = cpu(ops.eigh(H[~bad].to(device)))
    assert (e.status[bad] == 2).all()
    for x, y in zip(e, alone):
        assert torch.equal(x[~bad], y)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("b,limit", [(6, 3), (40, 2)], ids=["jacobi", "tridiagonal"])
def test_eigh_block_does_not_depend_on_its_group(device, dtype, b, limit):
    """A block alone and the same block at any place of a batch (first and last lane of a group,
    a short last group) give bit-identical results, whatever shares its group: huge, zero,
    diagonal, NaN blocks or blocks that need more sweeps. Also at a sweep limit that stops some
    blocks (status 3): a converged lane takes identity rotations while the others go on. Both CPU
    routes: Jacobi (b = 6) and, from b = 9, Householder + implicit QL (b = 40), where a lane whose
    column is already reduced takes no reflection and a converged lane no QL step."""
    gen = generator(27)
    W = LANES[dtype]
    N = 3 * W + 5
    H = torch.cat([indefinite_blocks(N - 12, b, gen), 1e20 * spd_blocks(3, b, gen),
                   zero_blocks(3, b, gen), diagonal_blocks(3, b, gen), random_blocks(3, b, gen)])
    H = H[torch.randperm(N, generator=gen)]
    H = inject_nonfinite(H, torch.arange(N) % 7 == 3, gen).to(dtype).to(device)
    for max_sweeps in (ops.MAX_SWEEPS, limit):
        batch = cpu(ops.eigh(H, max_sweeps=max_sweeps))
        if max_sweeps == limit:
            assert (batch.status == 3).any() and (batch.status == 0).any()
        for k in (0, W - 1, W, 2 * W + 1, N - 1):
            alone = cpu(ops.eigh(H[k:k + 1], max_sweeps=max_sweeps))
            for x, y in zip(batch, alone):
                assert same(x[k:k + 1], y)


@pytest.mark.parametrize("dtype", FLOATS)
def test_eigh_not_converged_within_max_sweeps(device, dtype):
    """A sweep limit below what a block needs: status 3 and the last iterate, finite, with
    orthogonal eigenvectors and its diagonal (the Rayleigh quotients) as eigenvalues (checked in
    check_eigh). Jacobi (b <= 8 on the CPU): a block has converged once a whole sweep rotated
    nothing, so a 2 x 2 block, which one rotation diagonalises, needs exactly 2 sweeps; a diagonal
    block needs 1. b = 16 is the CPU's tridiagonal route (below), where one QL iteration is likewise
    too few for a Gaussian block."""
    gen = generator(28)
    for b in (3, 8, 16):
        H = random_blocks(20, b, gen).to(dtype)
        e = check_eigh(H, device=device, max_sweeps=1)
        assert (e.status == 3).all()
        assert (check_eigh(H, device=device).status == 0).all()
    H2 = random_blocks(20, 2, gen).to(dtype)
    assert (check_eigh(H2, device=device, max_sweeps=1).status == 3).all()
    assert (check_eigh(H2, device=device, max_sweeps=2).status == 0).all()
    # From b = 9 the CPU reduces to tridiagonal form and runs implicit QL: max_sweeps bounds the QL
    # iterations of each eigenvalue. One is too few for a Gaussian block (status 3: the last
    # iterate, orthogonal, with the Rayleigh quotients of its rows as eigenvalues); a diagonal block
    # needs none.
    for b in (9, 33, 64):
        H = random_blocks(10, b, gen).to(dtype)
        assert (check_eigh(H, device=device, max_sweeps=1).status == 3).all()
        assert (check_eigh(H, device=device).status == 0).all()
        D = diagonal_blocks(4, b, gen).to(dtype)
        assert (check_eigh(D, device=device, max_sweeps=1).status == 0).all()
    # The spectral modes of correct and precondition report it as status 3, with the fallback.
    G = torch.randn(20, 8, 2, dtype=dtype, generator=gen)
    H = random_blocks(20, 8, gen).to(dtype)
    for mode in EIGH_MODES:
        check_modes(H, G, mode=mode, scale=0.7, device=device, max_sweeps=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eigh_half_precision_inputs(device, dtype):
    """float16/bfloat16 are computed in float32: the result is float32 and bit-identical to
    eigh of the same values in float32."""
    gen = generator(29)
    H = torch.cat([indefinite_blocks(20, 6, gen), random_blocks(20, 6, gen)]).to(dtype)
    H[7, 2, 3] = float("nan")
    e = cpu(ops.eigh(H.to(device)))
    assert e.eigenvalues.dtype == e.eigenvectors.dtype == torch.float32
    assert_same_results(e, cpu(ops.eigh(H.float().to(device))))
    check_eigh(H.float(), device=device)


# ---- spectral modes: the checks ---------------------------------------------------------------

def step_bound(S: torch.Tensor, G: torch.Tensor, scale: float, eps: float) -> torch.Tensor:
    """The error model of p per block: 8 sqrt(b) eps (||S||_F / mu^2 + 1/mu) ||g||."""
    b = S.shape[-1]
    return C_STEP * math.sqrt(b) * eps * (fro(S) / scale ** 2 + 1.0 / scale) * fro(G)


def product_scale(e: ops.Eigh, mode: str, scale: float) -> torch.Tensor:
    """|V| |f(Lambda)| |V|^T per block (float64): the scale of the rounding of the last product."""
    V = e.eigenvectors.double().nan_to_num(0.0)
    f = ref.spectral_multiplier(mode, e.eigenvalues.double().nan_to_num(0.0), scale)
    return (V.abs() * f.abs()[:, None, :]) @ V.abs().mT


def check_modes(H, G, *, mode, scale, device="cpu", max_sweeps=ops.MAX_SWEEPS, damping=1e-4):
    """Every path of a spectral mode on (H, G) against docs/contract.md §2-3 and the reference:
    precondition; correct + solve; correct_ into a used buffer + solve; eigh +
    correct_from_eigh + solve. Returns (P, status) of precondition on the CPU."""
    N, b = H.shape[0], H.shape[-1]
    eps = eps_of(H.dtype)
    kw = {"scale": scale, "mode": mode, "max_sweeps": max_sweeps, "damping": to_device(damping, device)}
    Hd, Gd = H.to(device), G.to(device)
    P, d, s = (t.cpu() for t in ops.precondition(Hd, Gd, **kw))
    corr = ops.correct(Hd, **kw)
    buffer = torch.full_like(corr.factor, 3.0)  # a used buffer: correct_ must overwrite all of it
    corr_in_place = ops.correct_(buffer, Hd, **kw)
    e = ops.eigh(Hd, max_sweeps=max_sweeps)
    from_eigh = ops.correct_from_eigh(e, scale=scale, mode=mode)
    P2, P3 = ops.solve(corr, Gd).cpu(), ops.solve(from_eigh, Gd).cpu()
    corr, corr_in_place, e, from_eigh = cpu(corr), cpu(corr_in_place), cpu(e), cpu(from_eigh)

    # Shapes, dtypes, statuses and damping: identical across paths; no damping is used (0).
    assert P.shape == G.shape and P.dtype == G.dtype == P2.dtype == P3.dtype
    assert corr.factor.shape == from_eigh.factor.shape == ops.factor_shape(N, b)
    assert corr.factor.dtype == from_eigh.factor.dtype == ref.compute_dtype(H.dtype)
    assert d.dtype == corr.damping.dtype == H.dtype
    for status in (corr.status, corr_in_place.status, e.status, from_eigh.status):
        assert torch.equal(status, s)
    for damp in (d, corr.damping, corr_in_place.damping, from_eigh.damping):
        assert (damp == 0).all() and damp.shape == (N,)
    assert torch.equal(corr_in_place.factor, corr.factor), "correct_ writes what correct returns"
    if N == 0:
        return P, s
    finite = torch.isfinite(H).flatten(1).all(1)
    assert torch.equal(s == 2, ~finite) and set(s.tolist()) <= {0, 2, 3}
    if max_sweeps == ops.MAX_SWEEPS:
        assert not (s == 3).any()

    # Fallback (docs/contract.md §3): M = (1 + mu^2) I, p = g / (1 + mu^2), for status 2 and 3.
    # The op rounds mu^2, 1 + mu^2 and the quotient to the compute dtype (3 half-ulps), the
    # expected value is rounded once more: 2 ulps.
    bad = s >= 2
    fb = (G[bad].double() / (1.0 + scale ** 2)).to(G.dtype)
    for Pop in (P, P2, P3):
        torch.testing.assert_close(Pop[bad], fb, rtol=2 * torch.finfo(G.dtype).eps, atol=0)
    eye = (torch.eye(b, dtype=torch.float64) / (1.0 + scale ** 2)).to(corr.factor.dtype)
    for factor in (corr.factor, from_eigh.factor):
        torch.testing.assert_close(ops.unpack(factor, N)[bad], eye.expand(int(bad.sum()), b, b),
                                   rtol=2 * torch.finfo(factor.dtype).eps, atol=0)
    for factor in (corr.factor, from_eigh.factor):  # lanes past the last block are 0
        assert (factor[-1, :, (N - 1) % ops.TILE + 1:] == 0).all()
    assert all(torch.isfinite(x).all() for x in (P, P2, P3, corr.factor, from_eigh.factor))

    # The multiplier bound, for every block and status: ||p|| <= f_max ||g|| up to rounding.
    f_max = max_step_multiplier(mode, scale)
    for Pop in (P, P2, P3):
        assert (fro(Pop) <= f_max * fro(G) * (1 + C_STEP * math.sqrt(b) * eps)).all()

    ok = s == 0
    S = ref.symmetrise(H[ok])
    # Accuracy against the float64 reference.
    Pr, dr, sr = ref.precondition(H[ok], G[ok], scale=scale, mode=mode)
    assert (sr == 0).all() and (dr == 0).all()
    bound = step_bound(S, G[ok], scale, eps)
    for path, Pop in (("precondition", P), ("correct+solve", P2), ("eigh+correct_from_eigh", P3)):
        ratio = fro(Pop[ok].double() - Pr) / bound
        assert (ratio <= 1).all(), f"{path}: {ratio.max().item():.3g} x the error model"
    # The factor's spectrum is f(spectrum of S) (Weyl, within the model without ||g||).
    F = ops.unpack(corr.factor, N)[ok].double()
    f_ref = ref.spectral_multiplier(mode, ref.eigh(H[ok]).eigenvalues, scale).sort(dim=1).values
    factor_bound = C_STEP * math.sqrt(b) * eps * (fro(S) / scale ** 2 + 1.0 / scale)
    assert ((torch.linalg.eigvalsh(F) - f_ref).abs().amax(1) <= factor_bound).all()

    # The paths differ only by the rounding of the last product (one product each).
    unit = b * eps * product_scale(ops.Eigh(*(t[ok] for t in e)), mode, scale)
    Gm = (G[ok].unsqueeze(-1) if G.dim() == 2 else G[ok]).double().abs()
    tol = (C_PRODUCT * unit @ Gm).reshape(G[ok].shape)
    for x, y in ((P, P2), (P, P3), (P2, P3)):
        assert ((x[ok].double() - y[ok].double()).abs() <= tol).all()
    F3 = ops.unpack(from_eigh.factor, N)[ok].double()
    assert ((F - F3).abs() <= C_PRODUCT * unit).all()
    return P, s


SCALES = ("0.1", "1", "10", "relative 1e-3", "relative 1")


def scale_for(kind: str, H: torch.Tensor) -> float:
    """An absolute mu, or one relative to the largest ||S||_2 of the batch (1 for zero blocks)."""
    if not kind.startswith("relative"):
        return float(kind)
    finite = torch.isfinite(H).flatten(1).all(1)
    S = ref.symmetrise(H[finite])
    top = float(torch.linalg.matrix_norm(S, 2).max()) if S.shape[0] else 0.0
    return float(kind.split()[1]) * (top if top > 0 else 1.0)


# ---- spectral modes: accuracy -----------------------------------------------------------------

@settings(max_examples=50)
@given(family=st.sampled_from(sorted(MODE_FAMILIES)), b=st.sampled_from(BLOCK_SIZES),
       n=st.integers(0, 40), dtype=st.sampled_from(FLOATS), scale=st.sampled_from(SCALES),
       r=st.sampled_from([None, 1, 3]), max_sweeps=st.sampled_from([ops.MAX_SWEEPS, ops.MAX_SWEEPS, 2]),
       nonfinite=st.booleans(), seed=st.integers(0, 2 ** 31 - 1))
def test_spectral_modes_match_reference(device, family, b, n, dtype, scale, r, max_sweeps,
                                        nonfinite, seed):
    """Every mode on each example: the modes differ only on some spectra (saddle_free and spectral
    agree where S has no negative eigenvalue), so a drawn mode would often miss them."""
    gen = generator(seed)
    N = min(n, max_blocks(b))
    H = MODE_FAMILIES[family](N, b, gen)
    if nonfinite:
        H = inject_nonfinite(H, torch.rand(N, generator=gen) < 0.3, gen)
    H = H.to(dtype)
    G = torch.randn(*((N, b) if r is None else (N, b, r)), dtype=torch.float64, generator=gen).to(dtype)
    for mode in EIGH_MODES:
        check_modes(H, G, mode=mode, scale=scale_for(scale, H), device=device, max_sweeps=max_sweeps)


@pytest.mark.parametrize("mode", EIGH_MODES)
@pytest.mark.parametrize("b", BLOCK_SIZES)
def test_spectral_modes_every_block_size(device, mode, b):
    """Fixed seeds, so every block size runs in every session: spd, indefinite and singular blocks,
    more than one lane group where the reference is cheap, both dtypes, mu = 0.1, 1, 10."""
    gen = generator(3000 + b)
    N = 17 if b <= 17 else 2
    H = torch.cat([spd_blocks(N, b, gen), indefinite_blocks(N, b, gen), psd_singular_blocks(N, b, gen)])
    G = torch.randn(3 * N, b, 2, dtype=torch.float64, generator=gen)
    for dtype in FLOATS:
        for scale in (0.1, 1.0, 10.0):
            check_modes(H.to(dtype), G.to(dtype), mode=mode, scale=scale, device=device)


@pytest.mark.parametrize("mode", EIGH_MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_spectral_modes_huge_and_tiny_scales(device, mode, dtype):
    """S of order 2^k ~ 1e+-30 (float32) or 1e+-300 (float64), mu relative to it: the result is
    finite and within the error model, which is invariant under S -> 2^k S, mu -> 2^k mu,
    p -> 2^-k p (compared with the reference of the unscaled problem; the scaling is exact)."""
    gen = generator(31)
    b = 7
    H = torch.cat([indefinite_blocks(10, b, gen), spd_blocks(10, b, gen)])
    G = torch.randn(20, b, dtype=torch.float64, generator=gen).to(dtype)
    for exponent in ((100, -100) if dtype == torch.float32 else (997, -997)):
        c = 2.0 ** exponent
        for mu in (0.1, 1.0):
            P, d, s = (t.cpu() for t in ops.precondition((H * c).to(dtype).to(device), G.to(device),
                                                         scale=mu * c, mode=mode))
            assert (s == 0).all() and torch.isfinite(P).all()
            Hd = H.to(dtype)
            Pr, _, _ = ref.precondition(Hd, G, scale=mu, mode=mode)
            bound = step_bound(ref.symmetrise(Hd), G, mu, eps_of(dtype))
            assert (fro(P.double() * c - Pr) <= bound).all()


@settings(max_examples=40)
@given(mode=st.sampled_from(EIGH_MODES), b=st.sampled_from([1, 2, 3, 8, 17]),
       dtype=st.sampled_from(FLOATS), scale=st.sampled_from([0.1, 1.0, 10.0]),
       seed=st.integers(0, 2 ** 31 - 1))
def test_step_norm_bound_is_reached(device, mode, b, dtype, scale, seed):
    """||p|| <= f_max ||g||, and the bound is sharp: where S has the eigenvalue at which |f| is
    largest (lambda = mu for spectral, +-mu for saddle_free, 0 for saddle_free_root) and g is its
    eigenvector, ||p|| = f_max ||g|| up to rounding. Eigenvalue -mu gives -g / (2 mu) in mode
    spectral, +g / (2 mu) in saddle_free."""
    gen = generator(seed)
    N = 16
    peak = {"spectral": scale, "saddle_free": -scale, "saddle_free_root": 0.0}[mode]
    lam = log_uniform(N, b, gen, 0.1, 10.0) * torch.where(torch.rand(N, b, generator=gen) < 0.5, -1.0, 1.0)
    lam[:, 0] = peak
    Q = rotations(N, b, gen)
    H = ((Q * lam[:, None, :]) @ Q.mT).to(dtype)
    G = Q[:, :, 0].to(dtype)  # the eigenvector of the peak
    P, s = check_modes(H, G, mode=mode, scale=scale, device=device)
    f_max = max_step_multiplier(mode, scale)
    expected = G.double() * (f_max if mode != "spectral" else math.copysign(f_max, peak or 1.0))
    tol = step_bound(ref.symmetrise(H), G, scale, eps_of(dtype)) + 2 * eps_of(dtype) * f_max * fro(G)
    assert (fro(P.double() - expected) <= tol).all()
    if mode == "spectral":  # the negative eigenvalue -mu: a step against g
        H2 = ((Q * torch.cat([-lam[:, :1], lam[:, 1:]], 1)[:, None, :]) @ Q.mT).to(dtype)
        P2, _ = check_modes(H2, G, mode=mode, scale=scale, device=device)
        assert (fro(P2.double() + G.double() * f_max) <= tol).all()


@pytest.mark.parametrize("mode", ["saddle_free", "saddle_free_root"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_saddle_free_factors_are_positive_definite(device, mode, dtype):
    """f = |lambda| / (lambda^2 + mu^2) >= 0 and 1/sqrt(lambda^2 + mu^2) > 0: the factor is positive
    (semi)definite whatever the signs of S's eigenvalues, up to rounding; saddle_free_root's
    smallest eigenvalue is 1/sqrt(lambda_max^2 + mu^2) > 0, and saddle_free's is f(lambda) of the
    eigenvalue of smallest |lambda| (> 0 unless S is singular)."""
    gen = generator(32)
    b = 9
    H = torch.cat([indefinite_blocks(16, b, gen), -spd_blocks(16, b, gen), random_blocks(16, b, gen)])
    H = H.to(dtype)
    eps = eps_of(dtype)
    for scale in (0.1, 1.0, 10.0):
        corr = cpu(ops.correct(H.to(device), scale=scale, mode=mode))
        F = ops.unpack(corr.factor, 48).double()
        lowest = torch.linalg.eigvalsh(F)[:, 0]
        lam = ref.eigh(H).eigenvalues
        f_min = ref.spectral_multiplier(mode, lam, scale).amin(1)
        tol = C_STEP * math.sqrt(b) * eps * (fro(ref.symmetrise(H)) / scale ** 2 + 1 / scale)
        assert (f_min > 10 * tol).all(), "test construction: clearly positive definite"
        assert (lowest > 0).all() and ((lowest - f_min).abs() <= tol).all()
    # The mode spectral keeps the inertia of S: negative eigenvalues stay negative.
    F = ops.unpack(ops.correct(H.to(device), scale=1.0, mode="spectral").factor.cpu(), 48).double()
    assert torch.equal((torch.linalg.eigvalsh(F) < 0).sum(1), (lam < 0).sum(1))


@pytest.mark.parametrize("dtype", FLOATS)
def test_spectral_equals_singular_safe_at_zero_damping(device, dtype):
    """M^{-1} = S (S^2 + mu^2 I)^{-1} has the eigenvalues lambda / (lambda^2 + mu^2): in exact
    arithmetic, mode spectral at scale mu is singular_safe at damping 0. The two float64
    references agree to rounding; mode spectral agrees with the singular_safe reference within
    its own error model, and with the singular_safe op within the sum of both models
    (singular_safe's: 8 sqrt(b) eps cond(S^2 + mu^2 I) ||g|| / (2 mu), tests/test_ops.py)."""
    gen = generator(33)
    b = 6
    H = torch.cat([indefinite_blocks(16, b, gen), spd_blocks(16, b, gen), psd_singular_blocks(16, b, gen)])
    G = torch.randn(48, b, 2, dtype=torch.float64, generator=gen)
    for scale in (0.1, 1.0, 10.0):
        spectral, _, _ = ref.precondition(H, G, scale=scale, mode="spectral")
        safe, _, st_safe = ref.precondition(H, G, scale=scale, mode="singular_safe", damping=0.0)
        assert (st_safe == 0).all()
        assert (fro(spectral - safe) <= 1e-13 * fro(G) / (2 * scale)).all()
        Hd, Gd = H.to(dtype), G.to(dtype)
        S = ref.symmetrise(Hd)
        lam = torch.linalg.eigvalsh(S)
        cond = (lam ** 2 + scale ** 2).amax(1) / (lam ** 2 + scale ** 2).amin(1)
        safe_bound = 8 * math.sqrt(b) * eps_of(dtype) * cond * fro(Gd) / (2 * scale)
        bound = step_bound(S, Gd, scale, eps_of(dtype)) + safe_bound
        P_spec, _, s1 = ops.precondition(Hd.to(device), Gd.to(device), scale=scale, mode="spectral")
        P_safe, _, s2 = ops.precondition(Hd.to(device), Gd.to(device), scale=scale,
                                         mode="singular_safe", damping=0.0)
        assert (s1 == 0).all() and (s2 == 0).all()
        assert (fro(P_spec.cpu().double() - P_safe.cpu().double()) <= bound).all()
        Pr, _, _ = ref.precondition(Hd, Gd, scale=scale, mode="singular_safe", damping=0.0)
        assert (fro(P_spec.cpu().double() - Pr) <= step_bound(S, Gd, scale, eps_of(dtype))).all()


def test_spectral_does_not_square_the_condition_number(device):
    """float64, cond(S) = 1e6 (eigenvalues 1e3 .. 1e-3) and mu = 1e-3: singular_safe forms S^2 +
    mu^2 I, of condition 5e11, and its error is of order eps cond(S)^2 (about 2e-5 relative to
    ||g|| / (2 mu) was measured); the spectral route never squares S, its error is of order
    eps ||S|| / mu ~ eps cond(S) (about 1e-12 measured): well within its model, which here is
    at most 1.5e-8 relative."""
    gen = generator(34)
    for b in (4, 8, 16):
        H = ill_conditioned_blocks(32, b, 1e6, gen, top=1e3)
        G = torch.randn(32, b, dtype=torch.float64, generator=gen)
        for scale in (1e-3, 1e-1):
            P, _, s = (t.cpu() for t in ops.precondition(H.to(device), G.to(device), scale=scale,
                                                         mode="spectral"))
            Pr, _, _ = ref.precondition(H, G, scale=scale, mode="spectral")
            assert (s == 0).all()
            S = ref.symmetrise(H)
            # Test construction: the model is far below singular_safe's error here.
            assert (step_bound(S, G, scale, eps_of(torch.float64)) <= 1e-7 * fro(G) / (2 * scale)).all()
            assert (fro(P - Pr) <= step_bound(S, G, scale, eps_of(torch.float64))).all()


# ---- spectral modes: damping, fallbacks and keep_failed ---------------------------------------

@pytest.mark.parametrize("mode", EIGH_MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_spectral_modes_ignore_the_damping(device, mode, dtype):
    """No damping in the spectral modes: any damping (float or per-block tensor) gives
    bit-identical results, all reporting damping 0."""
    gen = generator(35)
    H = indefinite_blocks(21, 5, gen).to(dtype).to(device)
    G = torch.randn(21, 5, dtype=dtype, generator=gen).to(device)
    expected = ops.precondition(H, G, damping=0.0, scale=0.5, mode=mode)
    assert (expected[1] == 0).all()
    for damping in (1e-4, 3.0, torch.rand(21, dtype=dtype, generator=gen).to(device)):
        assert_same_results(ops.precondition(H, G, damping=damping, scale=0.5, mode=mode), expected)
        assert_same_results(ops.correct(H, damping=damping, scale=0.5, mode=mode),
                            ops.correct(H, damping=0.0, scale=0.5, mode=mode))


@pytest.mark.parametrize("mode", EIGH_MODES)
def test_spectral_nonfinite_blocks_do_not_touch_the_others(device, mode):
    """A block with a NaN or Inf gets status 2 and the fallback; the other blocks' steps and factors
    are bit-identical to a run without the bad blocks, in both paths."""
    gen = generator(40)
    for dtype in FLOATS:
        N, b = 45, 7
        good = torch.cat([indefinite_blocks(25, b, gen), random_blocks(20, b, gen)]).to(dtype)
        bad = torch.rand(N, generator=gen) < 0.3
        bad[[0, N - 1]] = True
        H = inject_nonfinite(good, bad, gen).to(device)
        G = torch.randn(N, b, 2, dtype=dtype, generator=gen).to(device)
        keep = (~bad).to(device)
        P, d, s = (t.cpu() for t in ops.precondition(H, G, scale=0.3, mode=mode))
        Pk, dk, sk = (t.cpu() for t in ops.precondition(H[keep], G[keep], scale=0.3, mode=mode))
        F = ops.unpack(ops.correct(H, scale=0.3, mode=mode).factor.cpu(), N)
        Fk = ops.unpack(ops.correct(H[keep], scale=0.3, mode=mode).factor.cpu(), int((~bad).sum()))
        assert (s[bad] == 2).all()
        for x, y in ((P, Pk), (d, dk), (s, sk), (F, Fk)):
            assert torch.equal(x[~bad], y)


def mixed_status_blocks(dtype, gen):
    """36 blocks of b = 5 that, at max_sweeps=1, have status 0 (already diagonal), 2 (NaN/Inf)
    and 3 (need more sweeps)."""
    H = torch.cat([diagonal_blocks(12, 5, gen), indefinite_blocks(24, 5, gen)])
    H = H[torch.randperm(36, generator=gen)]
    bad = torch.zeros(36, dtype=torch.bool)
    bad[torch.randperm(36, generator=gen)[:8]] = True
    return inject_nonfinite(H, bad, gen).to(dtype)


@pytest.mark.parametrize("mode", EIGH_MODES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_correct_in_place_keeps_failed_blocks(device, mode, dtype):
    """correct_ and correct_from_eigh_ with keep_failed: failed blocks (status 2 or 3) keep the
    factor they held where keep_failed says so (True, or a per-block mask), get the fallback
    elsewhere; the other blocks receive their new factor."""
    gen = generator(36)
    H = mixed_status_blocks(dtype, gen).to(device)
    expected = cpu(ops.correct(H, scale=0.5, mode=mode, max_sweeps=1))
    assert set(expected.status.tolist()) == {0, 2, 3}
    e = ops.eigh(H, max_sweeps=1)
    assert torch.equal(e.status.cpu(), expected.status)
    from_eigh = cpu(ops.correct_from_eigh(e, scale=0.5, mode=mode))
    failed = expected.status >= 2
    previous = torch.randn(expected.factor.shape, dtype=expected.factor.dtype, generator=gen)
    F_previous = ops.unpack(previous, 36)
    mask = torch.arange(36) % 3 != 1
    for keep in (True, False, mask):
        kept = failed & (keep if isinstance(keep, torch.Tensor) else torch.full((36,), keep))
        factor = previous.clone().to(device)
        got = ops.correct_(factor, H, scale=0.5, mode=mode, max_sweeps=1, keep_failed=to_device(keep, device))
        assert got.factor is factor
        factor2 = previous.clone().to(device)
        got2 = ops.correct_from_eigh_(factor2, e, scale=0.5, mode=mode, keep_failed=to_device(keep, device))
        assert got2.factor is factor2
        for result, reference_factor in ((got, expected.factor), (got2, from_eigh.factor)):
            assert torch.equal(result.status.cpu(), expected.status) and (result.damping == 0).all()
            F, F_new = ops.unpack(result.factor.cpu(), 36), ops.unpack(reference_factor, 36)
            assert torch.equal(F[kept], F_previous[kept])
            assert torch.equal(F[~kept], F_new[~kept])
            assert (result.factor[-1, :, 36 % ops.TILE:] == 0).all()  # lanes past the last block


@pytest.mark.parametrize("mode", EIGH_MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_spectral_modes_half_precision_inputs(device, mode, dtype):
    """float16/bfloat16 are computed in float32: the factor is the float32 run's bit for bit, and
    P differs from it only by the final rounding to the input dtype."""
    gen = generator(37)
    H = torch.cat([spd_blocks(20, 6, gen), indefinite_blocks(20, 6, gen)]).to(dtype).to(device)
    G = torch.randn(40, 6, generator=gen).to(dtype).to(device)
    corr, corr32 = ops.correct(H, scale=0.5, mode=mode), ops.correct(H.float(), scale=0.5, mode=mode)
    assert corr.factor.dtype == torch.float32 and corr.damping.dtype == dtype
    assert torch.equal(corr.factor, corr32.factor) and torch.equal(corr.status, corr32.status)
    P, d, s = ops.precondition(H, G, scale=0.5, mode=mode)
    P32, _, s32 = ops.precondition(H.float(), G.float(), scale=0.5, mode=mode)
    assert P.dtype == dtype and torch.equal(s, s32)
    assert (fro(P.cpu().float() - P32.cpu()) <= torch.finfo(dtype).eps * fro(P32.cpu())).all()


# ---- power 0.5: M^-1/2 ------------------------------------------------------------------------
# correct_from_eigh(_) with power=0.5 forms M^-1/2 = V g(Lambda) V^T, g = f^1/2, in the modes whose
# f >= 0, and the fallback I / sqrt(1 + mu^2) for status 2 and 3. Error model, per block:
# - From the op's own eigenpairs (the float64 reference's V g V^T of the same V and Lambda): the
#   rounding of g (a few ulps) and of the product, within C_PRODUCT b eps |V| g |V|^T entrywise,
#   as for power 1 (test_cuda_emulation.py's bound) [0.47].
# - Against the float64 reference of H (ref.eigh, then V_ref g(Lambda_ref) V_ref^T), in the
#   Frobenius norm of the whole factor: the computed eigenpairs are exact for S + E with
#   ||E||_F <= 8 sqrt(b) eps ||S||_F (above); V's departure from orthogonality and the product's
#   rounding add about b eps max g (||V V^T - I||_F was measured at up to 1.0 b eps, b <= 64: the
#   Frobenius norm of b^2 entries, where the step's check above sees sqrt(b)). Then
#   saddle_free_root: g = (lambda^2 + mu^2)^-1/4 is Lipschitz with max |g'| = 0.216 mu^-3/2 (at
#   lambda^2 = 2 mu^2 / 3), and max g = mu^-1/2; as for f (a Lipschitz function is
#   operator-Lipschitz in the Frobenius norm with its constant):
#     ||F - F_ref||_F <= 8 eps (sqrt(b) ||S||_F / (4 mu^3/2) + b / sqrt(mu))        [0.36]
#   saddle_free: g = sqrt(|lambda| / (lambda^2 + mu^2)) is not Lipschitz at 0 (an eigenvalue of a
#   singular block moved by delta moves g by sqrt(delta) / mu), but g(S) = f(S)^1/2 with f(S) PSD
#   and f Lipschitz with 1/mu^2, and Powers-Stormer (||A^1/2 - B^1/2||_F^2 <= ||A - B||_1 <=
#   sqrt(b) ||A - B||_F for PSD A, B) turns ||E||_F into sqrt(sqrt(b) ||E||_F) / mu; max g is
#   1 / sqrt(2 mu):
#     ||F - F_ref||_F <= sqrt(8 b eps ||S||_F) / mu + 8 b eps / sqrt(2 mu)          [0.26, singular blocks]
# (largest ratios measured over 400 seeds of every family, b = 1..33, mu = 1e-3..10 and relative,
# both dtypes, in brackets).
HALF_MODES = ("saddle_free", "saddle_free_root")
HALF_BLOCK_SIZES = (1, 2, 3, 7, 16, 33)


def half_factor_bound(S: torch.Tensor, mode: str, scale: float, eps: float) -> torch.Tensor:
    """The error model of M^-1/2 per block against the float64 reference of H (above)."""
    b = S.shape[-1]
    if mode == "saddle_free_root":
        return C_STEP * eps * (math.sqrt(b) * fro(S) / (4 * scale ** 1.5) + b / math.sqrt(scale))
    return (C_STEP * b * eps * fro(S)).sqrt() / scale + C_STEP * b * eps / math.sqrt(2 * scale)


def check_half_power(H, *, mode, scale, device="cpu", max_sweeps=ops.MAX_SWEEPS, keep=None):
    """correct_from_eigh(power=0.5) on ops.eigh(H), and correct_from_eigh_ into a used buffer
    (``keep``: a keep_failed mask), against the float64 reference and the error model above.
    Returns the status."""
    N, b = H.shape[0], H.shape[-1]
    eps = eps_of(H.dtype)
    e = ops.eigh(H.to(device), max_sweeps=max_sweeps)
    F = cpu(ops.correct_from_eigh(e, scale=scale, mode=mode, power=0.5))
    previous = torch.randn(F.factor.shape, dtype=F.factor.dtype, generator=generator(N + b))
    kept = keep if keep is not None else torch.zeros(N, dtype=torch.bool)
    in_place = cpu(ops.correct_from_eigh_(previous.clone().to(device), e, scale=scale, mode=mode,
                                          keep_failed=to_device(kept, device), power=0.5))
    e = cpu(e)
    s = e.status
    assert torch.equal(F.status, s) and torch.equal(in_place.status, s) and (F.damping == 0).all()
    assert F.factor.shape == ops.factor_shape(N, b) and F.factor.dtype == ref.compute_dtype(H.dtype)
    if N == 0:
        return s
    assert (F.factor[-1, :, (N - 1) % ops.TILE + 1:] == 0).all()  # lanes past the last block
    blocks = ops.unpack(F.factor, N)
    failed, ok = s >= 2, s == 0
    # correct_from_eigh_ writes what correct_from_eigh returns, but where a failed block is kept
    assert torch.equal(ops.unpack(in_place.factor, N)[~(failed & kept)], blocks[~(failed & kept)])
    assert torch.equal(ops.unpack(in_place.factor, N)[failed & kept], ops.unpack(previous, N)[failed & kept])
    assert (in_place.factor[-1, :, (N - 1) % ops.TILE + 1:] == 0).all()
    # Fallback: I / sqrt(1 + mu^2), within 2 ulps (mu and its square rounded, a sum, a square root).
    eye = torch.eye(b, dtype=torch.float64) / math.sqrt(1.0 + scale ** 2)
    torch.testing.assert_close(blocks[failed].double(), eye.expand(int(failed.sum()), b, b),
                               rtol=2 * torch.finfo(blocks.dtype).eps, atol=0)
    assert torch.isfinite(blocks).all()
    if not ok.any():
        return s
    got = blocks[ok].double()
    # The same eigenpairs: V g V^T in float64, within the rounding of g and of the product.
    V, lam = e.eigenvectors[ok].double(), e.eigenvalues[ok].double()
    g = ref.spectral_multiplier(mode, lam, scale).sqrt()
    same = ref.corrected_inverse_from_eigh(ops.Eigh(*(t[ok] for t in e)), scale=scale, mode=mode, power=0.5)
    torch.testing.assert_close(same, (V * g[:, None, :]) @ V.mT, rtol=1e-12, atol=1e-300)  # the reference's power
    unit = C_PRODUCT * b * eps * (V.abs() * g[:, None, :]) @ V.abs().mT
    err = (got - same).abs()
    ratio = torch.where(err == 0, 0.0, err / unit)  # (zero blocks: 0 of 0)
    assert (err <= unit).all(), f"{mode}: {ratio.max().item():.3g} x the rounding of the product"
    # Against the float64 reference of H: M^-1/2 of the exact symmetric part.
    F_ref = ref.corrected_inverse_from_eigh(ref.eigh(H[ok]), scale=scale, mode=mode, power=0.5)
    ratio = fro(got - F_ref) / half_factor_bound(ref.symmetrise(H[ok]), mode, scale, eps)
    assert (ratio <= 1).all(), f"{mode}: {ratio.max().item():.3g} x the error model"
    return s


@settings(max_examples=25)
@given(family=st.sampled_from(sorted(MODE_FAMILIES)), b=st.sampled_from(HALF_BLOCK_SIZES),
       n=st.integers(0, 24), dtype=st.sampled_from(FLOATS), scale=st.sampled_from(SCALES),
       max_sweeps=st.sampled_from([ops.MAX_SWEEPS, ops.MAX_SWEEPS, 2]), nonfinite=st.booleans(),
       seed=st.integers(0, 2 ** 31 - 1))
def test_half_power_matches_reference(device, family, b, n, dtype, scale, max_sweeps, nonfinite, seed):
    """M^-1/2 (power 0.5) of both modes whose f >= 0 on each example, against the float64
    reference per block; failed blocks (NaN/Inf, or the sweep limit) hold the fallback, or their
    previous factor where keep_failed says so."""
    gen = generator(seed)
    N = min(n, max_blocks(b))
    H = MODE_FAMILIES[family](N, b, gen)
    if nonfinite:
        H = inject_nonfinite(H, torch.rand(N, generator=gen) < 0.3, gen)
    H = H.to(dtype)
    keep = torch.rand(N, generator=gen) < 0.5
    for mode in HALF_MODES:
        check_half_power(H, mode=mode, scale=scale_for(scale, H), device=device, max_sweeps=max_sweeps, keep=keep)


@pytest.mark.parametrize("mode", HALF_MODES)
@pytest.mark.parametrize("b", HALF_BLOCK_SIZES)
def test_half_power_every_block_size(device, mode, b):
    """Fixed seeds, so that every block size meets the blocks where g = f^1/2 is hardest in every
    session: ill-conditioned (cond 1e6), singular (half the eigenvalues 0; rank one; zero, where
    saddle_free's g is 0 and its derivative infinite) and indefinite blocks, both dtypes,
    mu = 1e-3, 0.1, 1, 10, and one block with a NaN."""
    gen = generator(4000 + b)
    N = 4 if b <= 16 else 1
    H = torch.cat([ill_blocks(N, b, gen), psd_singular_blocks(N, b, gen), rank_one_blocks(N, b, gen),
                   zero_blocks(N, b, gen), indefinite_blocks(N, b, gen)])
    H[-1, 0, b - 1] = float("nan")
    for dtype in FLOATS:
        for scale in (1e-3, 0.1, 1.0, 10.0):
            s = check_half_power(H.to(dtype), mode=mode, scale=scale, device=device)
            assert s[-1] == 2 and (s[:-1] == 0).all()


# ---- torch.library integration ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
def test_opcheck(device, dtype):
    gen = generator(38)
    H = torch.cat([spd_blocks(4, 5, gen), indefinite_blocks(3, 5, gen)]).to(dtype).to(device)
    for max_sweeps in (ops.MAX_SWEEPS, 1):  # status 0 and status 3
        torch.library.opcheck(torch.ops.hsc.eigh.default, (H, max_sweeps))
    H[2, 1, 3] = float("nan")
    # A NaN block has NaN eigenpairs, and opcheck's eager-versus-AOT comparison (assert_close)
    # counts NaN != NaN as a mismatch: that check is test_compile_fullgraph_matches_eager's,
    # NaN-aware, and the others run here.
    torch.library.opcheck(torch.ops.hsc.eigh.default, (H, ops.MAX_SWEEPS),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    e = ops.eigh(H, max_sweeps=2)
    factor = torch.zeros(ops.factor_shape(7, 5), dtype=dtype, device=device)
    for mode in EIGH_MODES:
        for keep_failed in (None, torch.arange(7, device=device) % 2 == 0):
            for power in (1.0, 0.5) if mode != "spectral" else (1.0,):
                torch.library.opcheck(torch.ops.hsc.correct_from_eigh_.default,
                                      (factor.clone(), *e, 0.5, mode, keep_failed, power))
    # The fused ops in the spectral modes, with their sweep limit (the fallback is finite).
    damping = torch.zeros(7, dtype=dtype, device=device)
    G = torch.randn(7, 5, 3, dtype=dtype, generator=gen).to(device)
    torch.library.opcheck(torch.ops.hsc.correct.default, (H, damping, 0.5, "saddle_free_root", 32, 2))
    torch.library.opcheck(torch.ops.hsc.correct_.default,
                          (factor.clone(), H, damping, 0.5, "saddle_free", 32, None, ops.MAX_SWEEPS))
    torch.library.opcheck(torch.ops.hsc.precondition.default, (H, G, damping, 0.5, "spectral", 32, 5))


@pytest.mark.parametrize("mode", EIGH_MODES)
def test_compile_fullgraph_matches_eager(device, mode):
    """A function calling eigh, correct_from_eigh and solve compiles into one graph and gives the
    eager results bit for bit (a NaN block included)."""
    torch._dynamo.reset()

    def step(H, G):
        e = ops.eigh(H, max_sweeps=20)
        corr = ops.correct_from_eigh(e, scale=0.5, mode=mode)
        return ops.solve(corr, G), e.eigenvalues, e.eigenvectors, corr.factor, corr.status

    gen = generator(39)
    H = indefinite_blocks(19, 4, gen).float().to(device)
    H[4, 1, 1] = float("nan")
    G = torch.randn(19, 4, generator=gen).to(device)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_same_results(compiled(H, G), step(H, G))


# ---- bad input --------------------------------------------------------------------------------

def _blocks():
    return torch.eye(3).expand(4, 3, 3).clone()


def _eigh(H=None, **kwargs):
    return lambda: ops.eigh(_blocks() if H is None else H, **kwargs)


def _from_eigh(mode="saddle_free_root", factor=None, scale=1.0, keep_failed=False, **changes):
    """correct_from_eigh_ on the Eigh of 4 blocks of b = 3, one field replaced."""
    def call():
        e = ops.eigh(_blocks())._replace(**changes)
        f = torch.zeros(ops.factor_shape(4, 3)) if factor is None else factor
        return ops.correct_from_eigh_(f, e, scale=scale, mode=mode, keep_failed=keep_failed)
    return call


def _spectral(op, **kwargs):
    def call():
        H = _blocks()
        if op == "correct":
            return ops.correct(H, mode="spectral", **kwargs)
        if op == "correct_":
            return ops.correct_(torch.zeros(ops.factor_shape(4, 3)), H, mode="spectral", **kwargs)
        return ops.precondition(H, torch.ones(4, 3), mode="spectral", **kwargs)
    return call


SHAPE = r"\beigenvectors\b must have shape \[N, b, b\]"
BAD_INPUTS = {
    # check_eigh_args: H's shape and dtype, the sweep limit.
    "eigh H rank 2": (_eigh(torch.eye(3)), ValueError, r"\bH\b must have shape \[N, b, b\]"),
    "eigh H rank 4": (_eigh(torch.zeros(1, 4, 3, 3)), ValueError, r"\bH\b must have shape"),
    "eigh H not square": (_eigh(torch.zeros(4, 3, 2)), ValueError, r"\bH\b must hold square"),
    "eigh H b = 0": (_eigh(torch.zeros(4, 0, 0)), ValueError, r"\bH\b's block size"),
    "eigh H int": (_eigh(torch.eye(3, dtype=torch.int32).expand(4, 3, 3)), TypeError,
                   r"\bH\b must be a floating-point tensor"),
    "eigh H complex": (_eigh(torch.eye(3, dtype=torch.complex64).expand(4, 3, 3)), TypeError,
                       r"\bH\b must be a floating-point tensor"),
    "eigh H not a tensor": (_eigh([[1.0]]), TypeError, r"\bH\b must be a torch.Tensor"),
    "eigh max_sweeps 0": (_eigh(max_sweeps=0), ValueError, r"max_sweeps must be in \[1, 1000\], got 0"),
    "eigh max_sweeps negative": (_eigh(max_sweeps=-5), ValueError, r"max_sweeps must be in \[1, 1000\]"),
    "eigh max_sweeps 1001": (_eigh(max_sweeps=1001), ValueError,
                             r"max_sweeps must be in \[1, 1000\], got 1001"),
    "correct max_sweeps 0": (_spectral("correct", max_sweeps=0), ValueError,
                             r"max_sweeps must be in \[1, 1000\]"),
    "correct_ max_sweeps 1001": (_spectral("correct_", max_sweeps=1001), ValueError,
                                 r"max_sweeps must be in \[1, 1000\]"),
    "precondition max_sweeps 0": (_spectral("precondition", max_sweeps=0), ValueError,
                                  r"max_sweeps must be in \[1, 1000\]"),
    "correct unknown mode": (lambda: ops.correct(_blocks(), mode="spectrum"), ValueError,
                             r"mode must be one of .*'saddle_free_root', got 'spectrum'"),
    "precondition unknown mode": (lambda: ops.precondition(_blocks(), torch.ones(4, 3), mode="eigh"),
                                  ValueError, r"mode must be one of .*, got 'eigh'"),
    # check_from_eigh_args, in its order.
    "from_eigh cholesky": (_from_eigh(mode="cholesky"), ValueError, r"takes a spectral mode"),
    "from_eigh singular_safe": (_from_eigh(mode="singular_safe"), ValueError, r"takes a spectral mode"),
    "from_eigh unknown mode": (_from_eigh(mode="saddle"), ValueError, r"mode must be one of .*got 'saddle'"),
    "eigenvectors rank 2": (_from_eigh(eigenvectors=torch.eye(3)), ValueError, SHAPE),
    "eigenvectors not square": (_from_eigh(eigenvectors=torch.zeros(4, 3, 2)), ValueError, SHAPE),
    "eigenvectors b = 0": (_from_eigh(eigenvectors=torch.zeros(4, 0, 0)), ValueError, SHAPE),
    "eigenvalues wrong b": (_from_eigh(eigenvalues=torch.zeros(4, 2)), ValueError,
                            r"\beigenvalues\b must have shape \[N, b\] = \[4, 3\]"),
    "eigenvalues wrong N": (_from_eigh(eigenvalues=torch.zeros(5, 3)), ValueError,
                            r"\beigenvalues\b must have shape \[N, b\] = \[4, 3\]"),
    "eigenvalues rank 3": (_from_eigh(eigenvalues=torch.zeros(4, 3, 1)), ValueError,
                           r"\beigenvalues\b must have shape"),
    "status wrong N": (_from_eigh(status=torch.zeros(3, dtype=torch.int32)), ValueError,
                       r"\bstatus\b must have shape \[N\] = \[4\]"),
    "status int64": (_from_eigh(status=torch.zeros(4, dtype=torch.int64)), TypeError,
                     r"\bstatus\b must be int32"),
    "eigenvalues float16": (_from_eigh(eigenvalues=torch.zeros(4, 3, dtype=torch.float16)), TypeError,
                            r"\beigenvalues\b must be float32 or float64"),
    "eigenvalues int": (_from_eigh(eigenvalues=torch.zeros(4, 3, dtype=torch.int32)), TypeError,
                        r"\beigenvalues\b must be float32 or float64"),
    "eigenvectors dtype": (_from_eigh(eigenvectors=torch.zeros(4, 3, 3, dtype=torch.float64)), TypeError,
                           r"\beigenvectors\b must have eigenvalues' dtype"),
    "factor shape": (_from_eigh(factor=torch.zeros(4, 3, 3)), ValueError,
                     r"\bfactor\b must have shape \[ceil\(N / 16\), b \(b \+ 1\) / 2, 16\] = \[1, 6, 16\]"),
    "factor dtype": (_from_eigh(factor=torch.zeros(1, 6, 16, dtype=torch.float64)), TypeError,
                     r"\bfactor\b must have dtype Float \(the eigenvalues'\)"),
    "factor int": (_from_eigh(factor=torch.zeros(1, 6, 16, dtype=torch.int32)), TypeError,
                   r"\bfactor\b must be a floating-point tensor"),
    "factor not contiguous": (_from_eigh(factor=torch.zeros(1, 16, 6).mT), ValueError,
                              r"\bfactor\b must be contiguous"),
    "factor not a tensor": (_from_eigh(factor=[0.0]), TypeError, r"\bfactor\b must be a torch.Tensor"),
    "scale 0": (_from_eigh(scale=0.0), ValueError, r"scale \(mu\) must be a finite number > 0, got 0"),
    "scale NaN": (_from_eigh(scale=float("nan")), ValueError, r"scale \(mu\) must be a finite number"),
    "scale Inf": (_from_eigh(scale=float("inf")), ValueError, r"scale \(mu\) must be a finite number"),
    "scale negative": (_from_eigh(scale=-1.0), ValueError, r"scale \(mu\) must be"),
    "keep_failed wrong N": (_from_eigh(keep_failed=torch.ones(3, dtype=torch.bool)), ValueError,
                            r"\bkeep_failed\b must have shape \[N\] = \[4\]"),
    "keep_failed not bool": (_from_eigh(keep_failed=torch.ones(4)), TypeError,
                             r"\bkeep_failed\b must be a bool tensor"),
    "keep_failed a list": (_from_eigh(keep_failed=[True] * 4), TypeError,
                           r"\bkeep_failed\b must be a bool or a \[N\] bool tensor"),
    "eigen not an Eigh": (lambda: ops.correct_from_eigh_(torch.zeros(1, 6, 16), tuple(ops.eigh(_blocks()))),
                          TypeError, r"\beigen\b must be the Eigh"),
    "eigen not an Eigh (new factor)": (lambda: ops.correct_from_eigh(tuple(ops.eigh(_blocks()))), TypeError,
                                       r"\beigen\b must be the Eigh"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_its_name(case):
    call, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        call()


# With a GPU the second device is CUDA; without one it is 'meta', which the dispatcher routes to
# the fake kernels of hsc/ops.py, which check devices too.
OTHER_DEVICE = "cuda" if GPU_PRESENT else "meta"


@pytest.mark.parametrize("moved", ["eigenvalues", "eigenvectors", "status", "keep_failed", "factor"])
def test_two_devices_are_refused(moved):
    e = ops.eigh(_blocks())
    args = {"factor": torch.zeros(ops.factor_shape(4, 3)), "keep_failed": torch.ones(4, dtype=torch.bool),
            **e._asdict()}
    args[moved] = args[moved].to(OTHER_DEVICE)
    eigen = ops.Eigh(args["eigenvalues"], args["eigenvectors"], args["status"])
    # The C++ checks say "X ... must be on factor's device"; the fake kernels "X is on meta".
    message = rf"\b{moved}\b.*(device|is on)|is on .* but {moved}\b"
    with pytest.raises((ValueError, RuntimeError), match=message):
        ops.correct_from_eigh_(args["factor"], eigen, keep_failed=args["keep_failed"])
