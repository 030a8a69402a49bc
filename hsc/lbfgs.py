"""``PreconditionedLBFGS``: L-BFGS whose initial inverse Hessian is the block curvature
preconditioner M^-1 (docs/contract.md §7).

L-BFGS's curvature pairs (s, y) catch the few global directions that hold most of a loss's
curvature; the block preconditioner gives the local scale of every block, which the scalar
H_0 = s^T y / y^T y of plain L-BFGS cannot. The two-loop recursion runs with
H_0 = gamma M^-1, gamma = s^T y / y^T M^-1 y (the newest accepted pair), under torch's strong-Wolfe
line search. With ``preconditioner=None`` every iterate equals torch.optim.LBFGS's.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch
from torch.optim.lbfgs import _strong_wolfe

from .config import PreconditionerConfig
from .preconditioner import Preconditioner


class PreconditionedLBFGS(torch.optim.Optimizer):
    """L-BFGS with H_0 = gamma M^-1 from an :class:`hsc.Preconditioner` (docs/contract.md §7).

    The arguments up to ``line_search_fn`` are torch.optim.LBFGS's, with the same meaning and the
    same defaults except the line search, strong Wolfe by default. ``step(closure)`` follows
    torch's convention too: ``closure()`` clears the gradients, computes the loss, calls backward
    and returns the loss; ``step`` runs up to ``max_iter`` iterations and returns the first loss.

    Args:
        preconditioner: a :class:`hsc.PreconditionerConfig` (any mode); None switches the
            preconditioner off (plain L-BFGS, torch's iterates). Its ``update_every`` counts
            iterations: the curvature is refreshed on the first iteration and every
            ``update_every``-th after, from ``curvature_closure``.
        keep_pairs: keep the curvature pairs across a refresh (True) or start the history afresh
            with the new preconditioner (False).
        pair_tolerance: a pair (s, y) is kept only where s^T y > pair_tolerance ||s|| ||y|| (and
            s^T y > 1e-10, torch's rule): a pair with little or negative curvature along s would
            make the two-loop's H indefinite. Such pairs are skipped (counted).

    ``step(closure, curvature_closure)``: ``curvature_closure()`` returns the loss WITHOUT calling
    backward (the optimizer differentiates it twice for the Hessian-vector products of a
    refresh); it may be a cheaper loss (part of the batch). Needed when the preconditioner is on.

    A non-finite loss or gradient where the step starts leaves the parameters untouched; a line
    search that ends at a non-finite loss or step is undone (counted in ``counters``).
    """

    def __init__(self, params, lr: float = 1.0, max_iter: int = 20, max_eval: Optional[int] = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: Optional[str] = "strong_wolfe", *,
                 preconditioner: Optional[PreconditionerConfig] = None, keep_pairs: bool = True,
                 pair_tolerance: float = 1e-8):
        if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
            raise ValueError(f"hsc: lr must be a finite number > 0, got {lr!r}")
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"hsc: line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")
        if not (isinstance(history_size, int) and history_size >= 1):
            raise ValueError(f"hsc: history_size must be an int >= 1, got {history_size!r}")
        if not 0 <= pair_tolerance < 1:
            raise ValueError(f"hsc: pair_tolerance must be in [0, 1), got {pair_tolerance!r}")
        if preconditioner is not None and not isinstance(preconditioner, PreconditionerConfig):
            raise TypeError(f"hsc: preconditioner must be a PreconditionerConfig or None, "
                            f"got {type(preconditioner).__name__}")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size,
                        line_search_fn=line_search_fn)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("hsc: PreconditionedLBFGS takes one parameter group")
        self._params = self.param_groups[0]["params"]
        self.keep_pairs = keep_pairs
        self.pair_tolerance = pair_tolerance
        self.preconditioner = (None if preconditioner is None
                               else Preconditioner(self._params, dataclasses.replace(preconditioner)))
        self.counters = {"iterations": 0, "evaluations": 0, "skipped_pairs": 0, "skipped_non_finite": 0,
                         "undone_line_searches": 0, "refreshes": 0}

    # ---- flat vectors ----------------------------------------------------------------------

    def _gather_flat_grad(self) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                          for p in self._params])

    def _add_grad(self, step_size: float, update: torch.Tensor) -> None:
        offset = 0
        for p in self._params:
            n = p.numel()
            p.add_(update[offset:offset + n].view_as(p), alpha=step_size)
            offset += n

    def _set_param(self, data) -> None:
        for p, x in zip(self._params, data):
            p.copy_(x)

    def _apply_h0(self, q: torch.Tensor) -> torch.Tensor:
        """M^-1 q for a flat vector (q itself without a preconditioner)."""
        if self.preconditioner is None:
            return q
        return self.preconditioner.solve_flat(q, finite=True)

    def _refresh(self, curvature_closure: Optional[Callable[[], torch.Tensor]]) -> bool:
        """Refreshes the preconditioner when due; returns whether it did."""
        pre = self.preconditioner
        if pre is None:
            return False
        if pre.refresh_due and curvature_closure is None:
            raise ValueError("hsc: PreconditionedLBFGS.step needs curvature_closure (the loss, without "
                             "backward) when the preconditioner is on")
        with torch.enable_grad():  # counts the iteration; refreshes when due
            refreshed = pre.update_curvature(curvature_closure)
        self.counters["refreshes"] += int(refreshed)
        return refreshed

    # ---- the step --------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor],
             curvature_closure: Optional[Callable[[], torch.Tensor]] = None):
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        line_search_fn, history_size = group["line_search_fn"], group["history_size"]

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        self.counters["evaluations"] += 1
        flat_grad = self._gather_flat_grad()
        if not (math.isfinite(loss) and bool(torch.isfinite(flat_grad).all())):
            self.counters["skipped_non_finite"] += 1
            return orig_loss
        if flat_grad.abs().max() <= tolerance_grad:
            return orig_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro, h0 = state.get("old_dirs"), state.get("old_stps"), state.get("ro"), state.get("h0")
        prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            self.counters["iterations"] += 1
            refreshed = self._refresh(curvature_closure)
            if refreshed and not self.keep_pairs and old_dirs is not None:
                old_dirs, old_stps, ro = [], [], []
                h0 = None

            # ---- direction -------------------------------------------------------------------
            if state["n_iter"] == 1:
                d = self._apply_h0(flat_grad.neg())
                old_dirs, old_stps, ro, h0 = [], [], [], None
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10 and ys > self.pair_tolerance * s.norm() * y.norm():
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    # gamma: H_0 = gamma M^-1 matches the newest pair's curvature along y
                    h0 = ys / y.dot(self._apply_h0(y))
                else:
                    self.counters["skipped_pairs"] += 1
                num_old = len(old_dirs)
                if "al" not in state or len(state["al"]) != history_size:
                    state["al"] = [None] * history_size
                al = state["al"]
                q = flat_grad.neg()
                for i in range(num_old - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    q.add_(old_dirs[i], alpha=-al[i])
                d = r = self._apply_h0(q).mul(1 if h0 is None else h0)
                for i in range(num_old):
                    be_i = old_dirs[i].dot(r) * ro[i]
                    r.add_(old_stps[i], alpha=al[i] - be_i)

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            # ---- step length -----------------------------------------------------------------
            # torch's first step, |t d|_1 <= lr (d = -g without a preconditioner)
            t = min(1.0, 1.0 / d.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break

            ls_func_evals = 0
            x_init = [p.clone(memory_format=torch.contiguous_format) for p in self._params]
            if line_search_fn is not None:
                start_loss, start_grad = loss, flat_grad

                def obj_func(x, step, direction):
                    self._add_grad(step, direction)
                    value = float(closure())
                    grad = self._gather_flat_grad()
                    self._set_param(x)
                    if not (math.isfinite(value) and bool(torch.isfinite(grad).all())):
                        # A wall the line search backs away from: a loss far above the start's and
                        # the start's gradient, so that its interpolation stays finite.
                        value, grad = abs(start_loss) + 1e30, start_grad.clone()
                    return value, grad

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals)
                self._add_grad(t, d)
            else:
                self._add_grad(t, d)
                if n_iter != max_iter:
                    loss = float(closure())
                    flat_grad = self._gather_flat_grad()
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals
            self.counters["evaluations"] += ls_func_evals
            if not (math.isfinite(loss) and math.isfinite(float(t)) and bool(torch.isfinite(flat_grad).all())):
                self._set_param(x_init)  # nothing non-finite is kept
                self.counters["undone_line_searches"] += 1
                state.pop("d", None)
                state["n_iter"] = 0  # start afresh from the last good point
                old_dirs = old_stps = ro = None
                prev_flat_grad = None
                break
            opt_cond = flat_grad.abs().max() <= tolerance_grad

            # ---- stopping rules (torch's) ----------------------------------------------------
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, h0=h0,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss

    # ---- reporting and checkpoints ---------------------------------------------------------

    def stats(self) -> dict:
        """The optimizer's counters and the preconditioner's statistics (HVPs included)."""
        out = dict(self.counters)
        if self.preconditioner is not None:
            out["preconditioner"] = self.preconditioner.stats()
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["counters"] = dict(self.counters)
        state["preconditioner"] = None if self.preconditioner is None else self.preconditioner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        counters, pre = state_dict.pop("counters"), state_dict.pop("preconditioner")
        if (pre is None) != (self.preconditioner is None):
            raise ValueError("hsc: the state_dict's preconditioner does not match this optimizer's "
                             "(one of them is off)")
        super().load_state_dict(state_dict)
        self.counters = dict(counters)
        if pre is not None:
            self.preconditioner.load_state_dict(pre)
