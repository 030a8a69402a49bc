"""hsc.lbfgs.PreconditionedLBFGS (docs/contract.md §7): torch.optim.LBFGS's iterates without a
preconditioner, H_0 = gamma M^-1 with one, the pair rule, refreshes, non-finite losses, checkpoints,
argument errors.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import pytest
import torch

import hsc
from curvature_helpers import CHOLESKY, DT, diagonal_blocks
from hsc import BlockLayout, PreconditionerConfig, reference
from hsc.lbfgs import PreconditionedLBFGS


# ---- test problems: a loss of a list of parameter tensors ---------------------------------------

def quadratic_plus_quartic(seed: int = 0):
    """0.5 x^T A x + b^T x + 0.25 sum x^4 over two tensors (4 + 5 entries): smooth, convex, not
    quadratic, so L-BFGS's pairs change from iteration to iteration. Returns (start, loss_of)."""
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(9, 9, generator=g, dtype=DT)
    A = R @ R.T / 9 + 0.1 * torch.eye(9, dtype=DT)
    b = torch.randn(9, generator=g, dtype=DT)
    start = [torch.randn(4, generator=g, dtype=DT), torch.randn(5, generator=g, dtype=DT)]

    def loss_of(ps):
        x = torch.cat([p.reshape(-1) for p in ps])
        return 0.5 * x @ A @ x + b @ x + 0.25 * (x ** 4).sum()

    return start, loss_of


def logistic_regression(seed: int = 0):
    """Binary logistic regression (weights [5], bias [1]) on 40 noisy points, with a small L2 term
    so that the minimum is finite. Returns (start, loss_of)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 5, generator=g, dtype=DT)
    teacher = torch.randn(5, generator=g, dtype=DT)
    y = ((X @ teacher + 0.5 * torch.randn(40, generator=g, dtype=DT)) > 0).to(DT)
    start = [0.1 * torch.randn(5, generator=g, dtype=DT), torch.zeros(1, dtype=DT)]

    def loss_of(ps):
        w, c = ps
        logits = X @ w + c
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 1e-3 * (w ** 2).sum()

    return start, loss_of


def double_well(seed: int = 0):
    """sum (x_i^2 - 1)^2 / 4 + 0.5 x^T C x + 0.1 sum x over two tensors (3 + 3 entries), from near the
    saddle at 0, where the Hessian (about C - I) is indefinite: not convex. Without a line search
    L-BFGS meets pairs with s^T y < 0 there; converging into a well, pairs whose s^T y falls below
    1e-10 (tests below count them). Returns (start, loss_of)."""
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(6, 6, generator=g, dtype=DT)
    C = 0.15 * (R + R.T)
    start = [0.05 * torch.randn(3, generator=g, dtype=DT), 0.05 * torch.randn(3, generator=g, dtype=DT)]

    def loss_of(ps):
        x = torch.cat([p.reshape(-1) for p in ps])
        return 0.25 * ((x ** 2 - 1) ** 2).sum() + 0.5 * x @ C @ x + 0.1 * x.sum()

    return start, loss_of


PROBLEMS = {"quadratic_plus_quartic": quadratic_plus_quartic, "logistic_regression": logistic_regression,
            "double_well": double_well}


def run(make_opt: Callable, start, loss_of, steps: int, curvature: bool = False):
    """``steps`` calls of ``step`` from ``start``; returns (params, the losses step returned, opt)."""
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = make_opt(params)

    def closure():  # torch's convention: clear, compute, backward, return
        opt.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss

    losses = []
    for _ in range(steps):
        if curvature:
            losses.append(float(opt.step(closure, lambda: loss_of(params)).detach()))
        else:
            losses.append(float(opt.step(closure).detach()))
    return params, losses, opt


def lbfgs_state(opt) -> dict:
    return opt.state[opt.param_groups[0]["params"][0]]


# ---- preconditioner=None is torch.optim.LBFGS ----------------------------------------------------

# max_iter 1 needs max_eval: torch's default, max_iter * 5 // 4 = 1, leaves the line search no
# evaluation. history_size 3 is below the run's iterations, so the history is trimmed.
SETTINGS = [
    dict(line_search_fn="strong_wolfe", max_iter=20, history_size=3),
    dict(line_search_fn=None, max_iter=20, history_size=3, lr=0.2),
    dict(line_search_fn="strong_wolfe", max_iter=1, max_eval=10, history_size=3),
    dict(line_search_fn=None, max_iter=1, max_eval=10, history_size=3, lr=0.3),
]


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: f"{o['line_search_fn']}-max_iter{o['max_iter']}")
def test_without_preconditioner_every_iterate_equals_torch_lbfgs(problem, options):
    # pair_tolerance 0: the pair rule is torch's alone (s^T y > 1e-10); the default 1e-8 also skips
    # pairs torch keeps (test_default_pair_tolerance_is_not_torch_s_rule below).
    start, loss_of = PROBLEMS[problem]()
    steps = 6
    ours, our_losses, opt = run(lambda p: PreconditionedLBFGS(p, pair_tolerance=0.0, **options), start, loss_of,
                                steps)
    theirs, their_losses, ref = run(lambda p: torch.optim.LBFGS(p, **options), start, loss_of, steps)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert our_losses == their_losses
    mine, torchs = lbfgs_state(opt), lbfgs_state(ref)
    assert (mine["n_iter"], mine["func_evals"]) == (torchs["n_iter"], torchs["func_evals"])
    assert torch.equal(mine["d"], torchs["d"]) and float(mine["t"]) == float(torchs["t"])
    assert torch.equal(mine["prev_flat_grad"], torchs["prev_flat_grad"])
    assert len(mine["old_dirs"]) == len(torchs["old_dirs"])
    assert all(torch.equal(a, b) for a, b in zip(mine["old_stps"], torchs["old_stps"]))
    if problem != "double_well":  # (whose pairs near the saddle have s^T y < 0 and are skipped)
        assert len(torchs["old_dirs"]) == 3  # the history was trimmed
    # the run moved, and the counters follow torch's
    assert their_losses[-1] < their_losses[0]
    assert opt.counters["iterations"] == torchs["n_iter"] and opt.counters["evaluations"] == torchs["func_evals"]


def torch_lbfgs_with_pairs(start, loss_of, options: dict, steps: int):
    """``steps`` steps of torch.optim.LBFGS with max_iter 1 (one iteration a step, so at most one new
    curvature pair a step), and s^T y of every pair it considers, computed here from its state
    before each step as torch forms it: s = t d, y = the new gradient - prev_flat_grad (no pair
    on the first step, nor where the step returns at once because |g|_max <= tolerance_grad).
    Returns (params, losses, opt, [s^T y, ...])."""
    assert options.get("max_iter") == 1
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = torch.optim.LBFGS(params, **options)
    tolerance_grad = opt.param_groups[0]["tolerance_grad"]

    def closure():
        opt.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss

    losses, pairs = [], []
    for _ in range(steps):
        state = lbfgs_state(opt)
        if "d" in state:
            with torch.enable_grad():
                closure()
            g = torch.cat([p.grad.reshape(-1) for p in params])
            if g.abs().max() > tolerance_grad:
                pairs.append(float((g - state["prev_flat_grad"]) @ (state["d"] * state["t"])))
        losses.append(float(opt.step(closure).detach()))
    return params, losses, opt, pairs


# (line search, lr): without a line search the run starts on the saddle's negative curvature
# (pairs with s^T y < 0); strong Wolfe guarantees s^T y > 0 for the pairs of a successful search, but
# with both tolerances 0 it runs on into its well until s^T y is below torch's 1e-10.
NON_CONVEX_CASES = {"no_line_search": dict(line_search_fn=None, lr=0.2),
                    "strong_wolfe": dict(line_search_fn="strong_wolfe")}


@pytest.mark.parametrize("case", sorted(NON_CONVEX_CASES))
def test_without_preconditioner_skips_exactly_torch_s_pairs_on_a_non_convex_problem(case):
    """The double well, one iteration a step for 40 steps (history 3): every iterate and the kept
    pairs equal torch's, and the pairs skipped are exactly those torch skips (s^T y <= 1e-10, counted
    here from torch's own state), of which the run has several: negative curvature pairs without a
    line search, positive ones below 1e-10 with strong Wolfe."""
    start, loss_of = double_well()
    options = dict(max_iter=1, max_eval=10, history_size=3, tolerance_grad=0.0, tolerance_change=0.0,
                   **NON_CONVEX_CASES[case])
    ours, our_losses, opt = run(lambda p: PreconditionedLBFGS(p, pair_tolerance=0.0, **options), start, loss_of, 40)
    theirs, their_losses, ref, pairs = torch_lbfgs_with_pairs(start, loss_of, options, 40)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert our_losses == their_losses
    mine, torchs = lbfgs_state(opt), lbfgs_state(ref)
    assert len(mine["old_dirs"]) == len(torchs["old_dirs"])
    assert all(torch.equal(a, b) for a, b in zip(mine["old_stps"], torchs["old_stps"]))
    assert all(torch.equal(a, b) for a, b in zip(mine["old_dirs"], torchs["old_dirs"]))
    assert len(pairs) == 39  # every step after the first considered a pair
    skipped = [ys for ys in pairs if not ys > 1e-10]
    assert opt.counters["skipped_pairs"] == len(skipped), pairs
    if case == "no_line_search":
        assert sum(ys < 0 for ys in pairs) >= 5, pairs
    else:
        assert sum(0 < ys <= 1e-10 for ys in pairs) >= 3, pairs  # a rule s^T y > 0 would keep these
    assert sum(ys > 1e-10 for ys in pairs) >= 10, pairs  # and the history is used
    assert their_losses[-1] < their_losses[0]


def test_default_pair_tolerance_is_not_torch_s_rule():
    # 0.5 x^T D x with D = diag(1, -1 + 1e-9), a saddle, from (1, 1), no line search, lr 1: the
    # first step is s = -t D x with t = 1 / |D x|_1 = 1/2, y = D s, so s^T y = t^2 (1 - (1 - 1e-9)^3)
    # = 7.5e-10 > 1e-10 (torch keeps the pair) while cos(s, y) = 1.5e-9 < 1e-8 (the default
    # pair_tolerance skips it). With pair_tolerance 0 the next iterate is torch's; with the
    # default it is not (and the skip is counted).
    D = torch.diag(torch.tensor([1.0, -1.0 + 1e-9], dtype=DT))
    start = [torch.ones(2, dtype=DT)]
    loss_of = lambda ps: 0.5 * ps[0] @ D @ ps[0]  # noqa: E731
    options = dict(max_iter=1, line_search_fn=None, lr=1.0)
    theirs, _, _, pairs = torch_lbfgs_with_pairs(start, loss_of, options, 2)
    s, y = -0.5 * (D @ start[0]), -0.5 * (D @ D @ start[0])
    assert pairs[0] == pytest.approx(float(s @ y), rel=1e-6) and 1e-10 < pairs[0] < 1e-9
    assert 0 < float(s @ y) / float(s.norm() * y.norm()) < 1e-8
    ours, _, opt = run(lambda p: PreconditionedLBFGS(p, pair_tolerance=0.0, **options), start, loss_of, 2)
    assert torch.equal(ours[0], theirs[0]) and opt.counters["skipped_pairs"] == 0
    assert len(lbfgs_state(opt)["old_dirs"]) == 1
    default, _, opt = run(lambda p: PreconditionedLBFGS(p, **options), start, loss_of, 2)
    assert opt.counters["skipped_pairs"] == 1 and lbfgs_state(opt)["old_dirs"] == []
    assert not torch.equal(default[0], theirs[0])


# ---- the preconditioner as H_0 ------------------------------------------------------------------

def block_quadratic_with_coupling(seed: int, blocks: int = 8, b: int = 8, rank: int = 2, coupling: float = 1e-2):
    """0.5 (x - x*)^T H (x - x*) with H = block diagonal SPD (b x b blocks, each of condition
    1e3-1e4 and an overall scale of 1-100, so cond(H) is up to 1e6) + coupling U U^T of rank 2.
    Returns (H, x*, x0)."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for _ in range(blocks):
        cond = 1e3 * 10 ** float(torch.rand(1, generator=g))
        scale = 10 ** (2 * float(torch.rand(1, generator=g)))
        lam = scale * torch.logspace(0, math.log10(cond), b, dtype=DT)
        Q, _ = torch.linalg.qr(torch.randn(b, b, generator=g, dtype=DT))
        parts.append(Q @ torch.diag(lam) @ Q.T)
    U = torch.randn(blocks * b, rank, generator=g, dtype=DT)
    H = torch.block_diag(*parts) + coupling * U @ U.T
    x_star = torch.randn(blocks * b, generator=g, dtype=DT)
    return H, x_star, x_star + torch.randn(blocks * b, generator=g, dtype=DT)


def iterations_to_target(H, x_star, x0, config: Optional[PreconditionerConfig], limit: int) -> Optional[int]:
    """L-BFGS iterations (one per step) until the loss is 1e-10 of its start; None if not within limit."""
    x = torch.nn.Parameter(x0.clone())
    loss_of = lambda: 0.5 * (x - x_star) @ H @ (x - x_star)  # noqa: E731
    opt = PreconditionedLBFGS([x], max_iter=1, max_eval=25, history_size=20, tolerance_grad=0,
                              tolerance_change=0, preconditioner=config)

    def closure():
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss

    with torch.no_grad():
        target = 1e-10 * float(loss_of())
    for iteration in range(1, limit + 1):
        opt.step(closure, loss_of)
        with torch.no_grad():
            if float(loss_of()) <= target:
                return iteration
    return None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preconditioner_cuts_iterations_on_an_ill_conditioned_block_problem(seed):
    # The blocks match the preconditioner's (b = 8, exact estimator) and mu = 1e-2 is below every
    # eigenvalue, so M^-1 is H's block diagonal inverse to about mu^2 / lambda^2 and the pairs need
    # only catch the rank-2 coupling. Measured over seeds 0-9 and 20-25: 2-3 iterations with the
    # preconditioner, 523-971 without (history 20); the bounds below leave a margin of 25x.
    H, x_star, x0 = block_quadratic_with_coupling(seed)
    config = PreconditionerConfig(block_size=8, estimator="exact", update_every=10 ** 6, scale=1e-2, damping=0.0,
                                  **CHOLESKY)
    with_pre = iterations_to_target(H, x_star, x0, config, limit=4)
    without = iterations_to_target(H, x_star, x0, None, limit=100)
    assert with_pre is not None and with_pre <= 4, with_pre
    assert without is None, without


def test_first_direction_is_minus_m_inverse_g_and_gamma_matches_the_newest_pair():
    # docs/contract.md §7: the first step is -t M^-1 g with t = min(1, 1/|d|_1) lr; after it
    # H_0 = gamma M^-1 with gamma = s^T y / y^T M^-1 y. M^-1 from the float64 reference on the
    # exact blocks of the quadratic.
    H, x_star, x0 = block_quadratic_with_coupling(3, blocks=3, b=4)
    x = torch.nn.Parameter(x0.clone())
    loss_of = lambda: 0.5 * (x - x_star) @ H @ (x - x_star)  # noqa: E731
    config = PreconditionerConfig(block_size=4, estimator="exact", update_every=100, scale=0.5, **CHOLESKY)
    opt = PreconditionedLBFGS([x], lr=0.7, max_iter=1, line_search_fn=None, preconditioner=config)

    def closure():
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss

    layout = BlockLayout([x], 4)
    ref = reference.correct(diagonal_blocks(H, layout), damping=1e-4, scale=0.5)

    def m_inverse(v):
        return layout.scatter(reference.solve(ref, layout.gather([v])))[0]

    g0 = (H @ (x0 - x_star)).detach()
    d = -m_inverse(g0)
    opt.step(closure, loss_of)
    t = min(1.0, 1.0 / float(d.abs().sum())) * 0.7
    torch.testing.assert_close(x.detach(), x0 + t * d, rtol=1e-10, atol=1e-12)
    opt.step(closure, loss_of)  # forms the first pair
    state = lbfgs_state(opt)
    s, y = state["old_stps"][-1], state["old_dirs"][-1]
    torch.testing.assert_close(float(state["h0"]), float(s @ y / (y @ m_inverse(y))), rtol=1e-10, atol=0)
    assert opt.counters["refreshes"] == 1 and opt.stats()["preconditioner"]["hvps"] == 12


def quartic_loss(x: torch.Tensor) -> torch.Tensor:
    return ((x - 1) ** 2).sum() + 0.5 * (x ** 4).sum() + x[:-1] @ x[1:]


def test_keep_pairs_false_starts_the_history_afresh_at_a_refresh():
    # update_every 2: refreshes at iterations 1, 3, 5. A refresh with keep_pairs False drops the
    # pairs, after which the iteration adds its own new one.
    lengths = {}
    for keep in (True, False):
        x = torch.nn.Parameter(torch.linspace(-1, 2, 6, dtype=DT))
        config = PreconditionerConfig(block_size=3, estimator="exact", update_every=2, scale=0.5)
        opt = PreconditionedLBFGS([x], max_iter=1, max_eval=10, history_size=10, preconditioner=config,
                                  keep_pairs=keep)

        def closure():
            opt.zero_grad()
            loss = quartic_loss(x)
            loss.backward()
            return loss

        lengths[keep] = []
        for _ in range(6):
            opt.step(closure, lambda: quartic_loss(x))
            lengths[keep].append(len(lbfgs_state(opt)["old_dirs"]))
        assert opt.counters["refreshes"] == 3 and opt.counters["skipped_pairs"] == 0
    assert lengths[True] == [0, 1, 2, 3, 4, 5]
    assert lengths[False] == [0, 1, 1, 2, 1, 2]


def test_pair_with_negative_curvature_is_skipped_and_counted():
    # cos near 0 is concave: a step along -g = sin(x) > 0 lowers the gradient -sin(x), so
    # s^T y < 0 and the pair must not enter the history (it would make H indefinite).
    x = torch.nn.Parameter(torch.tensor([0.1, 0.2], dtype=DT))
    opt = PreconditionedLBFGS([x], lr=0.5, max_iter=2, max_eval=10, line_search_fn=None)

    def closure():
        opt.zero_grad()
        loss = torch.cos(x).sum()
        loss.backward()
        return loss

    opt.step(closure)
    state = lbfgs_state(opt)
    assert opt.counters["skipped_pairs"] == 1 and state["old_dirs"] == [] and state["n_iter"] == 2


@pytest.mark.parametrize("tolerance,skipped", [(0.9, 1), (0.5, 0), (1e-8, 0)])
def test_pair_tolerance_skips_pairs_with_little_curvature_along_s(tolerance, skipped):
    # H = diag(1, 100) from x = (10, 0.1): g = (10, 10), so s is along (1, 1) and y = H s along
    # (1, 100): cos(s, y) = 101 / (sqrt(2) sqrt(10001)) = 0.714, s^T y > 0.
    H = torch.diag(torch.tensor([1.0, 100.0], dtype=DT))
    x = torch.nn.Parameter(torch.tensor([10.0, 0.1], dtype=DT))
    opt = PreconditionedLBFGS([x], lr=0.01, max_iter=2, max_eval=10, line_search_fn=None,
                              pair_tolerance=tolerance)

    def closure():
        opt.zero_grad()
        loss = 0.5 * x @ H @ x
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.counters["skipped_pairs"] == skipped
    assert len(lbfgs_state(opt)["old_dirs"]) == 1 - skipped


def test_missing_curvature_closure_is_a_named_error():
    x = torch.nn.Parameter(torch.ones(4, dtype=DT))
    opt = PreconditionedLBFGS([x], preconditioner=PreconditionerConfig(block_size=2))

    def closure():
        opt.zero_grad()
        loss = quartic_loss(x)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="curvature_closure"):
        opt.step(closure)
    assert torch.equal(x.detach(), torch.ones(4, dtype=DT))


# ---- non-finite values --------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["loss", "gradient"])
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "mid_run"])
def test_non_finite_loss_or_gradient_at_the_start_writes_nothing(bad, fresh):
    start, loss_of = quadratic_plus_quartic()
    params, _, opt = run(lambda p: PreconditionedLBFGS(p, max_iter=2), start, loss_of, 0 if fresh else 2)
    before = [p.detach().clone() for p in params]
    # func_evals counts the evaluation; n_iter 0 is torch's default (set by step on a fresh state)
    state = copy.deepcopy({"n_iter": 0, **{k: v for k, v in lbfgs_state(opt).items() if k != "func_evals"}})

    def closure():
        opt.zero_grad()
        loss = loss_of(params)
        if bad == "loss":
            loss = loss * float("nan")
        else:  # value unchanged, d sqrt(u)/du = inf at u = 0
            loss = loss + torch.sqrt(params[0][0] - params[0][0].detach())
        loss.backward()
        return loss

    opt.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    after = {k: v for k, v in lbfgs_state(opt).items() if k != "func_evals"}
    assert after.keys() == state.keys()
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(after[k], v), k
        elif isinstance(v, list):
            assert len(after[k]) == len(v) and all(
                (a is None and b is None) or torch.equal(torch.as_tensor(a), torch.as_tensor(b))
                for a, b in zip(after[k], v)), k
        else:
            assert after[k] == v, k
    assert opt.counters["skipped_non_finite"] == 1


def test_line_search_backs_away_from_a_non_finite_region():
    # (x - 5)^2 + 0 sqrt(1 - x): finite for x < 1, NaN value and gradient beyond. From x = 0 the
    # first trial step (length lr = 3) lands in the NaN region; the line search sees a wall there
    # (a huge loss, the start's gradient) and settles on a finite point short of it: nothing
    # non-finite is kept and nothing needs undoing.
    x = torch.nn.Parameter(torch.zeros(1, dtype=DT))
    opt = PreconditionedLBFGS([x], lr=3.0, max_iter=5)

    def closure():
        opt.zero_grad()
        loss = ((x - 5) ** 2 + 0 * torch.sqrt(1 - x)).sum()
        loss.backward()
        return loss

    start = float(closure())
    opt.step(closure)
    assert bool(torch.isfinite(x).all()) and 0 < float(x.detach()) < 1
    assert float(closure()) < start
    assert opt.counters["undone_line_searches"] == 0 and opt.counters["skipped_non_finite"] == 0


def test_nan_trial_loss_with_a_finite_gradient_is_undone():
    x = torch.nn.Parameter(torch.zeros(1, dtype=DT))
    opt = PreconditionedLBFGS([x], lr=3.0, max_iter=5)

    def closure():
        opt.zero_grad()
        loss = torch.where(x > 1, float("nan"), (x - 5) ** 2).sum()  # gradient 0 where NaN
        loss.backward()
        return loss

    opt.step(closure)
    assert bool(torch.isfinite(x).all()) and float(x.detach()) <= 1


def test_step_into_a_non_finite_region_without_line_search_is_undone():
    # ((a - 5)^2).sum() + (b - 5)^2 + 0 sqrt(1 - a_0): NaN beyond a_0 = 1. From 0, no line search,
    # lr 1.5: iteration 1 moves every entry to 0.5 (t = lr / |g|_1 = 1.5 / 30, d = -g = 10), which
    # is finite; iteration 2 takes the Newton step of its pair, t d = 1.5 x 4.5 per entry, to
    # 7.25: NaN. torch.optim.LBFGS keeps that point; this optimizer restores the point the
    # iteration started from (torch's after one iteration), counts the undo and starts afresh.
    start = [torch.zeros(2, dtype=DT), torch.zeros(1, dtype=DT)]

    def loss_of(ps):
        a, b = ps
        return ((a - 5) ** 2).sum() + ((b - 5) ** 2).sum() + 0 * torch.sqrt(1 - a[0])

    after_one, _, _ = run(lambda p: torch.optim.LBFGS(p, lr=1.5, max_iter=1), start, loss_of, 1)
    assert all(torch.equal(p.detach(), torch.full_like(p, 0.5)) for p in after_one)
    after_two, _, _ = run(lambda p: torch.optim.LBFGS(p, lr=1.5, max_iter=2, max_eval=10), start, loss_of, 1)
    assert float(after_two[0][0].detach()) > 1  # torch's second iteration lands in the NaN region
    ours, losses, opt = run(lambda p: PreconditionedLBFGS(p, lr=1.5, max_iter=5, line_search_fn=None),
                            start, loss_of, 1)
    assert all(torch.equal(p, q) for p, q in zip(ours, after_one))
    assert opt.counters["undone_line_searches"] == 1 and opt.counters["evaluations"] == 3
    assert opt.counters["iterations"] == 2 and opt.counters["skipped_non_finite"] == 0
    state = lbfgs_state(opt)
    # afresh: the next step's first iteration is a first iteration again, with no history
    assert state["n_iter"] == 0 and state["old_dirs"] is None and state["prev_flat_grad"] is None
    assert losses == [float(loss_of(start))]


# ---- checkpoints --------------------------------------------------------------------------------

@pytest.mark.parametrize("with_preconditioner", [False, True], ids=["off", "on"])
def test_state_dict_round_trip_resumes_bit_for_bit(with_preconditioner):
    # probe estimator (its generator is in the checkpoint), update_every 3 with 2 iterations per
    # step: the resumed run starts between refreshes.
    start, loss_of = quadratic_plus_quartic(seed=1)

    def make(params, seed=4):
        config = PreconditionerConfig(block_size=3, update_every=3, scale=0.5, seed=seed) \
            if with_preconditioner else None
        return PreconditionedLBFGS(params, max_iter=2, history_size=3, preconditioner=config)

    params, _, opt = run(make, start, loss_of, 2, curvature=True)
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())

    def closure_for(ps, o):
        def closure():
            o.zero_grad()
            loss = loss_of(ps)
            loss.backward()
            return loss
        return closure

    for _ in range(3):
        opt.step(closure_for(params, opt), lambda: loss_of(params))

    resumed = [torch.nn.Parameter(p.clone()) for p in saved_params]
    opt2 = make(resumed, seed=99)
    opt2.load_state_dict(saved)
    for _ in range(3):
        opt2.step(closure_for(resumed, opt2), lambda: loss_of(resumed))
    assert all(torch.equal(a, b) for a, b in zip(params, resumed))
    assert opt2.counters == opt.counters
    assert (lbfgs_state(opt2)["n_iter"], lbfgs_state(opt2)["func_evals"]) == \
        (lbfgs_state(opt)["n_iter"], lbfgs_state(opt)["func_evals"])

    # The check has teeth: the same parameters with a fresh optimizer take another path.
    alone = [torch.nn.Parameter(p.clone()) for p in saved_params]
    opt3 = make(alone)
    for _ in range(3):
        opt3.step(closure_for(alone, opt3), lambda: loss_of(alone))
    assert any(not torch.equal(a, b) for a, b in zip(params, alone))


def test_load_state_dict_refuses_a_preconditioner_mismatch():
    x = torch.nn.Parameter(torch.ones(4, dtype=DT))
    on = PreconditionedLBFGS([x], preconditioner=PreconditionerConfig(block_size=2))
    off = PreconditionedLBFGS([x])
    with pytest.raises(ValueError, match="preconditioner"):
        off.load_state_dict(on.state_dict())


# ---- arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"), (dict(line_search_fn="armijo"), "line_search_fn"),
    (dict(history_size=0), "history_size"), (dict(pair_tolerance=1.0), "pair_tolerance"),
    (dict(pair_tolerance=-0.1), "pair_tolerance"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PreconditionedLBFGS([torch.zeros(3, requires_grad=True)], **kwargs)


def test_preconditioner_must_be_a_config_and_one_group_only():
    with pytest.raises(TypeError, match="PreconditionerConfig"):
        PreconditionedLBFGS([torch.zeros(3, requires_grad=True)], preconditioner={"block_size": 2})
    with pytest.raises(ValueError, match="one parameter group"):
        PreconditionedLBFGS([{"params": [torch.zeros(3, requires_grad=True)]},
                             {"params": [torch.zeros(2, requires_grad=True)]}])


def test_exported_from_hsc():
    # docs/contract.md §5 and §7 name hsc.PreconditionedLBFGS and StepControl
    from hsc.optim import StepControl

    assert hsc.PreconditionedLBFGS is PreconditionedLBFGS and hsc.StepControl is StepControl
