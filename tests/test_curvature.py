"""Block-diagonal curvature estimators (docs/contract.md §4): hsc.curvature.exact_blocks / probe_hvps (plain and
coloured) and the compiled assembly op hsc::accumulate_probes.

References: the dense Hessian from torch.autograd.functional.hessian, cut into blocks by explicit
loops (curvature_helpers.diagonal_blocks), and a pure-torch einsum version of the assembly.
"""
from __future__ import annotations

import pytest
import torch

from curvature_helpers import (DT, block_separable_loss, diagonal_blocks, einsum_accumulate, flat_loss,
                               flat_params, full_hessian, off_diagonal_energy, regression_data, tiny_convnet,
                               tiny_mlp)
from hsc import Preconditioner, ops
from hsc.curvature import draw_signs, exact_blocks, gauss_newton_blocks, probe_hvps
from hsc.layout import BlockLayout

# float64 throughout: HVPs and autograd's Hessian are the same derivatives computed along different
# routes, so they agree to a few ulps of the entries' magnitude (O(1) here); 1e-10 leaves room.
TIGHT = dict(rtol=1e-10, atol=1e-10)


def grads_with_graph(loss_fn, params):
    loss = loss_fn()
    return torch.autograd.grad(loss, params, create_graph=True)


def probe_estimate(layout, grads, params, *, samples, seed, chunk_size=None):
    """One refresh of the probe estimator from scratch: probe_hvps + accumulate_probes(first=True)."""
    gen = torch.Generator().manual_seed(seed)
    signs = draw_signs(gen, samples, layout.num_blocks, grads[0].dtype, grads[0].device)
    hvps = probe_hvps(layout, grads, params, signs, chunk_size=chunk_size)
    b = layout.block_size
    state = torch.empty(layout.num_blocks, b, b, dtype=hvps.dtype)
    accepted = ops.accumulate_probes(state, hvps.detach(), signs, layout.mask, ema=0.5, first=True)
    assert bool(accepted.all())
    return state


# ---- exact --------------------------------------------------------------------------------------

MODELS = {"mlp": tiny_mlp, "convnet": tiny_convnet}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("block_size", [1, 3, 7, 16, 64])
def test_exact_equals_autograd_hessian_blocks(model_name, block_size):
    model = MODELS[model_name]()
    x, y = regression_data(model)
    params = list(model.parameters())
    layout = BlockLayout(params, block_size)
    # chunk_size 5 splits the unit vectors over several batched HVP calls; None is one call.
    for chunk_size in (None, 5):
        got = exact_blocks(layout, grads_with_graph(lambda: ((model(x) - y) ** 2).mean(), params), params,
                           chunk_size=chunk_size)
        H = full_hessian(flat_loss(model, lambda fwd: ((fwd(x) - y) ** 2).mean()), flat_params(params))
        expected = diagonal_blocks(H, layout)
        torch.testing.assert_close(got, expected, **TIGHT)
    if block_size > 1:
        # These cuts do contain padding slots (the tensors' numels are not all multiples of b), so
        # the identity rows/columns are part of what was compared.
        assert layout.num_padding > 0


@pytest.mark.parametrize("estimator", ["exact", "probe"])
def test_float32_estimate_is_float32_and_close_to_float64_hessian(estimator):
    model = tiny_mlp()
    x, y = regression_data(model)
    params64 = list(model.parameters())
    layout = BlockLayout(params64, 6)
    if estimator == "exact":
        H = full_hessian(flat_loss(model, lambda fwd: ((fwd(x) - y) ** 2).mean()), flat_params(params64))
        expected = diagonal_blocks(H, layout)
    else:  # the same sign draws (same seed) computed in float64
        grads64 = grads_with_graph(lambda: ((model(x) - y) ** 2).mean(), params64)
        expected = probe_estimate(layout, grads64, params64, samples=2, seed=0)
    model32, x32, y32 = model.float(), x.float(), y.float()
    params = list(model32.parameters())
    grads = grads_with_graph(lambda: ((model32(x32) - y32) ** 2).mean(), params)
    if estimator == "exact":
        got = exact_blocks(layout, grads, params)
    else:
        got = probe_estimate(layout, grads, params, samples=2, seed=0)
    assert got.dtype == torch.float32
    # float32 forward/backward through a small MLP: relative errors ~1e-6 on O(1) entries.
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


# ---- probe: exact recovery without off-diagonal coupling ---------------------------------------

@pytest.mark.parametrize("block_size,numel,chunk_size", [(1, 5, None), (4, 16, None), (5, 23, None),
                                                         (8, 29, 3)])
def test_probe_recovers_block_separable_loss_with_one_draw(block_size, numel, chunk_size):
    g = torch.Generator().manual_seed(block_size)
    w = torch.randn(numel, generator=g, dtype=DT, requires_grad=True)
    loss = block_separable_loss(w, block_size, seed=3)
    layout = BlockLayout([w], block_size)
    H = full_hessian(lambda t: block_separable_loss(t, block_size, seed=3)(), w)
    expected = diagonal_blocks(H, layout)
    # The reference itself: the loss really is block diagonal (so the probe has nothing to cancel).
    assert torch.allclose(torch.block_diag(*expected)[:numel, :numel], H, atol=1e-12)
    got = probe_estimate(layout, grads_with_graph(loss, [w]), [w], samples=1, seed=0, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, **TIGHT)


def test_probe_recovers_independent_subnetworks_with_one_draw():
    # Three sub-networks, each with a single weight tensor that fits one block (b = 6: blocks of 6,
    # 6 and 5 + 1 padding slot), fed the same input: no parameter of one touches another's output.
    torch.manual_seed(0)
    weights = [torch.randn(2, 3, dtype=DT, requires_grad=True), torch.randn(3, 2, dtype=DT, requires_grad=True),
               torch.randn(1, 5, dtype=DT, requires_grad=True)]
    x3, x2, x5 = (torch.randn(10, d, dtype=DT) for d in (3, 2, 5))
    targets = [torch.randn(10, 2, dtype=DT), torch.randn(10, 3, dtype=DT), torch.randn(10, 1, dtype=DT)]

    def loss_of(ws):
        outs = [torch.tanh(x3 @ ws[0].T), torch.tanh(x2 @ ws[1].T), torch.tanh(x5 @ ws[2].T)]
        return sum(((o - t) ** 2).mean() for o, t in zip(outs, targets))

    layout = BlockLayout(weights, 6)
    assert layout.num_blocks == 3 and layout.num_padding == 1

    def flat(theta):
        pieces = theta.split([6, 6, 5])
        return loss_of([pieces[0].view(2, 3), pieces[1].view(3, 2), pieces[2].view(1, 5)])

    expected = diagonal_blocks(full_hessian(flat, flat_params(weights)), layout)
    got = probe_estimate(layout, grads_with_graph(lambda: loss_of(weights), weights), weights, samples=1, seed=7)
    torch.testing.assert_close(got, expected, **TIGHT)


# ---- probe: Monte Carlo error on a coupled quadratic --------------------------------------------

def test_probe_error_on_dense_quadratic_falls_like_inverse_sqrt_samples():
    # Dense SPD H (n = 48, b = 8, N = 6 blocks): every off-diagonal block couples.
    g = torch.Generator().manual_seed(0)
    n, b = 48, 8
    R = torch.randn(n, n, generator=g, dtype=DT)
    H = R @ R.T / n + torch.eye(n, dtype=DT)
    w = torch.randn(n, generator=g, dtype=DT, requires_grad=True)
    loss = lambda: 0.5 * w @ H @ w  # noqa: E731
    layout = BlockLayout([w], b)
    truth = diagonal_blocks(H, layout)
    # docs/contract.md §4: error of one draw = sum_{m != k} eps_m Sym(H_km), eps_m independent signs, so the
    # expected squared Frobenius error of the S-draw average is off_diagonal_energy / S.
    per_draw = float(off_diagonal_energy(H, layout).sum())
    grads = grads_with_graph(loss, [w])
    seeds = range(5)
    measured = {}
    for samples in (4, 64):
        sq = [float((probe_estimate(layout, grads, [w], samples=samples, seed=s) - truth).pow(2).sum())
              for s in seeds]
        measured[samples] = sum(sq) / len(sq)
        ratio = measured[samples] / (per_draw / samples)
        # The mean over 5 seeds x 6 blocks of a sum of many independent sign terms: its relative
        # spread is ~10 %; [0.5, 2] only catches a wrong scale (bias, missing 1/S, wrong symmetrise).
        assert 0.5 < ratio < 2.0, f"samples={samples}: mean squared error {measured[samples]:.4g}, " \
                                  f"expected {per_draw / samples:.4g} (ratio {ratio:.3f})"
    rms4, rms64 = measured[4] ** 0.5, measured[64] ** 0.5
    # 1/sqrt(S) predicts rms64 / rms4 = 0.25.
    assert rms64 < 0.5 * rms4, f"rms error {rms4:.4g} at 4 samples, {rms64:.4g} at 64"


# ---- hsc::accumulate_probes ------------------------------------------------------------------------

def random_probe_inputs(S=3, N=5, b=4, dtype=DT, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(N, b, b, generator=g, dtype=dtype)
    state = state + state.transpose(1, 2)
    hvps = torch.randn(S, b, N, b, generator=g, dtype=dtype)
    signs = (torch.randint(0, 2, (S, N), generator=g) * 2 - 1).to(dtype)
    mask = torch.rand(N, b, generator=g) > 0.3
    mask[0] = True  # at least one block without padding
    return state, hvps, signs, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ema", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("first", [True, False])
def test_accumulate_probes_matches_einsum(dtype, ema, first):
    state, hvps, signs, mask = random_probe_inputs(dtype=dtype, seed=int(ema * 10) + first)
    expected, expected_ok = einsum_accumulate(state.double(), hvps.double(), signs, mask, ema, first)
    ok = ops.accumulate_probes(state, hvps, signs, mask, ema=ema, first=first)
    assert ok.dtype == torch.bool and ok.shape == (5,)
    assert bool(ok.all()) and bool(expected_ok.all())
    # float32: a handful of roundings on O(1) values.
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.double(), expected, **tol)


def test_accumulate_probes_padding_is_identity():
    state, hvps, signs, mask = random_probe_inputs(S=2, N=4, b=5, seed=11)
    mask[1, 3:] = False
    mask[2, 0] = False  # a padding slot not at the end: the op must not assume a suffix
    ops.accumulate_probes(state, hvps, signs, mask, ema=0.5, first=True)
    pad = ~(mask[:, :, None] & mask[:, None, :])
    eye = torch.eye(5, dtype=DT).expand(4, 5, 5)
    assert torch.equal(state[pad], eye[pad])
    # Then an EMA step keeps them at the identity (up to the rounding of ema*1 + (1-ema)*1).
    ops.accumulate_probes(state, torch.randn_like(hvps), signs, mask, ema=0.7, first=False)
    torch.testing.assert_close(state[pad], eye[pad], rtol=0, atol=1e-15)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_accumulate_probes_non_finite_block_keeps_state(bad):
    state, hvps, signs, mask = random_probe_inputs(S=2, N=5, b=4, seed=5)
    mask[:] = True
    mask[4, 3] = False
    hvps[1, 2, 1, 0] = bad          # block 1, real row 0
    hvps[0, 0, 3, 2] = bad          # block 3, real row 2
    before = state.clone()
    expected, expected_ok = einsum_accumulate(before, hvps, signs, mask, 0.6, False)
    ok = ops.accumulate_probes(state, hvps, signs, mask, ema=0.6, first=False)
    assert ok.tolist() == [True, False, True, False, True] == expected_ok.tolist()
    assert torch.equal(state[[1, 3]], before[[1, 3]])
    torch.testing.assert_close(state, expected, rtol=1e-12, atol=1e-12)


def test_accumulate_probes_non_finite_block_on_first_is_written():
    state, hvps, signs, mask = random_probe_inputs(S=1, N=3, b=3, seed=2)
    mask[:] = True
    hvps[0, 1, 2, 1] = float("nan")  # block 2
    ok = ops.accumulate_probes(state, hvps, signs, mask, ema=0.9, first=True)
    assert ok.tolist() == [True, True, False]
    assert not bool(torch.isfinite(state[2]).all())  # written (correct() then reports status 2)
    expected, _ = einsum_accumulate(state, hvps, signs, mask, 0.9, True)
    torch.testing.assert_close(state[:2], expected[:2], rtol=1e-12, atol=1e-12)


def test_accumulate_probes_non_finite_at_padding_only_is_accepted():
    # A padding slot's estimate is the identity by definition (docs/contract.md §1), whatever the HVP says there.
    state, hvps, signs, mask = random_probe_inputs(S=2, N=3, b=4, seed=8)
    mask[:] = True
    mask[1, 3] = False
    hvps[0, 0, 1, 3] = float("nan")  # row 3 of block 1: padding
    hvps[1, 3, 1, 0] = float("inf")  # probe 3 (padding column) of block 1
    expected, _ = einsum_accumulate(state.clone(), torch.nan_to_num(hvps, nan=0.0, posinf=0.0), signs, mask,
                                    0.5, False)
    ok = ops.accumulate_probes(state, hvps, signs, mask, ema=0.5, first=False)
    assert bool(ok.all())
    torch.testing.assert_close(state, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("first", [True, False])
def test_accumulate_probes_opcheck(dtype, first):
    state, hvps, signs, mask = random_probe_inputs(dtype=dtype, seed=4)
    torch.library.opcheck(torch.ops.hsc.accumulate_probes.default, (state, hvps, signs, mask, 0.25, first))


def _bad_args():
    """(id, mutate(state, hvps, signs, mask, ema) -> new args, exception, regex naming the argument)."""
    S, N, b = 3, 5, 4
    return [
        ("state_2d", lambda st, h, s, m, e: (st[0], h, s, m, e), ValueError, "state"),
        ("state_not_square", lambda st, h, s, m, e: (st[:, :, :3].contiguous(), h, s, m, e), ValueError, "state"),
        ("state_int", lambda st, h, s, m, e: (st.long(), h, s, m, e), TypeError, "state"),
        ("state_non_contiguous", lambda st, h, s, m, e: (st.transpose(1, 2), h, s, m, e), ValueError,
         "state.*contiguous"),
        ("hvps_wrong_N", lambda st, h, s, m, e: (st, h[:, :, :N - 1].contiguous(), s, m, e), ValueError, "hvps"),
        ("hvps_3d", lambda st, h, s, m, e: (st, h[0], s, m, e), ValueError, "hvps"),
        ("hvps_dtype", lambda st, h, s, m, e: (st, h.float(), s, m, e), TypeError, "hvps"),
        ("signs_wrong_S", lambda st, h, s, m, e: (st, h, s[:S - 1], m, e), ValueError, "signs"),
        ("signs_wrong_N", lambda st, h, s, m, e: (st, h, s[:, :N - 1], m, e), ValueError, "signs"),
        ("mask_wrong_shape", lambda st, h, s, m, e: (st, h, s, m[:, :b - 1], e), ValueError, "mask"),
        ("mask_not_bool", lambda st, h, s, m, e: (st, h, s, m.double(), e), TypeError, "mask"),
        ("ema_negative", lambda st, h, s, m, e: (st, h, s, m, -0.1), ValueError, "ema"),
        ("ema_one", lambda st, h, s, m, e: (st, h, s, m, 1.0), ValueError, "ema"),
        ("ema_nan", lambda st, h, s, m, e: (st, h, s, m, float("nan")), ValueError, "ema"),
    ]


@pytest.mark.parametrize("case", _bad_args(), ids=lambda c: c[0])
def test_accumulate_probes_bad_arguments_name_the_argument(case):
    _, mutate, exc, pattern = case
    state, hvps, signs, mask = random_probe_inputs()
    st, h, s, m, e = mutate(state, hvps, signs, mask, 0.5)
    before = st.clone()
    with pytest.raises(exc, match=pattern):
        ops.accumulate_probes(st, h, s, m, ema=e, first=False)
    assert torch.equal(st, before)  # a rejected call writes nothing


# ---- parameters the loss does not use, or uses linearly -----------------------------------------

@pytest.mark.parametrize("estimator", ["exact", "probe"])
@pytest.mark.parametrize("v_term", ["unused", "linear"])
def test_estimators_give_zero_curvature_for_unused_or_linear_parameters(estimator, v_term):
    # The gradient of a loss with respect to v has no autograd graph when v is unused (None,
    # replaced by zeros) or enters linearly (a constant); its Hessian rows are then exactly 0.
    # (A GAN player's parameter that one loss does not touch, a last bias under a linear loss...)
    from hsc import Preconditioner

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, generator=g, dtype=DT, requires_grad=True)
    v = torch.randn(3, generator=g, dtype=DT, requires_grad=True)
    c = torch.randn(3, generator=g, dtype=DT)

    def loss_of(w_, v_):
        loss = (w_ ** 4).sum() + torch.cosh(w_).sum()  # separable: the probe is exact here
        return loss + (v_ @ c if v_term == "linear" else 0.0)

    pre = Preconditioner([w, v], block_size=2, estimator=estimator)
    pre.update_curvature(lambda: loss_of(w, v))
    H = full_hessian(lambda t: loss_of(t[:4], t[4:]), flat_params([w, v]))
    torch.testing.assert_close(pre.estimate, diagonal_blocks(H, pre.layout), **TIGHT)


# ---- coloured: no aliasing between neighbouring tiles -------------------------------------------

def tile_coupled_quadratic(shape, patch, radius: int, seed: int):
    """A symmetric H over an image ``shape`` ([1, C, H, W]) whose entry (i, j) is nonzero only where
    the pixels of i and j lie in tiles ``patch`` within ``radius`` tiles of each other in both
    directions (same tile included), from the entries' coordinates (not the layout); and a centre c."""
    _, C, height, width = shape
    ph, pw = patch
    n = C * height * width
    flat = torch.arange(n)
    ty, tx = (flat // width) % height // ph, flat % width // pw
    near = ((ty[:, None] - ty[None, :]).abs() <= radius) & ((tx[:, None] - tx[None, :]).abs() <= radius)
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(n, n, generator=g, dtype=DT)
    H = torch.where(near, (R + R.T) / 2, 0.0) + 3 * torch.eye(n, dtype=DT)
    return H, torch.randn(n, generator=g, dtype=DT)


def coloured_estimate(layout, grads, params, colours, *, seed=0, chunk_size=None):
    """One draw of the coloured estimator from scratch (probe_hvps with colours, then the assembly)."""
    signs = draw_signs(torch.Generator().manual_seed(seed), 1, layout.num_blocks, DT, "cpu")
    hvps = probe_hvps(layout, grads, params, signs, chunk_size=chunk_size, colours=colours)
    b = layout.block_size
    state = torch.empty(layout.num_blocks, b, b, dtype=DT)
    ops.accumulate_probes(state, hvps.detach(), signs, layout.mask, ema=0.5, first=True)
    return state


@pytest.mark.parametrize("radius,chunk_size", [(1, None), (1, 2), (2, None)])
def test_coloured_probes_recover_tile_coupled_blocks_from_one_draw(radius, chunk_size):
    # An 8 x 10 image of 2 channels in 2 x 2 tiles, b = 3 (3 blocks a tile, one padding slot): H
    # couples tiles within the radius. Blocks of one colour are further apart, so one draw is
    # exact; plain probes alias every neighbour into the estimate, and colours of a smaller
    # radius alias the tiles between the two radii.
    shape, patch = (1, 2, 8, 10), (2, 2)
    H, c = tile_coupled_quadratic(shape, patch, radius, seed=radius)
    img = torch.zeros(shape, dtype=DT, requires_grad=True)
    loss = lambda: 0.5 * (img.reshape(-1) - c) @ H @ (img.reshape(-1) - c)  # noqa: E731
    layout = BlockLayout([img], 3, patch=patch)
    expected = diagonal_blocks(H, layout)
    grads = grads_with_graph(loss, [img])
    got = coloured_estimate(layout, grads, [img], layout.block_colours(radius), chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, **TIGHT)
    plain = probe_estimate(layout, grads, [img], samples=1, seed=0)
    assert (plain - expected).abs().max() > 0.1
    smaller = coloured_estimate(layout, grads, [img], layout.block_colours(radius - 1))
    assert (smaller - expected).abs().max() > 0.1


def test_coloured_estimator_in_the_preconditioner_and_its_hvp_count():
    shape, patch = (1, 2, 8, 10), (2, 2)
    H, c = tile_coupled_quadratic(shape, patch, 1, seed=5)
    img = torch.zeros(shape, dtype=DT, requires_grad=True)
    loss = lambda: 0.5 * (img.reshape(-1) - c) @ H @ (img.reshape(-1) - c)  # noqa: E731
    coloured = Preconditioner([img], block_size=3, patch=patch, estimator="coloured", colour_radius=1, samples=2)
    assert coloured.update_curvature(loss)
    colour_count = 4 * 3  # (r + 1)^2 tile positions x 3 blocks a tile
    assert coloured.stats()["hvps"] == 2 * 3 * colour_count  # samples x b x C
    torch.testing.assert_close(coloured.estimate, diagonal_blocks(H, coloured.layout), **TIGHT)
    # plain probes at the same HVP count (samples = C) are still not exact: they average the
    # aliasing down instead of avoiding it
    probe = Preconditioner([img], block_size=3, patch=patch, estimator="probe", samples=2 * colour_count)
    probe.update_curvature(loss)
    assert probe.stats()["hvps"] == coloured.stats()["hvps"]
    assert (probe.estimate - diagonal_blocks(H, probe.layout)).abs().max() > 0.05


# ---- the Gauss-Newton estimator ---------------------------------------------------------------------

def _gauss_newton_dense(model: torch.nn.Module, x: torch.Tensor, loss_of_outputs) -> torch.Tensor:
    """J^T H J written out: the Jacobian of the flat outputs in the flat parameters (torch.func),
    the Hessian of the loss in the flat outputs (autograd), in float64."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = flat_params(list(model.parameters()))

    def outputs_of(flat):
        pieces = dict(zip(names, (t.view(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return torch.func.functional_call(model, pieces, (x,)).reshape(-1)

    J = torch.func.jacrev(outputs_of)(theta)
    o = outputs_of(theta).detach()
    H = torch.autograd.functional.hessian(lambda out: loss_of_outputs(out.view(len(x), -1)), o)
    return J.T @ H @ J


def _small_problem(activation: torch.nn.Module, k: int, seed: int, loss_name: str):
    """A 5 -> 7 -> k network on 6 rows in float64 and one of three losses of its outputs: a convex
    loss of each output (a GAN discriminator's), cross entropy, a non-convex cubic."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), activation, torch.nn.Linear(7, k)).to(DT)
    x = torch.randn(6, 5, dtype=DT)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    losses = {"softplus": lambda o: torch.nn.functional.softplus(-o).mean(),
              "cross_entropy": lambda o: torch.nn.functional.cross_entropy(o, labels),
              "cubic": lambda o: (o ** 3 - o).sum() / 10}
    return model, x, losses[loss_name]


@pytest.mark.parametrize("activation,k,loss_name", [
    (torch.nn.LeakyReLU(0.2), 1, "softplus"), (torch.nn.Tanh(), 3, "cross_entropy"), (torch.nn.Tanh(), 2, "cubic")])
def test_gauss_newton_blocks_are_the_blocks_of_j_transpose_h_j(activation, k, loss_name):
    """Against J^T H J built densely: a convex loss of one output per row (a GAN discriminator's),
    cross entropy over 3 outputs per row, and a non-convex loss (negative curvature in the
    outputs: the blocks are indefinite)."""
    model, x, loss_of = _small_problem(activation, k, 1, loss_name)
    params = list(model.parameters())
    layout = BlockLayout(params, 4)
    outputs = model(x)
    blocks, products = gauss_newton_blocks(layout, outputs, loss_of(outputs), params)
    expected = diagonal_blocks(_gauss_newton_dense(model, x, loss_of), layout)
    torch.testing.assert_close(blocks, expected, rtol=1e-10, atol=1e-12)
    # one product per row and output, but cross entropy's Hessian in the logits is singular in
    # every row (adding a constant to a row's logits changes nothing): no product for that direction
    assert products == 6 * (k - 1 if loss_name == "cross_entropy" else k)
    if loss_name == "cubic":
        assert float(torch.linalg.eigvalsh(blocks).min()) < -1e-3


def test_gauss_newton_blocks_are_the_hessian_blocks_of_a_piecewise_linear_discriminator():
    """A LeakyReLU network is linear in each layer's weights within its activation pattern, so
    the Hessian's diagonal blocks (each within one tensor) are the Gauss-Newton matrix's."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LeakyReLU(0.2), torch.nn.Linear(6, 6),
                                torch.nn.LeakyReLU(0.2), torch.nn.Linear(6, 1)).to(DT)
    real, fake = torch.randn(8, 4, dtype=DT), torch.randn(8, 4, dtype=DT) + 1
    params = list(model.parameters())

    def loss_of(o):
        return torch.nn.functional.softplus(-o[:8]).mean() + torch.nn.functional.softplus(o[8:]).mean()

    outputs = torch.cat([model(real), model(fake)])
    layout = BlockLayout(params, 5)
    gn, _ = gauss_newton_blocks(layout, outputs, loss_of(outputs), params)
    loss = loss_of(torch.cat([model(real), model(fake)]))
    exact = exact_blocks(layout, torch.autograd.grad(loss, params, create_graph=True), params)
    torch.testing.assert_close(gn, exact, rtol=1e-9, atol=1e-12)
    assert float(torch.linalg.eigvalsh(gn).min()) > -1e-12  # a convex loss: positive semi-definite


@pytest.mark.parametrize("k,loss_name", [(1, "softplus"), (3, "cross_entropy"), (2, "cubic")])
def test_gauss_newton_sketches_average_to_the_exact_blocks(k, loss_name):
    """The sketched estimate is unbiased: the mean of many sketches is J^T H J's blocks within
    the sampling error, PSD for a convex loss at any count, one product a sketch per sign of the
    output Hessian's eigenvalues, and the same draws from the same generator state."""
    model, x, loss_of = _small_problem(torch.nn.Tanh(), k, 4, loss_name)
    params = list(model.parameters())
    layout = BlockLayout(params, 4)
    outputs = model(x)
    loss = loss_of(outputs)
    exact, _ = gauss_newton_blocks(layout, outputs, loss, params)
    S = 20000
    sketched, products = gauss_newton_blocks(layout, outputs, loss, params, sketches=S, chunk_size=2000,
                                             generator=torch.Generator().manual_seed(0))
    signs = 2 if loss_name == "cubic" else 1  # the cubic's output Hessian has eigenvalues of both signs
    assert products == signs * S
    # entry (a, c) of a block is a mean of S products x_a x_c whose variance is at most about
    # 2 G_aa G_cc per sign: 6 standard deviations of the largest
    scale = torch.diagonal(exact, dim1=1, dim2=2).abs().amax(1)[:, None, None]
    if loss_name == "cubic":  # G+ and G- each larger than their difference
        scale = torch.diagonal(gauss_newton_blocks(layout, outputs, outputs.square().sum(), params)[0],
                               dim1=1, dim2=2).amax(1)[:, None, None]
    assert ((sketched - exact).abs() <= 6 * (2 * signs / S) ** 0.5 * scale + 1e-12).all()
    few, _ = gauss_newton_blocks(layout, outputs, loss, params, sketches=3, generator=torch.Generator().manual_seed(5))
    again, _ = gauss_newton_blocks(layout, outputs, loss, params, sketches=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(few, again)
    if loss_name != "cubic":
        assert float(torch.linalg.eigvalsh(few).min()) > -1e-12


@pytest.mark.parametrize("sketches", [None, 7])
def test_gauss_newton_blocks_do_not_depend_on_how_products_are_batched(sketches):
    """One product a backward, several (the CPU's default), or all at once: the same products
    (the same sketch draws from the same generator state), summed in another order."""
    model, x, loss_of = _small_problem(torch.nn.Tanh(), 2, 6, "cubic")
    params = list(model.parameters())
    layout = BlockLayout(params, 4)
    outputs = model(x)
    loss = loss_of(outputs)
    found = [gauss_newton_blocks(layout, outputs, loss, params, chunk_size=chunk, sketches=sketches,
                                 generator=torch.Generator().manual_seed(2)) for chunk in (1, None, 3, 100)]
    for blocks, products in found[1:]:
        torch.testing.assert_close(blocks, found[0][0], rtol=1e-12, atol=1e-14)
        assert products == found[0][1]


def test_gauss_newton_estimator_in_the_preconditioner():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(DT)
    x = torch.randn(10, 3, dtype=DT)
    params = list(model.parameters())
    pre = Preconditioner(params, block_size=4, estimator="gauss_newton", ema=0.0, update_every=1)

    def outputs_and_loss():
        o = model(x)
        return o, torch.nn.functional.softplus(o).mean()

    assert pre.update_curvature(outputs_and_loss) and pre.hvps == 10
    o, loss = outputs_and_loss()
    expected, _ = gauss_newton_blocks(pre.layout, o, loss, params)
    torch.testing.assert_close(pre.estimate, expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"\(outputs, loss\)"):
        pre.update_curvature(lambda: torch.nn.functional.softplus(model(x)).mean())
    with pytest.raises(ValueError, match="update_curvature"):
        pre.refresh_if_due([torch.zeros_like(p) for p in params])
    # with sketches: the preconditioner's seeded generator draws them
    sketched = Preconditioner(params, block_size=4, estimator="gauss_newton", sketches=5, ema=0.0,
                              update_every=1, seed=7)
    assert sketched.update_curvature(outputs_and_loss) and sketched.hvps == 5
    expected, _ = gauss_newton_blocks(sketched.layout, o, loss, params, sketches=5,
                                      generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(sketched.estimate, expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="sketches"):
        Preconditioner(params, estimator="gauss_newton", sketches=0)
