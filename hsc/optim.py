"""``HSC``: a torch optimizer taking momentum steps along the corrected preconditioned gradient.

The optimizer owns the update rule (momentum, weight decay, learning rate, safety checks); one
:class:`~hsc.preconditioner.Preconditioner` per parameter group owns the curvature bookkeeping;
the compiled ops own the matrix functions.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .distributed import RankGroup
from .config import CONFIG_FIELDS, PreconditionerConfig
from .preconditioner import Preconditioner, all_finite


class HSC(torch.optim.Optimizer):
    """Momentum SGD on p = M^-1 g (docs/contract.md §5).

    Args:
        params: parameters or parameter groups; a group may override any option below.
        lr: learning rate.
        momentum: heavy-ball momentum on the preconditioned gradient.
        weight_decay: decoupled weight decay (p <- p (1 - lr wd)).
        process_group: a ``torch.distributed`` group for data-parallel training, or ``None``.
        **preconditioner_options: fields of :class:`PreconditionerConfig` (block_size, estimator,
            samples, ema, update_every, damping, scale, mode, max_tries, chunk_size, patch, seed).

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

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 *, process_group=None, **preconditioner_options):
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
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        **{f: getattr(config, f) for f in CONFIG_FIELDS})
        super().__init__(params, defaults)
        self.ranks = RankGroup(process_group)
        self.preconditioners = [
            Preconditioner(group["params"], ranks=self.ranks, **{f: group[f] for f in CONFIG_FIELDS})
            for group in self.param_groups
        ]
        self.counters = {"steps": 0, "skipped_non_finite_loss": 0, "skipped_non_finite_gradient": 0,
                         "skipped_non_finite_update": 0}

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
        if closure is None:
            loss, directions = None, self._directions_from_grad()
        else:
            loss, directions = self._directions_from_closure(closure, curvature_closure)
        if directions is not None:
            self._apply(directions)
        return loss

    # ---- the pieces of a step ---------------------------------------------------------------

    def _evaluate(self, closure, curvature_closure, groups):
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
                due = any(pc.refresh_due for pc in self.preconditioners)
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
            for p, g in zip(ps, pc.layout.scatter(G)):
                if p.requires_grad:  # the blocks have the group's promoted dtype
                    p.grad = g if g.dtype == p.dtype else g.to(p.dtype)

    def _directions_from_closure(self, closure, curvature_closure):
        """(loss, M^-1 g per group) from the closure, refreshing the curvature when due; the
        directions are None when the step is skipped."""
        groups = self._param_lists()
        loss, grads, curvature_grads = self._evaluate(closure, curvature_closure, groups)
        if grads is None:
            return loss, None
        # The step's own copy of each group's gradient, gathered straight into its blocks (one
        # concatenation: autograd's outputs may alias one another or be expanded); .grad are views
        # of it, and the solve needs no gather of its own. Each rank's HVPs come from its own
        # graph, averaged by the refresh.
        blocks = [pc.layout.gather([g.detach() for g in gs]) for pc, gs in zip(self.preconditioners, grads)]
        if self.ranks.distributed:
            loss = self._rank_mean(loss, blocks)
            if not bool(torch.isfinite(loss).all()):
                self._skip("loss")
                return loss, None
        if not all_finite(blocks):
            self._skip("gradient")
            return loss, None
        with torch.enable_grad():
            for pc, gs in zip(self.preconditioners, curvature_grads):
                pc.refresh_if_due(gs)
        self._write_grads(groups, blocks)
        return loss, [pc.layout.scatter(pc.solve_blocks(G, finite=True))  # checked above
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

    def _apply(self, directions) -> None:
        """Momentum and decoupled weight decay on the directions. The new momentum buffers and
        parameters are formed aside and written only when every value is finite: finite inputs can
        still overflow."""
        updates = []
        for group, ds in zip(self.param_groups, directions):
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p, d in zip(group["params"], ds):
                if not p.requires_grad:
                    continue
                buf = self.state[p].get("momentum_buffer") if momentum > 0 else None
                new_buf = None
                if momentum > 0:
                    new_buf = d.clone() if buf is None else buf * momentum + d
                    d = new_buf
                new_p = torch.add(p * (1 - lr * wd) if wd > 0 else p, d, alpha=-lr)
                updates.append((p, new_p, new_buf))
        # A non-finite buffer makes its parameter non-finite too (lr > 0), so checking the new
        # parameters covers both.
        if not all_finite([new_p for _, new_p, _ in updates]):
            self._skip("update")
            return
        for p, new_p, new_buf in updates:
            p.copy_(new_p)
            if new_buf is not None:
                self.state[p]["momentum_buffer"] = new_buf
        self.counters["steps"] += 1

    def stats(self) -> dict:
        """The optimizer's counters and each group's preconditioner statistics."""
        return {**self.counters, "groups": [pc.stats() for pc in self.preconditioners]}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["preconditioners"] = [pc.state_dict() for pc in self.preconditioners]
        state["counters"] = dict(self.counters)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        preconditioners = state_dict.pop("preconditioners")
        counters = state_dict.pop("counters")
        if len(preconditioners) != len(self.preconditioners):
            raise ValueError(f"hsc: state_dict has {len(preconditioners)} parameter groups, "
                             f"this optimizer {len(self.preconditioners)}")
        super().load_state_dict(state_dict)
        for pc, s in zip(self.preconditioners, preconditioners):
            pc.load_state_dict(s)
        self.counters = dict(counters)
