"""hsc.ops.graft_ (per-segment norm grafting, docs/contract.md §8) against hsc.reference.graft, and
the preconditioner's grafted apply (Preconditioner.precondition_(graft=True)) against a computation
by hand."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import generator
from hsc import Preconditioner, PreconditionerConfig, ops
from hsc import reference as ref

FLOATS = (torch.float32, torch.float64)


def segments(N: int, cuts: int, gen: torch.Generator, cover_all: bool) -> torch.Tensor:
    """Random non-decreasing segment ends in [0, N] (empty segments included); the last is N when
    ``cover_all``, else rows may be left after it."""
    ends = torch.randint(0, N + 1, (cuts,), generator=gen).sort().values
    if cover_all:
        ends = torch.cat([ends, torch.tensor([N])])
    return ends.to(torch.int64)


def rows(N: int, b: int, gen: torch.Generator, spread: float) -> torch.Tensor:
    """[N, b] float64 entries of random sign with magnitudes log-uniform over ``spread`` decades
    around 1, so that segment norms range widely."""
    mags = 10.0 ** ((torch.rand(N, b, dtype=torch.float64, generator=gen) - 0.5) * spread)
    return mags * torch.randn(N, b, dtype=torch.float64, generator=gen).sign()


def assert_matches_reference(P0: torch.Tensor, G: torch.Tensor, ends: torch.Tensor,
                             P: torch.Tensor, finite: torch.Tensor) -> None:
    """finite flags equal the reference's; finite segments agree entrywise to a few rounding
    errors of P's dtype (float32: P * ratio rounded once, the ratio from float64 norms; float64:
    the norms' sums run in another order, an error growing with the segment's length); rows after
    the last end untouched, bit for bit."""
    expected, expected_finite = ref.graft(P0.cpu(), G.cpu(), ends.cpu())
    assert torch.equal(finite.cpu(), expected_finite)
    eps = torch.finfo(P0.dtype).eps
    start = 0
    for s, end in enumerate(ends.tolist()):
        if expected_finite[s]:
            got, want = P.cpu()[start:end].double(), expected[start:end]
            entries = (end - start) * P0.shape[1]
            tol = (4 + (entries / 8 if P0.dtype == torch.float64 else 0)) * eps
            assert torch.all((got - want).abs() <= tol * want.abs() + torch.finfo(P0.dtype).tiny), (
                f"segment {s} (rows {start}:{end}): largest error {(got - want).abs().max():.3g}")
        start = end
    assert torch.equal(P.cpu()[start:], P0.cpu()[start:])


@settings(max_examples=300)
@given(N=st.integers(0, 40), b=st.sampled_from([1, 2, 3, 7, 16, 33]), cuts=st.integers(0, 6),
       cover_all=st.booleans(), dtype=st.sampled_from(FLOATS), spread=st.sampled_from([0.0, 4.0, 30.0]),
       zero_segment=st.booleans(), seed=st.integers(0, 2 ** 31 - 1))
def test_matches_reference(device, N, b, cuts, cover_all, dtype, spread, zero_segment, seed):
    gen = generator(seed)
    ends = segments(N, cuts, gen, cover_all)
    P0, G = rows(N, b, gen, spread).to(dtype), rows(N, b, gen, spread).to(dtype)
    if zero_segment and len(ends):  # a whole segment of P or of G zero: it becomes zero, not 0/0
        s = int(torch.randint(0, len(ends), (1,), generator=gen))
        (P0 if seed % 2 else G)[(int(ends[s - 1]) if s else 0):int(ends[s])] = 0
    P = P0.clone().to(device)
    finite = ops.graft_(P, G.to(device), ends.to(device))
    assert_matches_reference(P0, G, ends, P, finite)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("where", ["P", "G"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_entries_flag_only_their_segment(device, dtype, where, value):
    """A NaN or Inf in segment 1 of P or G makes segment 1 (and only it) report False; the
    others are grafted as if it were not there."""
    gen = generator(7)
    N, b = 12, 5
    ends = torch.tensor([4, 8, 12])
    P0, G = rows(N, b, gen, 4.0).to(dtype), rows(N, b, gen, 4.0).to(dtype)
    (P0 if where == "P" else G)[5, 2] = value
    P = P0.clone().to(device)
    finite = ops.graft_(P, G.to(device), ends.to(device))
    assert finite.cpu().tolist() == [True, False, True]
    assert_matches_reference(P0, G, ends, P, finite)


@pytest.mark.parametrize("dtype", FLOATS)
def test_each_segment_takes_the_raw_norm_and_keeps_its_direction(device, dtype):
    """The defining property, computed independently of the reference: after the op, segment s of P
    has the norm of G's segment s and P's original direction."""
    gen = generator(3)
    N, b, ends = 30, 8, torch.tensor([1, 11, 11, 30])
    P0, G = rows(N, b, gen, 6.0).to(dtype), rows(N, b, gen, 6.0).to(dtype)
    P = P0.clone().to(device)
    assert bool(ops.graft_(P, G.to(device), ends.to(device)).all())
    P, tol = P.cpu().double(), 50 * torch.finfo(dtype).eps
    for start, end in [(0, 1), (1, 11), (11, 30)]:
        assert torch.linalg.norm(P[start:end]) == pytest.approx(float(torch.linalg.norm(G[start:end].double())), rel=tol)
        cosine = (P[start:end] * P0[start:end].double()).sum() / (
            torch.linalg.norm(P[start:end]) * torch.linalg.norm(P0[start:end].double()))
        assert float(cosine) == pytest.approx(1.0, abs=tol)


def test_float32_sums_of_squares_do_not_overflow(device):
    """Entries near float32's largest value: their squares overflow float32 but not the float64
    sums, so the segment is grafted and finite."""
    P0 = torch.full((2, 4), 3e38, dtype=torch.float32)
    G = torch.full((2, 4), 1e38, dtype=torch.float32)
    P = P0.clone().to(device)
    finite = ops.graft_(P, G.to(device), torch.tensor([2], device=device))
    assert finite.cpu().tolist() == [True]
    assert torch.allclose(P.cpu(), G, rtol=1e-6)


@pytest.mark.parametrize("case", ["P 3-D", "P int", "G shape", "G dtype", "ends 2-D", "ends int32",
                                  "ends decreasing", "ends beyond N", "ends negative", "P strided"])
def test_bad_input_is_refused_with_its_name(case):
    P, G, ends = torch.ones(6, 4), torch.ones(6, 4), torch.tensor([2, 6])
    if case == "P 3-D":
        P = torch.ones(6, 4, 1)
    elif case == "P int":
        P = torch.ones(6, 4, dtype=torch.int32)
    elif case == "G shape":
        G = torch.ones(6, 3)
    elif case == "G dtype":
        G = torch.ones(6, 4, dtype=torch.float64)
    elif case == "ends 2-D":
        ends = ends[None]
    elif case == "ends int32":
        ends = ends.int()
    elif case == "ends decreasing":
        ends = torch.tensor([4, 2])
    elif case == "ends beyond N":
        ends = torch.tensor([2, 7])
    elif case == "ends negative":
        ends = torch.tensor([-1, 6])
    elif case == "P strided":
        P = torch.ones(4, 6).t()
    name = case.split()[0]
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        ops.graft_(P, G, ends)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present")
def test_cuda_clips_bad_ends_instead_of_reading_outside():
    """On CUDA the ends are not read back to be checked: ends are clipped to [0, N] and each
    segment starts at the largest earlier end, so a decreasing end makes an empty segment, the
    next one does not overlap the first, and no row outside P is touched (the reference's rule)."""
    P0, G = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    P = P0.cuda()
    ends = torch.tensor([4, 2, 9])
    finite = ops.graft_(P, G.cuda(), ends.cuda())
    expected, expected_finite = ref.graft(P0, G, ends)
    same, _ = ref.graft(P0, G, torch.tensor([4, 4, 6]))
    assert torch.equal(expected, same) and torch.equal(finite.cpu(), expected_finite)
    assert torch.allclose(P.cpu(), expected, rtol=1e-12)


def test_opcheck(device):
    gen = generator(1)
    P, G = rows(9, 4, gen, 2.0).float().to(device), rows(9, 4, gen, 2.0).float().to(device)
    torch.library.opcheck(torch.ops.hsc.graft_.default, (P, G, torch.tensor([3, 3, 9], device=device)))


# ---- the preconditioner's grafted apply -------------------------------------------------------

def _preconditioner(seed: int, block_size: int = 4):
    gen = generator(seed)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=gen)), torch.nn.Parameter(torch.randn(7, generator=gen)),
              torch.nn.Parameter(torch.randn(2, 2, 2, generator=gen))]
    pre = Preconditioner(params, PreconditionerConfig(block_size=block_size, estimator="exact"))
    x = torch.randn(15, generator=gen)
    loss = lambda: (torch.cat([p.reshape(-1) for p in params]).tanh() @ x.repeat(2)[:30]) ** 2  # noqa: E731
    pre.update_curvature(loss)
    assert pre.ready
    return params, pre, gen


def test_grafted_apply_is_each_tensors_solve_rescaled_to_its_gradient_norm():
    params, pre, gen = _preconditioner(0)
    raw = [torch.randn(p.shape, generator=gen) for p in params]
    for p, g in zip(params, raw):
        p.grad = g.clone()
    solved = pre.solve(raw)  # M^-1 g, shaped like the params
    assert pre.precondition_(graft=True)
    for p, g, d in zip(params, raw, solved):
        expected = d.double() * (torch.linalg.norm(g.double()) / torch.linalg.norm(d.double()))
        assert torch.allclose(p.grad.double(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("graft", [True, False])
def test_apply_reports_and_counts_a_non_finite_gradient(graft):
    """A NaN in one tensor's gradient: the apply returns False and counts the one block it sits in
    (and nothing on a finite step)."""
    params, pre, gen = _preconditioner(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    assert pre.precondition_(graft=graft)
    assert pre.counters["non_finite_gradient_blocks"] == 0
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    params[1].grad[3] = float("nan")
    assert not pre.precondition_(graft=graft)
    assert pre.counters["non_finite_gradient_blocks"] == 1


def test_float16_grafted_apply_reports_an_overflow_after_rounding_back():
    """float16 parameters: graft_ runs in float32 and the result is judged after rounding back to
    float16, so a grafted entry beyond float16's range (a raw gradient of entries 65,000, turned
    by M^-1 so that some entries grow past 65,504) is reported, not handed on as a finite step."""
    params, pre, gen = _preconditioner(2)
    half = [torch.nn.Parameter(p.detach().half()) for p in params]
    pre_half = Preconditioner(half, PreconditionerConfig(block_size=4, estimator="exact"))
    pre_half.load_state_dict(pre.state_dict())
    raw = [torch.randn(p.shape, generator=gen) for p in params]
    for p, g in zip(half, raw):
        p.grad = g.half()
    assert pre_half.precondition_(graft=True)
    assert all(p.grad.dtype == torch.float16 and torch.isfinite(p.grad).all() for p in half)
    raw[0] = torch.full(params[0].shape, 65000.0)
    for p, g in zip(half, raw):
        p.grad = g.half()
    turned = pre.solve([g.half().float() for g in raw])[0]  # float32, by hand
    grafted = turned * (torch.linalg.norm(raw[0]) / torch.linalg.norm(turned))
    assert grafted.abs().max() > 65504  # the case overflows float16 ...
    assert not pre_half.precondition_(graft=True)  # ... and the apply says so
