"""``CompetitiveHSC``: a game-aware step for two-player zero-sum training (docs/contract.md §6).

x minimises f and y maximises f. Each step solves the local game of competitive gradient descent
(Schäfer & Anandkumar 2019) with the players' curvature in place of CGD's 1/eta regularisers:

    (M_x + D_xy M_y^-1 D_yx) dx = -(grad_x f + D_xy M_y^-1 grad_y f),   dy = M_y^-1 (grad_y f + D_yx dx),

D_xy = d^2 f / dx dy, M_x from the blocks of H_xx and M_y from the blocks of -H_yy. The solve is
conjugate gradients on the symmetrically split system (I + B_x^1/2 D_xy B_y D_yx B_x^1/2) z = ...,
dx = B_x^1/2 z, with B = M^-1: the same iterates as CG on the system above preconditioned with M_x^-1,
and it needs M^-1/2 only, which the spectral modes give from the same eigen-decomposition as M^-1.
The regulariser B is one of:

- ``"block"``: lr x the preconditioner's M^-1 (a spectral mode whose M^-1 is positive definite:
  ``ops.NONNEGATIVE_MODES``, the saddle-free ones; the factor holds M^-1/2);
- ``"adam"``: ACGD's diagonal, lr sqrt(1 - beta^t) / (sqrt(v) + eps) with v the moving average of
  the squared gradient (so the step is ACGD's);
- ``"identity"``: lr I (so the step is CGD's with eta = lr).

``coupling="ridge"`` skips the solve: dx = -B_x grad_x f and dy = B_y (grad_y f + D_yx dx), one mixed
product a step (Follow-the-Ridge with M_y^-1 in place of H_yy^-1).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

import torch

from . import ops
from .config import PreconditionerConfig, nested, option
from .preconditioner import Preconditioner

REGULARISERS = ("block", "adam", "identity")
COUPLINGS = ("cg", "ridge")
SOLVE_SIDES = ("auto", "x", "y")

# The block regulariser's preconditioner: the library's default (the saddle-free root with mu
# relative to each player's eigenvalues) with the factor holding M^-1/2.
GAME_PRECONDITIONER = dataclasses.replace(PreconditionerConfig(), factor_power=0.5)


@dataclass
class GameConfig:
    """Options of :class:`CompetitiveHSC`."""

    lr: float = option(3e-3, "the step scale: the regulariser is lr M^-1 (block), ACGD's lr (adam), "
                       "CGD's eta (identity)")
    regulariser: str = option("block", "block: each player's block curvature; adam: ACGD's diagonal; "
                              "identity: CGD's", choices=REGULARISERS)
    coupling: str = option("cg", "cg: solve the coupled step; ridge: one mixed product, no solve",
                           choices=COUPLINGS)
    preconditioner: PreconditionerConfig = nested(lambda: dataclasses.replace(GAME_PRECONDITIONER),
                                                  "each player's preconditioner (block regulariser)")
    beta: float = option(0.99, "adam: the squared gradient's moving average (ACGD's default)")
    eps: float = option(1e-5, "adam: added to its square root (ACGD's default)")
    cg_tol: float = option(1e-2, "CG ends at a relative residual ||r|| <= cg_tol ||rhs||")
    cg_max_iter: int = option(10, "CG's iteration cap")
    warm_start: bool = option(True, "start CG from the last step's solution")
    solve_side: str = option("auto", "the player whose system CG solves: x, y, or auto (the one with "
                             "fewer parameters)", choices=SOLVE_SIDES)

    def validate(self) -> "GameConfig":
        def need(ok: bool, name: str, expected: str):
            if not ok:
                raise ValueError(f"hsc: {name} must be {expected}, got {getattr(self, name)!r}")

        need(0 < self.lr < math.inf, "lr", "a finite number > 0")
        need(self.regulariser in REGULARISERS, "regulariser", f"one of {REGULARISERS}")
        need(self.coupling in COUPLINGS, "coupling", f"one of {COUPLINGS}")
        need(0 <= self.beta < 1, "beta", "in [0, 1)")
        need(self.eps > 0, "eps", "> 0")
        need(0 < self.cg_tol < 1, "cg_tol", "in (0, 1)")
        need(isinstance(self.cg_max_iter, int) and self.cg_max_iter >= 1, "cg_max_iter", "an int >= 1")
        need(self.solve_side in SOLVE_SIDES, "solve_side", f"one of {SOLVE_SIDES}")
        if self.regulariser == "block":
            need(self.preconditioner.factor_power == 0.5, "preconditioner",
                 f"a PreconditionerConfig with factor_power=0.5 (and a mode of {ops.NONNEGATIVE_MODES})")
            self.preconditioner.validate()
            need(self.preconditioner.estimator != "gauss_newton", "preconditioner",
                 "a PreconditionerConfig whose estimator takes HVPs (probe, coloured or exact): the coupled "
                 "step has the players' gradients, not their outputs")
        return self


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _split(vector: torch.Tensor, params: List[torch.Tensor]) -> List[torch.Tensor]:
    return [v.view_as(p) for v, p in zip(vector.split([p.numel() for p in params]), params)]


class _Player:
    """One player's parameters and regulariser B = M^-1 (applied as B^1/2, twice for B)."""

    def __init__(self, params: Iterable[torch.Tensor], config: GameConfig, seed: int):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("hsc: each player needs at least one parameter")
        self.config = config
        self.numel = sum(p.numel() for p in self.params)
        self.preconditioner = (Preconditioner(self.params, dataclasses.replace(config.preconditioner, seed=seed))
                               if config.regulariser == "block" else None)
        self.square_average: Optional[torch.Tensor] = None  # adam
        self.half_diagonal: Optional[torch.Tensor] = None    # adam / identity: B^1/2 as a vector
        self.steps = 0

    def update(self, grads: List[torch.Tensor], flat_grad: torch.Tensor) -> bool:
        """Moves the regulariser to this step (adam: the moment; block: a refresh when due, from
        ``grads`` with their graph); returns whether the block regulariser refreshed."""
        cfg = self.config
        self.steps += 1
        if cfg.regulariser == "identity":
            self.half_diagonal = torch.full_like(flat_grad, math.sqrt(cfg.lr))
            return False
        if cfg.regulariser == "adam":
            if self.square_average is None:
                self.square_average = torch.zeros_like(flat_grad)
            self.square_average.mul_(cfg.beta).addcmul_(flat_grad, flat_grad, value=1 - cfg.beta)
            eta = math.sqrt(1 - cfg.beta ** self.steps) * cfg.lr / self.square_average.sqrt().add(cfg.eps)
            self.half_diagonal = eta.sqrt()
            return False
        with torch.enable_grad():
            return self.preconditioner.refresh_if_due(grads)

    def half(self, v: torch.Tensor) -> torch.Tensor:
        """B^1/2 v for a flat vector."""
        if self.preconditioner is None:
            return self.half_diagonal * v
        # before the first refresh the solve returns v: B = lr I
        return math.sqrt(self.config.lr) * self.preconditioner.solve_flat(v, finite=True)

    def inverse(self, v: torch.Tensor) -> torch.Tensor:
        """B v = M^-1 v."""
        return self.half(self.half(v))


class CompetitiveHSC:
    """The game-aware step of docs/contract.md §6 for ``min_params`` (x, minimising f) and
    ``max_params`` (y, maximising f).

    ``step(closure)``: ``closure()`` returns f (the closure does not call backward); the optimizer
    differentiates it, refreshes the players' curvature when due (HVPs from the same graph: H_xx
    for x, -H_yy for y), solves the coupled step and moves both players. Returns f (detached).

    A non-finite loss, gradient, mixed product or step skips the step and writes nothing
    (``counters``). ``stats()`` reports per step: CG iterations, mixed products (D_xy or D_yx
    times a vector, each one double backward) and HVPs (of the curvature refreshes), and their
    totals. ``state_dict()`` / ``load_state_dict()`` resume bit for bit on the CPU.
    """

    def __init__(self, min_params, max_params, config: Optional[GameConfig] = None, **options):
        if config is not None and options:
            raise TypeError("hsc: give a GameConfig or its fields by name, not both")
        self.config = (dataclasses.replace(config) if config is not None else GameConfig(**options)).validate()
        self.x = _Player(min_params, self.config, seed=0)
        self.y = _Player(max_params, self.config, seed=1)
        ids = {id(p) for p in self.x.params}
        if any(id(p) in ids for p in self.y.params):
            raise ValueError("hsc: min_params and max_params must not share a tensor")
        side = self.config.solve_side
        self.solve_x = side == "x" or (side == "auto" and self.x.numel <= self.y.numel)
        self.warm: Optional[torch.Tensor] = None  # the last CG solution z
        self.counters = {"steps": 0, "skipped_non_finite": 0, "cg_iterations": 0, "mixed_products": 0,
                         "hvps": 0, "cg_capped": 0}
        self.last = {"cg_iterations": 0, "mixed_products": 0, "hvps": 0, "residual": 0.0}

    # ---- products --------------------------------------------------------------------------

    def _mixed(self, grads: List[torch.Tensor], wrt: List[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        """d/d(wrt) of (grads . v): D_yx v for grads = grad_x f and wrt = y, D_xy w the other way."""
        self._products += 1
        found = torch.autograd.grad(grads, wrt, grad_outputs=_split(v, [g for g in grads]),
                                    retain_graph=True, allow_unused=True)
        return _flat([f if f is not None else torch.zeros_like(p) for f, p in zip(found, wrt)])

    # ---- the step --------------------------------------------------------------------------

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        self._products = 0
        hvps_before = self._hvps()
        with torch.enable_grad():
            loss = closure()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("hsc: closure must return f as a scalar tensor")
            if not bool(torch.isfinite(loss.detach())):
                return self._skip(loss)
            gx = list(torch.autograd.grad(loss, self.x.params, create_graph=True))
            gy = list(torch.autograd.grad(loss, self.y.params, create_graph=True))
            fx, fy = _flat(gx).detach(), _flat(gy).detach()
            if not bool(torch.isfinite(fx).all() and torch.isfinite(fy).all()):
                return self._skip(loss)
            # y maximises f: its curvature is that of -f
            self.x.update(gx, fx)
            self.y.update([-g for g in gy], fy)
            dx, dy, iterations, residual = self._solve(gx, gy, fx, fy)
        if not bool(torch.isfinite(dx).all() and torch.isfinite(dy).all()):
            return self._skip(loss)
        with torch.no_grad():
            for p, d in zip(self.x.params, _split(dx, self.x.params)):
                p.add_(d)
            for p, d in zip(self.y.params, _split(dy, self.y.params)):
                p.add_(d)
        self.last = {"cg_iterations": iterations, "mixed_products": self._products,
                     "hvps": self._hvps() - hvps_before, "residual": residual}
        self.counters["steps"] += 1
        self.counters["cg_iterations"] += iterations
        self.counters["mixed_products"] += self._products
        self.counters["hvps"] += self.last["hvps"]
        return loss.detach()

    def _skip(self, loss: torch.Tensor) -> torch.Tensor:
        self.counters["skipped_non_finite"] += 1
        return loss.detach()

    def _hvps(self) -> int:
        return sum(p.preconditioner.hvps for p in (self.x, self.y) if p.preconditioner is not None)

    def _solve(self, gx, gy, fx, fy):
        """(dx, dy, CG iterations, relative residual) of the coupled step."""
        x, y = self.x, self.y
        if self.config.coupling == "ridge":
            dx = -x.inverse(fx)
            dy = y.inverse(fy + self._mixed(gx, y.params, dx))
            return dx, dy, 0, 0.0
        if self.solve_x:
            # (I + Bx^1/2 D_xy B_y D_yx Bx^1/2) z = -Bx^1/2 (g_x + D_xy B_y g_y);  dx = Bx^1/2 z
            rhs = -x.half(fx + self._mixed(gy, x.params, y.inverse(fy)))
            z, coupled, iterations, residual = self._cg(
                lambda v: self._mixed(gx, y.params, x.half(v)),                  # D_yx Bx^1/2 v
                lambda q: x.half(self._mixed(gy, x.params, y.inverse(q))), rhs, y.numel)
            dx = x.half(z)
            dy = y.inverse(fy + coupled)  # coupled = D_yx dx
        else:
            # (I + By^1/2 D_yx B_x D_xy By^1/2) z = By^1/2 (g_y - D_yx B_x g_x);  dy = By^1/2 z
            rhs = y.half(fy - self._mixed(gx, y.params, x.inverse(fx)))
            z, coupled, iterations, residual = self._cg(
                lambda v: self._mixed(gy, x.params, y.half(v)),                  # D_xy By^1/2 v
                lambda q: y.half(self._mixed(gx, y.params, x.inverse(q))), rhs, x.numel)
            dy = y.half(z)
            dx = -x.inverse(fx + coupled)  # coupled = D_xy dy
        return dx, dy, iterations, residual

    def _cg(self, inner, outer, rhs: torch.Tensor, other_numel: int):
        """Conjugate gradients on the SPD operator A v = v + outer(inner(v)) (I plus a positive
        semi-definite part), from the last solution when warm-starting; stops at ||r|| <= cg_tol
        ||rhs|| or cg_max_iter iterations. Returns (z, inner(z), iterations, relative residual).

        ``inner`` is linear, so inner(z) is carried along as the sum of the step lengths times
        the inner(p) each iteration computes anyway: the other player's step then needs no mixed
        product of its own (the same vector up to the order of the additions)."""
        cfg = self.config
        rhs_norm = float(rhs.norm())
        if rhs_norm == 0:
            self.warm = torch.zeros_like(rhs)
            return self.warm, rhs.new_zeros(other_numel), 0, 0.0
        if cfg.warm_start and self.warm is not None and self.warm.shape == rhs.shape:
            z = self.warm.clone()
            coupled = inner(z)
            r = rhs - z - outer(coupled)
        else:
            z = torch.zeros_like(rhs)
            coupled = rhs.new_zeros(other_numel)
            r = rhs.clone()
        p = r.clone()
        rr = float(r.dot(r))
        target = (cfg.cg_tol * rhs_norm) ** 2
        iterations = 0
        while rr > target and iterations < cfg.cg_max_iter:
            q = inner(p)
            Ap = p + outer(q)
            alpha = rr / float(p.dot(Ap))
            z.add_(p, alpha=alpha)
            coupled.add_(q, alpha=alpha)
            r.add_(Ap, alpha=-alpha)
            rr_new = float(r.dot(r))
            p = r + (rr_new / rr) * p
            rr = rr_new
            iterations += 1
        if rr > target:
            self.counters["cg_capped"] += 1
        self.warm = z.detach().clone()
        return z.detach(), coupled.detach(), iterations, math.sqrt(rr) / rhs_norm

    # ---- reporting and checkpoints ---------------------------------------------------------

    def stats(self) -> dict:
        """Counters (totals), the last step's CG iterations / mixed products / HVPs / residual,
        and each player's preconditioner statistics (block regulariser)."""
        out = {**self.counters, "last_step": dict(self.last), "solve_side": "x" if self.solve_x else "y"}
        for name, player in (("x", self.x), ("y", self.y)):
            if player.preconditioner is not None:
                out[f"{name}_preconditioner"] = player.preconditioner.stats()
        return out

    def state_dict(self) -> dict:
        def player_state(p: _Player) -> dict:
            return {"steps": p.steps,
                    "square_average": None if p.square_average is None else p.square_average.clone(),
                    "preconditioner": None if p.preconditioner is None else p.preconditioner.state_dict()}

        return {"config": dataclasses.asdict(self.config), "x": player_state(self.x), "y": player_state(self.y),
                "warm": None if self.warm is None else self.warm.clone(), "counters": dict(self.counters),
                "last": dict(self.last)}

    def load_state_dict(self, state: dict) -> None:
        for name, player in (("x", self.x), ("y", self.y)):
            s = state[name]
            player.steps = s["steps"]
            player.square_average = None if s["square_average"] is None else s["square_average"].clone()
            if (s["preconditioner"] is None) != (player.preconditioner is None):
                raise ValueError("hsc: the state_dict's regulariser does not match this optimizer's")
            if player.preconditioner is not None:
                player.preconditioner.load_state_dict(s["preconditioner"])
        self.warm = None if state["warm"] is None else state["warm"].clone()
        self.counters = {**dict.fromkeys(self.counters, 0), **state["counters"]}
        self.last = dict(state["last"])
