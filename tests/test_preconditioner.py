"""hsc.Preconditioner (docs/contract.md §4-5): refresh schedule, precondition_, stats, failed blocks, a GAN-like
two-player setup, the state_dict round trip, the spectral modes and the relative scale.

Expected factors are computed independently: Hessian blocks from torch.autograd.functional.hessian
and M^-1 from hsc.reference (the float64 definition of docs/contract.md §2-3).
"""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from curvature_helpers import (CHOLESKY, DT, diagonal_blocks, flat_loss, flat_params, full_hessian, regression_data,
                               tiny_mlp)
from hsc import HSC, BlockLayout, Preconditioner, PreconditionerConfig, ops, reference
from hsc.numerics import all_finite, finite_rows
from hsc.preconditioner import real_eigenvalues, relative_statistic


def quadratic(w: torch.Tensor, H: torch.Tensor, c: torch.Tensor):
    return lambda: 0.5 * (w - c) @ H @ (w - c)


def nan_curvature_at_entry_0(w: torch.Tensor):
    """A term with value 0 whose gradient at w[0] is +inf (d sqrt(u)/du at u = 0) and whose HVPs are
    NaN in entry 0 (0 * inf), so only the block holding w[0] gets non-finite curvature."""
    return torch.sqrt(w[0] - w[0].detach())


def block_diag_quadratic(seed: int, eigs):
    """b = 2 blocks with the given eigenvalue pairs, randomly rotated; returns (H, c)."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for pair in eigs:
        Q, _ = torch.linalg.qr(torch.randn(2, 2, generator=g, dtype=DT))
        blocks.append(Q @ torch.diag(torch.tensor(pair, dtype=DT)) @ Q.T)
    return torch.block_diag(*blocks), torch.randn(2 * len(eigs), generator=g, dtype=DT)


# ---- schedule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("update_every", [1, 3])
def test_update_curvature_refreshes_on_schedule(update_every):
    w = torch.randn(5, dtype=DT, requires_grad=True)
    evaluations = []

    def loss_fn():
        evaluations.append(1)
        return (w ** 4).sum()

    pre = Preconditioner([w], block_size=2, update_every=update_every)
    refreshed = [pre.update_curvature(loss_fn) for _ in range(10)]
    expected = [i % update_every == 0 for i in range(10)]
    assert refreshed == expected
    assert pre.counters["refreshes"] == sum(expected)
    assert len(evaluations) == sum(expected)  # the closure is only evaluated when due
    assert pre.stats()["calls"] == 10


# ---- precondition_ --------------------------------------------------------------------------------

def test_precondition_before_first_refresh_leaves_grads_unchanged():
    model = tiny_mlp()
    x, y = regression_data(model)
    ((model(x) - y) ** 2).mean().backward()
    before = [p.grad.clone() for p in model.parameters()]
    pre = Preconditioner(model.parameters(), block_size=4)
    pre.precondition_()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))


def test_solve_blocks_is_precondition_without_gather_and_scatter():
    """solve_blocks(layout.gather(g)) is layout.gather(solve(g)), bit for bit; it
    counts non-finite gradient blocks unless the caller says it checked them (finite=True)."""
    model = tiny_mlp()
    x, y = regression_data(model)
    loss_fn = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
    params = list(model.parameters())
    pre = Preconditioner(params, block_size=5, estimator="exact")
    assert torch.equal(pre.solve_blocks(torch.ones(pre.layout.num_blocks, 5)),
                       torch.ones(pre.layout.num_blocks, 5))  # before the first refresh: a copy
    pre.update_curvature(loss_fn)
    grads = torch.autograd.grad(loss_fn(), params)
    G = pre.layout.gather(grads)
    assert torch.equal(pre.solve_blocks(G), pre.layout.gather(pre.solve(grads)))
    G[1, 0] = float("nan")
    pre.solve_blocks(G, finite=True)
    assert pre.counters["non_finite_gradient_blocks"] == 0
    pre.solve_blocks(G)
    assert pre.counters["non_finite_gradient_blocks"] == 1


@pytest.mark.parametrize("estimator", ["exact", "probe"])
def test_precondition_rewrites_grads_with_m_inverse_g(estimator):
    model = tiny_mlp()
    x, y = regression_data(model)
    loss_fn = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
    params = list(model.parameters())
    pre = Preconditioner(params, block_size=7, **CHOLESKY, estimator=estimator, damping=1e-3, scale=0.5)
    assert pre.update_curvature(loss_fn)
    loss_fn().backward()
    grads = [p.grad.clone() for p in params]
    params[3].grad = None  # a parameter without a gradient is left without one
    pre.precondition_()
    assert params[3].grad is None

    layout = pre.layout
    via_solve = layout.scatter(ops.solve(pre.correction, layout.gather([*grads[:3], torch.zeros_like(grads[3])])))
    for p, expected in zip(params[:3], via_solve):
        assert torch.equal(p.grad, expected)
    if estimator == "exact":
        # Independently: M^-1 from the float64 reference on autograd's Hessian blocks.
        H = full_hessian(flat_loss(model, lambda fwd: ((fwd(x) - y) ** 2).mean()), flat_params(params))
        ref = reference.correct(diagonal_blocks(H, layout), damping=1e-3, scale=0.5)
        P = reference.solve(ref, layout.gather(grads))
        for p, expected in zip(params[:3], layout.scatter(P)[:3]):
            torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-12)
    changed = any(not torch.equal(p.grad, g) for p, g in zip(params[:3], grads))
    assert changed


# ---- stats ----------------------------------------------------------------------------------------

def test_stats_reports_status_damping_and_timings():
    w = torch.zeros(6, dtype=DT, requires_grad=True)
    # Blocks 0 and 2 positive definite; block 1 indefinite (eigenvalue -2), so its damping is raised.
    H, c = block_diag_quadratic(0, [(1.0, 3.0), (-2.0, 5.0), (0.5, 4.0)])
    pre = Preconditioner([w], **CHOLESKY, block_size=2, estimator="exact", damping=1e-4)
    s0 = pre.stats()
    assert s0["blocks"] == 3 and s0["block_size"] == 2 and s0["calls"] == 0
    assert set(s0["seconds"]) == {"hvp", "assembly", "communication", "factorisation", "apply"}
    pre.update_curvature(quadratic(w, H, c))
    w.grad = torch.ones(6, dtype=DT)
    pre.precondition_()
    s = pre.stats()
    assert s["status"] == {"factorised": 2, "damping_raised": 1, "non_finite": 0, "failed": 0}
    assert s["damping"]["min"] == pytest.approx(1e-4) and s["damping"]["median"] == pytest.approx(1e-4)
    assert s["damping"]["max"] > 2.0  # A = S + d I must be positive definite: d > 2
    assert s["damping"]["max"] == pytest.approx(float(pre.correction.damping[1]))
    assert set(s["seconds"]) == {"hvp", "assembly", "communication", "factorisation", "apply"}
    assert all(v >= 0 for v in s["seconds"].values())
    assert s["seconds"]["hvp"] > 0 and s["seconds"]["factorisation"] > 0 and s["seconds"]["apply"] > 0
    assert s["refreshes"] == 1 and s["calls"] == 1


# ---- failed blocks ------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator", ["exact", "probe"])
def test_nan_curvature_block_keeps_previous_factor(estimator):
    w = torch.zeros(6, dtype=DT, requires_grad=True)
    H1, c1 = block_diag_quadratic(1, [(1.0, 3.0), (2.0, 5.0), (0.5, 4.0)])
    H2, c2 = block_diag_quadratic(2, [(7.0, 9.0), (6.0, 8.0), (3.0, 10.0)])
    # ema 0: each refresh replaces the estimate, so refreshed blocks visibly change.
    pre = Preconditioner([w], **CHOLESKY, block_size=2, estimator=estimator, ema=0.0, update_every=1)
    pre.update_curvature(quadratic(w, H1, c1))
    old = ops.unpack(pre.correction.factor, 3)
    good2 = quadratic(w, H2, c2)
    pre.update_curvature(lambda: good2() + nan_curvature_at_entry_0(w))
    new = ops.unpack(pre.correction.factor, 3)
    assert torch.equal(new[0], old[0])  # block 0 (non-finite curvature) keeps its factor
    expected = reference.correct(diagonal_blocks(H2, pre.layout), damping=1e-4, scale=1.0).factor
    expected = ops.unpack(expected, 3)
    torch.testing.assert_close(new[1:], expected[1:], rtol=1e-10, atol=1e-12)  # the others refresh
    assert pre.counters["non_finite_estimate_blocks"] == 1
    # The step stays finite.
    w.grad = torch.autograd.grad(good2(), w)[0]
    pre.precondition_()
    assert bool(torch.isfinite(w.grad).all())


@pytest.mark.parametrize("estimator", ["exact", "probe"])
def test_failed_factorisation_keeps_previous_factor_and_counts_it(estimator):
    w = torch.zeros(6, dtype=DT, requires_grad=True)
    H1, c1 = block_diag_quadratic(3, [(1.0, 3.0), (2.0, 5.0), (0.5, 4.0)])
    H2, c2 = block_diag_quadratic(4, [(7.0, 9.0), (-6.0, 8.0), (3.0, 10.0)])  # block 1 indefinite
    # damping 0 and one try: an indefinite block cannot be factorised (status 3).
    pre = Preconditioner([w], **CHOLESKY, block_size=2, estimator=estimator, ema=0.0, update_every=1, damping=0.0,
                         max_tries=1)
    pre.update_curvature(quadratic(w, H1, c1))
    assert pre.correction.status.tolist() == [0, 0, 0]
    old = ops.unpack(pre.correction.factor, 3)
    pre.update_curvature(quadratic(w, H2, c2))
    assert pre.correction.status.tolist() == [0, 3, 0]
    new = ops.unpack(pre.correction.factor, 3)
    assert torch.equal(new[1], old[1])
    assert not torch.equal(new[0], old[0])
    assert pre.counters["kept_previous_factor"] == 1


def test_block_never_factorised_gets_the_current_fallback():
    """docs/contract.md §3: a block with status 3 and no factor of its own holds I / (1 + mu^2) for the mu of
    the refresh, also after mu changed (the factor buffer is refactorised in place)."""
    w = torch.zeros(6, dtype=DT, requires_grad=True)
    H, c = block_diag_quadratic(4, [(7.0, 9.0), (-6.0, 8.0), (3.0, 10.0)])  # block 1 indefinite
    pre = Preconditioner([w], **CHOLESKY, block_size=2, estimator="exact", ema=0.0, update_every=1, damping=0.0,
                         max_tries=1)
    pre.update_curvature(quadratic(w, H, c))
    assert pre.correction.status.tolist() == [0, 3, 0]
    torch.testing.assert_close(ops.unpack(pre.correction.factor, 3)[1], torch.eye(2, dtype=DT) / 2.0)
    pre.config.scale = 0.5
    pre.update_curvature(quadratic(w, H, c))
    assert pre.correction.status.tolist() == [0, 3, 0] and pre.counters["kept_previous_factor"] == 0
    torch.testing.assert_close(ops.unpack(pre.correction.factor, 3)[1], torch.eye(2, dtype=DT) / 1.25)


@pytest.mark.parametrize("estimator", ["exact", "probe"])
def test_block_with_nan_first_refresh_recovers_on_next_good_refresh(estimator):
    # docs/contract.md §3-5: a non-finite estimate gets the fallback (status 2) for that refresh. A later refresh
    # with finite curvature must factorise the block again; the NaN of the first refresh must not
    # stay in the running estimate forever (NaN * ema is NaN).
    w = torch.zeros(6, dtype=DT, requires_grad=True)
    H, c = block_diag_quadratic(5, [(1.0, 3.0), (2.0, 5.0), (0.5, 4.0)])
    good = quadratic(w, H, c)
    pre = Preconditioner([w], block_size=2, estimator=estimator, ema=0.5, update_every=1)
    pre.update_curvature(lambda: good() + nan_curvature_at_entry_0(w))
    assert pre.correction.status.tolist() == [2, 0, 0]
    assert pre.stats()["status"]["non_finite"] == 1
    for _ in range(3):
        pre.update_curvature(good)
    assert pre.correction.status[0].item() == 0, (
        f"block 0 is still {pre.correction.status.tolist()} after 3 finite refreshes; its estimate is "
        f"{pre.estimate[0].tolist()}")


# ---- a GAN-like two-player setup ---------------------------------------------------------------

def test_gan_players_exact_blocks_match_autograd_hessian():
    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(DT)
    D = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(DT)
    real, z = torch.randn(12, 2, dtype=DT), torch.randn(12, 2, dtype=DT)
    sp = torch.nn.functional.softplus

    def d_loss_with(d):  # the discriminator is called twice per loss
        return sp(-d(real)).mean() + sp(d(G(z).detach())).mean()

    def g_loss_with(g):  # the generator's loss goes through D
        return sp(-D(g(z))).mean()

    pre_d = Preconditioner(D.parameters(), block_size=5, estimator="exact")
    pre_g = Preconditioner(G.parameters(), block_size=3, estimator="exact")
    assert pre_d.update_curvature(lambda: d_loss_with(D))
    assert pre_g.update_curvature(lambda: g_loss_with(G))

    H_d = full_hessian(flat_loss(D, d_loss_with), flat_params(D.parameters()))
    H_g = full_hessian(flat_loss(G, g_loss_with), flat_params(G.parameters()))
    torch.testing.assert_close(pre_d.estimate, diagonal_blocks(H_d, pre_d.layout), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pre_g.estimate, diagonal_blocks(H_g, pre_g.layout), rtol=1e-10, atol=1e-10)

    # One preconditioned step for each player.
    for net, pre, loss_with in ((D, pre_d, d_loss_with), (G, pre_g, g_loss_with)):
        net.zero_grad()
        loss_with(net).backward()
        raw = [p.grad.clone() for p in net.parameters()]
        pre.precondition_()
        assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters())
        assert any(not torch.equal(p.grad, g) for p, g in zip(net.parameters(), raw))


# ---- checkpoints --------------------------------------------------------------------------------

def _train(model, pre, x, y, steps, lr=0.05):
    loss_fn = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
    for _ in range(steps):
        model.zero_grad()
        loss_fn().backward()
        pre.update_curvature(loss_fn)
        pre.precondition_()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(lr * p.grad)


def test_preconditioner_state_dict_round_trip_is_bit_identical():
    # The probe estimator (its sign generator is part of the state) and update_every = 3 with k = 4:
    # the resumed run is mid-interval, so the schedule position matters too.
    options = dict(block_size=6, estimator="probe", update_every=3, ema=0.8, scale=0.3, seed=11)
    model = tiny_mlp(seed=0)
    x, y = regression_data(model)
    pre = Preconditioner(model.parameters(), **options)
    _train(model, pre, x, y, steps=4)
    saved_model = copy.deepcopy(model.state_dict())
    saved_pre = copy.deepcopy(pre.state_dict())
    _train(model, pre, x, y, steps=5)

    resumed = tiny_mlp(seed=123)  # different initial weights, overwritten by the load
    resumed.load_state_dict(saved_model)
    pre2 = Preconditioner(resumed.parameters(), **{**options, "seed": 99})
    pre2.load_state_dict(saved_pre)
    _train(resumed, pre2, x, y, steps=5)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert pre2.calls == pre.calls and pre2.counters == pre.counters

    # The check has teeth: resuming the model alone (fresh preconditioner state) diverges from it.
    alone = tiny_mlp(seed=123)
    alone.load_state_dict(saved_model)
    _train(alone, Preconditioner(alone.parameters(), **options), x, y, steps=5)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), alone.parameters()))


def test_preconditioner_load_state_dict_rejects_other_layout():
    pre = Preconditioner([torch.zeros(10, dtype=DT, requires_grad=True)], block_size=4)
    other = Preconditioner([torch.zeros(10, dtype=DT, requires_grad=True)], block_size=5)
    with pytest.raises(ValueError, match="block"):
        other.load_state_dict(pre.state_dict())


@settings(max_examples=60)
@given(rows=st.integers(0, 6), cols=st.integers(0, 5), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_finite_rows_and_all_finite_agree_with_isfinite(rows, cols, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(rows, cols, 3, generator=gen).to(dtype) * 1e30
    if t.numel():
        bad = torch.rand(t.shape, generator=gen) < 0.1
        values = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
        t[bad] = values[torch.randint(0, 3, (int(bad.sum()),), generator=gen)]
    assert torch.equal(finite_rows(t), torch.isfinite(t).flatten(1).all(1))
    assert all_finite([t, torch.zeros(2, dtype=dtype)]) == bool(torch.isfinite(t).all())


# ---- spectral modes and the relative scale (docs/contract.md §2 "The relative scale", §5) -------

def test_real_eigenvalues_drops_exactly_the_padding_ones():
    # Blocks of 4 over tensors of 5 and 3 entries: block 0 real, block 1 one real slot + 3 padding,
    # block 2 three real slots + 1 padding. The real parts have true eigenvalues 1.0 too.
    layout = BlockLayout([torch.zeros(5), torch.zeros(3)], 4)
    assert layout.mask.sum(1).tolist() == [4, 1, 3]
    values = torch.tensor([[-2.0, 0.5, 1.0, 3.0],    # one true 1.0
                           [1.0, 1.0, 1.0, 1.0],     # the real 1.0 and 3 padding ones
                           [-0.25, 1.0, 1.0, 2.0]],  # a true 1.0 and a padding one
                          dtype=DT)
    kept = real_eigenvalues(values, layout.mask)
    assert sorted(kept.tolist()) == sorted([-2.0, 0.5, 1.0, 3.0, 1.0, -0.25, 1.0, 2.0])
    # A block without a decomposition (NaN row) is left out together with its padding.
    failed = values.clone()
    failed[1] = float("nan")
    assert sorted(real_eigenvalues(failed, layout.mask).tolist()) == sorted([-2.0, 0.5, 1.0, 3.0, -0.25, 1.0, 2.0])
    failed[2] = float("nan")
    assert sorted(real_eigenvalues(failed, layout.mask).tolist()) == [-2.0, 0.5, 1.0, 3.0]


@pytest.mark.parametrize("values,expected", [
    ([-3.0, 1.0, 2.0, 5.0], 2.0),  # median of |lambda| (the lower one for an even count)
    ([4.0, -1.0, -9.0], 4.0),
    ([0.0, 0.0, 0.0, -1e10], torch.finfo(DT).eps * 1e10),  # floored at eps max|lambda|
    ([0.0, 0.0], 1.0),  # every eigenvalue 0
    ([], 1.0),  # none
])
def test_relative_statistic(values, expected):
    assert relative_statistic(torch.tensor(values, dtype=DT)) == expected


def test_relative_statistic_floor_uses_the_dtype_epsilon():
    values = torch.tensor([0.0, 0.0, 1e10], dtype=torch.float32)
    assert relative_statistic(values) == pytest.approx(torch.finfo(torch.float32).eps * 1e10, rel=1e-6)


def _independent_real_eigenvalues(H: torch.Tensor, layout) -> torch.Tensor:
    """The eigenvalues of each diagonal block's real part, by torch.linalg.eigvalsh."""
    out = []
    for k in range(layout.num_blocks):
        rows = layout.index[k][layout.mask[k]]
        out.append(torch.linalg.eigvalsh(H[rows][:, rows]))
    return torch.cat(out)


def _lower_median(values: torch.Tensor) -> float:
    return float(values.sort().values[(values.numel() - 1) // 2])


def _indefinite_quadratic(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(n, n, generator=g, dtype=DT)
    return (R + R.T) / 2 + 0.3 * torch.eye(n, dtype=DT), torch.randn(n, generator=g, dtype=DT)


@pytest.mark.parametrize("mode", ["spectral", "saddle_free", "saddle_free_root"])
def test_relative_scale_is_rho_times_the_median_real_eigenvalue(mode):
    # n = 10 in blocks of 4: the last block has 2 padding slots, whose eigenvalues 1.0 must not count.
    # H is scaled so that mu is far from 1 (checked: the fractions below mu and below 1 differ).
    H, c = _indefinite_quadratic(10, seed=7)
    H = 5 * H
    w = torch.zeros(10, dtype=DT, requires_grad=True)
    pre = Preconditioner([w], PreconditionerConfig(block_size=4, estimator="exact", mode=mode,
                                                   scale_rule="relative", scale=0.8))
    assert pre.update_curvature(quadratic(w, H, c))
    lam = _independent_real_eigenvalues(H, pre.layout)
    mu = 0.8 * _lower_median(lam.abs())
    assert pre.scale == pytest.approx(mu, rel=1e-12)
    torch.testing.assert_close(pre.eigenvalues.sort().values, lam.sort().values, rtol=1e-12, atol=1e-12)
    # the factor is formed at that mu: M^-1 g against the float64 reference
    g = torch.linspace(-1, 1, 10, dtype=DT)
    ref = reference.corrected_inverse_from_eigh(reference.eigh(diagonal_blocks(H, pre.layout)), scale=mu, mode=mode)
    expected = pre.layout.scatter(torch.einsum("kij,kj->ki", ref, pre.layout.gather([g])))[0]
    torch.testing.assert_close(pre.solve([g])[0], expected, rtol=1e-10, atol=1e-12)

    s = pre.stats()
    assert s["scale"] == pre.scale and s["hvps"] == 10 and s["spectra"] == [s["spectrum"]]
    spectrum = s["spectrum"]
    assert spectrum["eigenvalues"] == 10 and spectrum["scale"] == pre.scale
    assert spectrum["min"] == pytest.approx(float(lam.min()), rel=1e-12)
    assert spectrum["max"] == pytest.approx(float(lam.max()), rel=1e-12)
    assert spectrum["median"] == pytest.approx(_lower_median(lam), rel=1e-12)
    assert spectrum["fraction_negative"] == float((lam < 0).sum()) / 10
    assert spectrum["fraction_below_scale"] == float((lam.abs() < mu).sum()) / 10
    assert 0 < spectrum["fraction_negative"] < 1 and 0 < spectrum["fraction_below_scale"] < 1  # not vacuous
    assert spectrum["fraction_below_scale"] != float((lam.abs() < 1).sum()) / 10


def test_absolute_scale_rule_keeps_mu_and_still_reports_the_spectrum():
    H, c = _indefinite_quadratic(10, seed=8)
    w = torch.zeros(10, dtype=DT, requires_grad=True)
    pre = Preconditioner([w], block_size=4, estimator="exact", mode="saddle_free", scale_rule="absolute", scale=0.7, update_every=1)
    for _ in range(2):
        pre.update_curvature(quadratic(w, H, c))
    assert pre.scale == 0.7 and len(pre.stats()["spectra"]) == 2 and pre.stats()["spectrum"]["scale"] == 0.7


def test_spectral_refresh_keeps_the_previous_factor_of_a_failed_block_and_leaves_it_out_of_mu():
    # docs/contract.md §5: the spectral route refactorises in place with keep_failed. max_sweeps 1:
    # a diagonal block converges in its first sweep, a rotated one needs a second (status 3).
    # Refresh 1: every block diagonal; refresh 2: block 1 rotated, so it keeps its factor of
    # refresh 1 (although mu changed) and its eigenvalues stay out of the median.
    w = torch.zeros(6, dtype=DT, requires_grad=True)
    c = torch.zeros(6, dtype=DT)
    H1 = torch.diag(torch.tensor([1.0, 3.0, 2.0, 5.0, 0.5, 4.0], dtype=DT))
    H2, _ = block_diag_quadratic(2, [(7.0, -9.0), (6.0, 8.0), (-3.0, 10.0)])
    H2[:2, :2] = torch.diag(torch.tensor([7.0, -9.0], dtype=DT))
    H2[4:, 4:] = torch.diag(torch.tensor([-3.0, 10.0], dtype=DT))
    pre = Preconditioner([w], block_size=2, estimator="exact", ema=0.0, update_every=1, mode="saddle_free_root",
                         scale_rule="relative", scale=0.5, max_sweeps=1)
    pre.update_curvature(quadratic(w, H1, c))
    assert pre.correction.status.tolist() == [0, 0, 0]
    old = ops.unpack(pre.correction.factor, 3)
    pre.update_curvature(quadratic(w, H2, c))
    assert pre.correction.status.tolist() == [0, 3, 0] and pre.counters["kept_previous_factor"] == 1
    new = ops.unpack(pre.correction.factor, 3)
    assert torch.equal(new[1], old[1])
    mu = 0.5 * _lower_median(torch.tensor([7.0, 9.0, 3.0, 10.0], dtype=DT))
    assert pre.scale == mu and pre.stats()["spectrum"]["eigenvalues"] == 4
    expected = reference.corrected_inverse_from_eigh(reference.eigh(diagonal_blocks(H2, pre.layout)), scale=mu,
                                                     mode="saddle_free_root")
    torch.testing.assert_close(new[[0, 2]], expected[[0, 2]], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["cholesky", "singular_safe"])
@pytest.mark.parametrize("where", ["Preconditioner", "PreconditionerConfig", "HSC"])
def test_relative_scale_in_a_non_spectral_mode_is_refused(mode, where):
    params = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="scale_rule"):
        if where == "Preconditioner":
            Preconditioner(params, mode=mode, scale_rule="relative")
        elif where == "HSC":
            HSC(params, lr=0.1, mode=mode, scale_rule="relative")
        else:
            PreconditionerConfig(mode=mode, scale_rule="relative").validate()


def test_config_object_or_fields_not_both():
    params = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(TypeError, match="not both"):
        Preconditioner(params, PreconditionerConfig(), block_size=3)
    with pytest.raises(TypeError, match="PreconditionerConfig"):
        Preconditioner(params, {"block_size": 3})
    config = PreconditionerConfig(block_size=3)
    pre = Preconditioner(params, config)
    config.block_size = 5  # the preconditioner holds its own copy
    assert pre.config.block_size == 3 and pre.layout.block_size == 3


def test_refresh_if_due_follows_the_schedule_and_equals_update_curvature():
    H, c = _indefinite_quadratic(7, seed=9)
    w = torch.zeros(7, dtype=DT, requires_grad=True)
    loss_fn = quadratic(w, H, c)
    a = Preconditioner([w], block_size=3, update_every=2, samples=2, seed=3)
    b = Preconditioner([w], block_size=3, update_every=2, samples=2, seed=3)
    due = []
    for _ in range(5):
        grads = torch.autograd.grad(loss_fn(), [w], create_graph=True)
        due.append(a.refresh_if_due(grads))
        b.update_curvature(loss_fn)
    assert due == [True, False, True, False, True] and a.calls == b.calls == 5
    assert torch.equal(a.estimate, b.estimate) and torch.equal(a.correction.factor, b.correction.factor)


def test_spectral_relative_state_dict_round_trip_keeps_scale_and_spectra():
    options = dict(block_size=6, estimator="probe", update_every=3, ema=0.8, scale=0.3, seed=11,
                   mode="saddle_free_root", scale_rule="relative")
    model = tiny_mlp(seed=0)
    x, y = regression_data(model)
    pre = Preconditioner(model.parameters(), **options)
    _train(model, pre, x, y, steps=4)
    saved_model = copy.deepcopy(model.state_dict())
    saved_pre = copy.deepcopy(pre.state_dict())
    assert len(saved_pre["spectra"]) == 2 and saved_pre["scale"] == pre.scale != 0.3
    _train(model, pre, x, y, steps=5)

    resumed = tiny_mlp(seed=123)
    resumed.load_state_dict(saved_model)
    pre2 = Preconditioner(resumed.parameters(), **{**options, "seed": 99})
    assert pre2.scale == 0.3 and pre2.spectra == []
    pre2.load_state_dict(saved_pre)
    assert pre2.scale == saved_pre["scale"] and pre2.spectra == saved_pre["spectra"]
    assert pre2.stats()["spectrum"] == saved_pre["spectra"][-1]
    _train(resumed, pre2, x, y, steps=5)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert pre2.scale == pre.scale and pre2.spectra == pre.spectra and len(pre.spectra) == 3
