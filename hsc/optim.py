"""``HSC``: a torch optimizer taking momentum steps along the corrected preconditioned gradient.

The optimizer owns the update rule (momentum, weight decay, learning rate, safety checks); one
:class:`~hsc.preconditioner.Preconditioner` per parameter group owns the curvature bookkeeping;
the compiled ops own the matrix functions.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .distributed import RankGroup
from .config import CONFIG_FIELDS, PreconditionerConfig, option
from .numerics import all_finite
from .preconditioner import Preconditioner


STEP_RULES = ("trust", "armijo")


@dataclass
class StepControl:
    """How :class:`HSC` controls its step length on a deterministic loss (docs/contract.md §5).

    Each step moves by ``-lr * alpha * u`` (u: the momentum update along M^-1 g) with a trust
    factor alpha in (0, 1]; the step's predicted decrease is lr alpha g^T u.

    - ``trust``: no extra evaluation. The next step's loss judges the last step: a loss that is not
      finite or above the loss before the step by more than ``undo_above`` |loss| UNDOES the step
      (parameters and momentum restored, momentum cleared, alpha shrunk, the loss evaluated again
      at the restored point); otherwise the ratio of actual to predicted decrease shrinks alpha
      (below ``low``) or grows it back towards 1 (above ``high``), as a Levenberg-Marquardt
      parameter moves.
    - ``armijo``: backtracking on the closure within the step: trial points at alpha, alpha
      shrink, ... until the loss falls by at least ``armijo`` times the predicted decrease; after
      ``max_backtracks`` failures the step is not taken (counted as undone). alpha starts each step
      at min(1, grow x the last accepted alpha).
    An update u that is not a descent direction (g^T u <= 0: momentum pointing uphill, or a signed
    spectral mode on negative curvature) is replaced by M^-1 g with the momentum cleared, and by g
    itself where that is not descent either.
    """

    rule: str = option("trust", "trust: a step that raises the loss is undone and the next one shortened; "
                       "armijo: backtracking within the step", choices=STEP_RULES)
    undo_above: float = option(0.0, "trust: undo a step whose loss rises above the last by more than "
                               "this fraction of |loss|")
    shrink: float = option(0.5, "alpha's factor after an undone step or a poor ratio (trust), per "
                           "backtrack (armijo)")
    grow: float = option(2.0, "alpha's factor after a good ratio (trust), at the start of a step (armijo)")
    low: float = option(0.1, "trust: a ratio of actual to predicted decrease below this shrinks alpha")
    high: float = option(0.5, "trust: a ratio above this grows alpha back towards 1")
    armijo: float = option(1e-4, "armijo: the sufficient decrease, a fraction of the predicted one")
    max_backtracks: int = option(12, "armijo: trials before the step is given up")

    def validate(self) -> "StepControl":
        if self.rule not in STEP_RULES:
            raise ValueError(f"hsc: step_control.rule must be one of {STEP_RULES}, got {self.rule!r}")
        if not (0 < self.shrink < 1 and self.grow >= 1 and 0 <= self.low <= self.high and self.undo_above >= 0
                and 0 < self.armijo < 1 and self.max_backtracks >= 1):
            raise ValueError(f"hsc: step_control needs 0 < shrink < 1, grow >= 1, 0 <= low <= high, "
                             f"undo_above >= 0, 0 < armijo < 1, max_backtracks >= 1; got {self}")
        return self


class HSC(torch.optim.Optimizer):
    """Momentum SGD on p = M^-1 g (docs/contract.md §5).

    Args:
        params: parameters or parameter groups; a group may override any option below.
        lr: learning rate. The default, 0.01, is the largest of a grid from 0.001 to 1 that
            diverged on none of five problems with the library's preconditioner defaults
            (bench/results/defaults.md); on a deterministic loss, ``step_control`` allows 0.1.
        momentum: heavy-ball momentum on the preconditioned gradient.
        weight_decay: decoupled weight decay (p <- p (1 - lr wd)).
        process_group: a ``torch.distributed`` group for data-parallel training, or ``None``.
        step_control: a :class:`StepControl` (needs ``step(closure)`` on a deterministic loss, one
            process), or None: every step at the full lr.
        **preconditioner_options: fields of :class:`PreconditionerConfig` by name (``CONFIG_FIELDS``;
            the defaults are its own: the saddle-free root, relative mu, b = 16, every 50 steps).

    ``step(closure)``: ``closure()`` recomputes and returns the loss and does not call backward;
    the optimizer differentiates it and, when a refresh is due, takes the HVPs from the same graph.
    ``step()`` without a closure uses the ``.grad`` already there and the last factors.

    A non-finite loss, gradient or update skips the step (counted in ``counters``) and leaves
    the parameters untouched.

    Data-parallel (``process_group`` of R ranks, every rank calling ``step`` together): with a
    closure, each rank evaluates it on its own micro-batch and the optimizer averages the loss and
    the gradients over the ranks itself (one all-reduce; no DDP wrapper is needed, and DDP does
    not support the double backward the HVPs take). Without a closure, ``.grad`` must already be
    averaged (DDP's backward). Curvature and factors are sharded as in :class:`Preconditioner`;
    every rank applies the same update, so the parameters stay identical. An exception in the
    closure on one rank is raised on every rank. ``step(closure)`` then returns the rank mean of
    the loss (detached); without a group, the closure's loss itself.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                 *, process_group=None, step_control: Optional[StepControl] = None, **preconditioner_options):
        if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
            raise ValueError(f"hsc: lr must be a finite number > 0, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"hsc: momentum must be in [0, 1), got {momentum!r}")
        if not 0 <= weight_decay < math.inf:
            raise ValueError(f"hsc: weight_decay must be a finite number >= 0, got {weight_decay!r}")
        unknown = set(preconditioner_options) - set(CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"hsc: unknown option(s) {sorted(unknown)}; expected lr, momentum, "
                            f"weight_decay or one of {CONFIG_FIELDS}")
        config = PreconditionerConfig(**preconditioner_options).validate()
        if config.estimator == "gauss_newton":
            raise ValueError("hsc: HSC takes its curvature from the step's loss gradients: estimator must be "
                             "probe, coloured or exact, not gauss_newton (use a Preconditioner with "
                             "update_curvature in front of an optimizer instead)")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        **{f: getattr(config, f) for f in CONFIG_FIELDS})
        super().__init__(params, defaults)
        self.ranks = RankGroup(process_group)
        self.preconditioners = [
            Preconditioner(group["params"], ranks=self.ranks, **{f: group[f] for f in CONFIG_FIELDS})
            for group in self.param_groups
        ]
        self.counters = {"steps": 0, "skipped_non_finite_loss": 0, "skipped_non_finite_gradient": 0,
                         "skipped_non_finite_update": 0, "undone_steps": 0, "backtracks": 0,
                         "non_descent_updates": 0}
        if step_control is not None:
            if not isinstance(step_control, StepControl):
                raise TypeError(f"hsc: step_control must be a StepControl or None, got {type(step_control).__name__}")
            if self.ranks.distributed:
                raise ValueError("hsc: step_control is for one process (its loss must be deterministic)")
        self.step_control = None if step_control is None else dataclasses.replace(step_control).validate()
        # trust factor alpha; the state before the last step (trust rule): parameters, momentum
        # buffers, the loss there and the step's predicted decrease
        self.alpha = 1.0
        self._before: Optional[dict] = None

    def _skip(self, reason: str) -> None:
        self.counters[f"skipped_non_finite_{reason}"] += 1

    def _param_lists(self) -> list:
        return [g["params"] for g in self.param_groups]

    def _grads(self, loss: torch.Tensor, groups, create_graph: bool) -> list:
        """d loss / d params per group (zeros where unused). Frozen parameters (requires_grad
        False) get zeros and are left alone by the step, as torch's optimizers do."""
        params = [p for ps in groups for p in ps if p.requires_grad]
        found = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
        by_param = {id(p): g for p, g in zip(params, found) if g is not None}
        return [[by_param[id(p)] if id(p) in by_param else torch.zeros_like(p) for p in ps] for ps in groups]

    @staticmethod
    def _scalar(loss, name: str) -> torch.Tensor:
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"hsc: {name} must return the loss as a scalar tensor")
        return loss

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None,
             curvature_closure: Optional[Callable[[], torch.Tensor]] = None):
        """One step. ``closure()`` returns the loss (no backward). When a refresh is due the HVPs
        are taken from the closure's graph, or from ``curvature_closure()`` when given: a loss on
        part of the batch, say, since a refresh costs ``block_size`` HVPs (subsampled curvature,
        as Sophia and K-FAC use)."""
        if curvature_closure is not None and closure is None:
            raise ValueError("hsc: curvature_closure needs a closure (the step's loss)")
        if self.step_control is not None:
            if closure is None:
                raise ValueError("hsc: step_control needs step(closure)")
            return self._controlled_step(closure, curvature_closure)
        if closure is None:
            loss, directions = None, self._directions_from_grad()
        else:
            loss, directions = self._directions_from_closure(closure, curvature_closure)
        if directions is not None:
            self._apply(directions)
        return loss

    # ---- step control -----------------------------------------------------------------------

    def _snapshot(self) -> dict:
        return {"params": [p.detach().clone() for g in self.param_groups for p in g["params"]],
                "buffers": {p: st["momentum_buffer"].clone() for p, st in self.state.items()
                            if "momentum_buffer" in st}}

    def _restore(self, snapshot: dict, keep_momentum: bool) -> None:
        for p, x in zip((p for g in self.param_groups for p in g["params"]), snapshot["params"]):
            p.copy_(x)
        for p, st in self.state.items():
            st.pop("momentum_buffer", None)
            if keep_momentum and p in snapshot["buffers"]:
                st["momentum_buffer"] = snapshot["buffers"][p]

    def _controlled_step(self, closure, curvature_closure):
        ctl = self.step_control
        loss, directions = self._directions_from_closure(closure, curvature_closure)
        before, self._before = self._before, None
        if ctl.rule == "trust" and before is not None:
            value = float(loss) if loss is not None else math.nan
            if not math.isfinite(value) or value > before["loss"] + ctl.undo_above * abs(before["loss"]):
                self._restore(before, keep_momentum=False)
                self.alpha *= ctl.shrink
                self.counters["undone_steps"] += 1
                # the same step of the refresh schedule: no call counted again
                loss, directions = self._directions_from_closure(closure, None, count_call=False)
            else:
                predicted = before["predicted"]
                ratio = (before["loss"] - value) / predicted if predicted > 0 else 1.0
                if ratio < ctl.low:
                    self.alpha *= ctl.shrink
                elif ratio > ctl.high:
                    self.alpha = min(1.0, self.alpha * ctl.grow)
        if directions is None:
            return loss
        value = float(loss)
        start = self._snapshot()
        update, slope = self._descent_update(directions)
        if ctl.rule == "trust":
            if self._move(update, self.alpha):
                self._before = {**start, "loss": value, "predicted": self._lr_slope(slope) * self.alpha}
            return loss
        alpha = min(1.0, self.alpha * ctl.grow)
        for _ in range(ctl.max_backtracks):
            if self._move(update, alpha):
                with torch.no_grad():
                    trial = float(self._scalar(closure(), "closure"))
                if math.isfinite(trial) and trial <= value - ctl.armijo * alpha * self._lr_slope(slope):
                    self.alpha = alpha
                    return loss
                self._restore(start, keep_momentum=True)
                self.counters["steps"] -= 1  # the trial point was not kept
            self.counters["backtracks"] += 1
            alpha *= ctl.shrink
        self._restore(start, keep_momentum=False)
        self.alpha = alpha
        self.counters["undone_steps"] += 1
        return loss

    def _lr_slope(self, slope: list) -> float:
        """Predicted decrease of the step at alpha = 1: sum over groups of lr g^T u."""
        return sum(g["lr"] * s for g, s in zip(self.param_groups, slope))

    def _descent_update(self, directions):
        """The update u of each parameter (momentum applied, not yet stored) and g^T u per group,
        u replaced as the StepControl docstring says where it is not a descent direction."""
        updates, slopes = [], []
        cleared = False
        for group, ds in zip(self.param_groups, directions):
            momentum = group["momentum"]
            us, slope = [], 0.0
            for p, d in zip(group["params"], ds):
                if not p.requires_grad:
                    us.append(None)
                    continue
                buf = self.state[p].get("momentum_buffer") if momentum > 0 else None
                u = d if buf is None else buf * momentum + d
                us.append(u)
                slope += float((p.grad * u).sum())
            if not slope > 0:  # momentum uphill: the plain preconditioned direction, then g
                cleared = True
                for p in group["params"]:
                    self.state[p].pop("momentum_buffer", None)
                us = [None if not p.requires_grad else d for p, d in zip(group["params"], ds)]
                slope = sum(float((p.grad * d).sum()) for p, d in zip(group["params"], ds) if p.requires_grad)
                if not slope > 0:
                    us = [None if not p.requires_grad else p.grad.clone() for p in group["params"]]
                    slope = sum(float((p.grad * p.grad).sum()) for p in group["params"] if p.requires_grad)
            updates.append(us)
            slopes.append(slope)
        self.counters["non_descent_updates"] += int(cleared)
        return updates, slopes

    def _move(self, updates, alpha: float) -> bool:
        """Applies the updates at alpha x lr (momentum buffers = the updates); False (nothing
        written, counted) where a value would not be finite."""
        return self._apply(updates, lr_factor=alpha, momentum_done=True)

    # ---- the pieces of a step ---------------------------------------------------------------

    def _evaluate(self, closure, curvature_closure, groups, count_call: bool = True):
        """The loss, its gradients per group and the gradients the HVPs differentiate (with their
        graph when a refresh is due). An error on any rank is raised on every rank. Without a
        process group a non-finite loss skips the step here: (loss, None, None)."""
        loss = grads = curvature_grads = error = None
        with torch.enable_grad():
            try:
                loss = self._scalar(closure(), "closure")
                if not self.ranks.distributed and not bool(torch.isfinite(loss.detach()).all()):
                    self._skip("loss")
                    return loss, None, None
                due = count_call and any(pc.refresh_due for pc in self.preconditioners)
                grads = self._grads(loss, groups, create_graph=due and curvature_closure is None)
                curvature_grads = grads
                if due and curvature_closure is not None:
                    curvature_loss = self._scalar(curvature_closure(), "curvature_closure")
                    curvature_grads = self._grads(curvature_loss, groups, create_graph=True)
            except Exception as err:
                error = err
        self.ranks.agree(error, "closure", groups[0][0].device)
        return loss, grads, curvature_grads

    def _rank_mean(self, loss: torch.Tensor, blocks: list) -> torch.Tensor:
        """The rank mean of the loss (returned) and of the gradient blocks (in place), in one
        all-reduce."""
        mean_loss = loss.detach().reshape(1).clone()
        self.ranks.all_reduce_mean_([mean_loss] + blocks)
        return mean_loss.reshape(loss.shape)

    def _write_grads(self, groups, blocks: list) -> None:
        """``.grad`` of each parameter: a view of its group's gradient blocks."""
        for ps, pc, G in zip(groups, self.preconditioners, blocks):
            for p, g in zip(ps, pc.scatter(G)):
                if p.requires_grad:  # the blocks have the group's promoted dtype
                    p.grad = g if g.dtype == p.dtype else g.to(p.dtype)

    def _directions_from_closure(self, closure, curvature_closure, count_call: bool = True):
        """(loss, M^-1 g per group) from the closure, refreshing the curvature when due (when the
        call counts); the directions are None when the step is skipped."""
        groups = self._param_lists()
        loss, grads, curvature_grads = self._evaluate(closure, curvature_closure, groups, count_call)
        if grads is None:
            return loss, None
        # The step's own copy of each group's gradient, gathered straight into its blocks (one
        # concatenation: autograd's outputs may alias one another or be expanded); .grad are views
        # of it, and the solve needs no gather of its own. Each rank's HVPs come from its own
        # graph, averaged by the refresh.
        blocks = [pc.gather([g.detach() for g in gs]) for pc, gs in zip(self.preconditioners, grads)]
        if self.ranks.distributed:
            loss = self._rank_mean(loss, blocks)
            if not bool(torch.isfinite(loss).all()):
                self._skip("loss")
                return loss, None
        if not all_finite(blocks):
            self._skip("gradient")
            return loss, None
        if count_call:
            with torch.enable_grad():
                for pc, gs in zip(self.preconditioners, curvature_grads):
                    pc.refresh_if_due(gs)
        self._write_grads(groups, blocks)
        return loss, [pc.scatter(pc.solve_blocks(G, finite=True))  # checked above
                      for pc, G in zip(self.preconditioners, blocks)]

    def _directions_from_grad(self):
        """M^-1 g per group from the ``.grad`` already there (and the last factors); None when the
        step is skipped. Every rank takes the same decision: the all-gather in solve follows."""
        grads = [[p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
                 for ps in self._param_lists()]
        if not self.ranks.all_true(all_finite(g for gs in grads for g in gs), grads[0][0].device):
            self._skip("gradient")
            return None
        return [pc.solve(gs) for pc, gs in zip(self.preconditioners, grads)]

    def _apply(self, directions, lr_factor: float = 1.0, momentum_done: bool = False) -> bool:
        """Momentum and decoupled weight decay on the directions (``momentum_done``: the
        directions already hold the momentum update); returns whether the step was taken. The new
        momentum buffers and parameters are formed aside and written only when every value is
        finite: finite inputs can still overflow."""
        updates = []
        for group, ds in zip(self.param_groups, directions):
            lr, momentum, wd = group["lr"] * lr_factor, group["momentum"], group["weight_decay"]
            for p, d in zip(group["params"], ds):
                if not p.requires_grad:
                    continue
                buf = self.state[p].get("momentum_buffer") if momentum > 0 else None
                new_buf = None
                if momentum > 0:
                    new_buf = d.clone() if momentum_done or buf is None else buf * momentum + d
                    d = new_buf
                new_p = torch.add(p * (1 - lr * wd) if wd > 0 else p, d, alpha=-lr)
                updates.append((p, new_p, new_buf))
        # A non-finite buffer makes its parameter non-finite too (lr > 0), so checking the new
        # parameters covers both.
        if not all_finite([new_p for _, new_p, _ in updates]):
            self._skip("update")
            return False
        for p, new_p, new_buf in updates:
            p.copy_(new_p)
            if new_buf is not None:
                self.state[p]["momentum_buffer"] = new_buf
        self.counters["steps"] += 1
        return True

    def stats(self) -> dict:
        """The optimizer's counters and each group's preconditioner statistics."""
        return {**self.counters, "groups": [pc.stats() for pc in self.preconditioners]}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["preconditioners"] = [pc.state_dict() for pc in self.preconditioners]
        state["counters"] = dict(self.counters)
        state["step_control"] = {"alpha": self.alpha, "before": None if self._before is None else {
            "params": [x.clone() for x in self._before["params"]],
            "buffers": [self._before["buffers"].get(p) for g in self.param_groups for p in g["params"]],
            "loss": self._before["loss"], "predicted": self._before["predicted"]}}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        preconditioners = state_dict.pop("preconditioners")
        counters = state_dict.pop("counters")
        if len(preconditioners) != len(self.preconditioners):
            raise ValueError(f"hsc: state_dict has {len(preconditioners)} parameter groups, "
                             f"this optimizer {len(self.preconditioners)}")
        control = state_dict.pop("step_control", None) or {"alpha": 1.0, "before": None}
        super().load_state_dict(state_dict)
        for pc, s in zip(self.preconditioners, preconditioners):
            pc.load_state_dict(s)
        self.counters = {**dict.fromkeys(self.counters, 0), **counters}
        self.alpha = control["alpha"]
        before = control["before"]
        params = [p for g in self.param_groups for p in g["params"]]
        self._before = None if before is None else {
            "params": [x.clone() for x in before["params"]],
            "buffers": {p: b.clone() for p, b in zip(params, before["buffers"]) if b is not None},
            "loss": before["loss"], "predicted": before["predicted"]}
