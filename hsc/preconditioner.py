"""The block preconditioner bookkeeping: curvature estimate, factors, refresh schedule
(docs/contract.md §4-5).

It rewrites gradients in place (``precondition_``) so that any torch optimizer can take the step;
``hsc.optim.HSC`` wraps it into an optimizer of its own.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from . import ops
from .config import PreconditionerConfig
from .curvature import draw_signs, exact_blocks, gauss_newton_blocks, probe_hvps
from .distributed import BlockShards, RankGroup
from .layout import BlockLayout
from .numerics import all_finite, finite_rows

# Spectrum summaries kept (one per refresh in a spectral mode; the oldest go first).
SUMMARIES_KEPT = 10_000

# Counters of blocks: each rank counts its own; checkpoints hold the sum over the ranks.
BLOCK_COUNTERS = ("kept_previous_factor", "non_finite_estimate_blocks", "non_finite_gradient_blocks")


def real_eigenvalues(eigenvalues: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of the real slots, flattened: ``eigenvalues`` is ``[N, b]`` (NaN rows for
    blocks without a decomposition), ``mask`` the layout's ``[N, b]`` real slots. A padding slot is
    an identity row and column of its block (docs/contract.md §1), so it contributes exactly one
    eigenvalue 1.0 to its block's spectrum: as many 1.0 as there are padding slots in the blocks
    kept are dropped (which copies of 1.0 go does not matter, they are equal)."""
    kept = torch.isfinite(eigenvalues).view(torch.uint8).amin(1).bool()  # .all(1), 5x faster on the CPU
    padded = kept & ~mask.all(1)
    full = eigenvalues[kept & ~padded].flatten()
    if not bool(padded.any()):
        return full
    # Only the (few) blocks with padding slots lose their 1.0s, the last ones of each row.
    rows, row_mask = eigenvalues[padded], mask[padded]
    ones = rows == 1
    drop = ones & (ones.flip(1).cumsum(1).flip(1) <= (~row_mask).sum(1, keepdim=True))
    return torch.cat([full, rows[~drop]])


def relative_statistic(values: torch.Tensor) -> float:
    """The statistic of the relative scale: the median |lambda| (the lower median), floored at
    eps max|lambda| so that mu stays positive where over half the eigenvalues vanish; 1 where every
    eigenvalue is 0 or there are none."""
    if values.numel() == 0:
        return 1.0
    a = values.abs()
    top = float(a.max())
    if top == 0:
        return 1.0
    return max(lower_median(a), torch.finfo(values.dtype).eps * top)


def lower_median(values: torch.Tensor) -> float:
    """``float(values.median())`` (the lower median of a 1-D tensor); on the CPU by selection
    (numpy's partition, linear time) rather than torch's sort, 10x faster at a million values."""
    if values.device.type != "cpu":
        return float(values.median())
    k = (values.numel() - 1) // 2
    return float(np.partition(values.numpy(), k)[k])


def spectrum_summary(values: torch.Tensor, scale: float) -> dict:
    """min / median / max eigenvalue, the fractions negative and below mu in magnitude, and mu."""
    if values.numel() == 0:
        return {"eigenvalues": 0, "scale": scale}
    n = values.numel()
    return {"eigenvalues": n, "min": float(values.min()), "median": lower_median(values),
            "max": float(values.max()), "fraction_negative": int((values < 0).sum()) / n,
            "fraction_below_scale": int((values.abs() < scale).sum()) / n, "scale": scale}


class Preconditioner:
    """Block-diagonal curvature of ``params`` and the corrected preconditioner M = A + mu^2 A^-1.

    Use in a training loop (each player of a GAN has its own)::

        pre = hsc.Preconditioner(model.parameters(), block_size=32)
        loss = loss_fn(); opt.zero_grad(); loss.backward()
        pre.update_curvature(loss_fn)   # refreshes once every update_every calls
        pre.precondition_()             # p.grad <- M^-1 p.grad
        opt.step()

    Until the first refresh gradients pass through unchanged. Blocks whose refresh fails
    (status 2 or 3) keep their previous factor when they have one (docs/contract.md §5).

    Data-parallel training (``process_group``, a ``torch.distributed`` group of R ranks): rank r
    owns the blocks ``layout.ranges(R)[r]`` and holds the estimate and factors of those only. At a
    refresh each rank takes the HVPs of its own micro-batch (``loss_fn`` on this rank's data);
    the block estimates are reduce-scattered (mean) to their owners, which factorise them.
    ``precondition_`` expects gradients already averaged over the ranks (as DDP leaves them):
    each owner solves its blocks and one all-gather hands every rank the whole of M^-1 g. Every
    rank must make the same calls in the same order (``update_curvature``, ``precondition_``,
    ``state_dict``: they are collectives); an exception raised on one rank during a refresh is
    raised on every rank as :class:`hsc.distributed.RankFailure`. The probe signs come from a
    generator seeded by ``seed`` on every rank, so all ranks probe with the same signs (the
    Gauss-Newton sketches from one of each rank's own, seeded from it).
    ``stats()`` describes this rank's blocks.
    """

    def __init__(self, params: Iterable[torch.Tensor], config: Optional[PreconditionerConfig] = None, *,
                 process_group=None, ranks: Optional[RankGroup] = None, **options):
        """Options come as a :class:`~hsc.config.PreconditionerConfig` or as its fields by name.
        ``ranks`` lets an optimizer share one :class:`RankGroup` (and its byte counts) between its
        preconditioners; give ``process_group`` otherwise."""
        if config is not None and options:
            raise TypeError("hsc: give a PreconditionerConfig or its fields by name, not both")
        if config is not None and not isinstance(config, PreconditionerConfig):
            raise TypeError(f"hsc: config must be a PreconditionerConfig, got {type(config).__name__}")
        self.config = (dataclasses.replace(config) if config is not None
                       else PreconditionerConfig(**options)).validate()
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("hsc: params must hold at least one tensor")
        self.layout = BlockLayout(self.params, self.config.block_size, patch=self.config.patch)
        if ranks is not None and process_group is not None:
            raise ValueError("hsc: give process_group or ranks, not both")
        self.ranks = ranks if ranks is not None else RankGroup(process_group)
        self.shards = BlockShards(self.layout, self.ranks)
        # The coloured estimator's block colours (None: plain probes, one colour).
        self.colours = (self.layout.block_colours(self.config.colour_radius)
                        if self.config.estimator == "coloured" else None)
        self.colour_count = 1 if self.colours is None or not self.colours.numel() else int(self.colours.max()) + 1
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.calls = 0
        # Estimate and factors of the owned blocks only (all blocks without a process group).
        self.estimate: Optional[torch.Tensor] = None
        self.correction: Optional[ops.Correction] = None
        self.has_factor = torch.zeros(self.shards.num_owned, dtype=torch.bool, device=self.layout.device)
        self.counters = {"refreshes": 0, "hvps": 0, "kept_previous_factor": 0,
                         "non_finite_estimate_blocks": 0, "non_finite_gradient_blocks": 0}
        self.timings = {"hvp": 0.0, "assembly": 0.0, "communication": 0.0, "factorisation": 0.0,
                        "apply": 0.0}
        self.scale = self.config.scale  # mu of the last refresh
        # Spectral modes: the real eigenvalues of every block at the last refresh, and a summary
        # per refresh (spectrum_summary).
        self.eigenvalues: Optional[torch.Tensor] = None
        self.spectra: list = []
        # [T] int64: where each tensor's blocks end, the segments hsc.ops.graft_ rescales
        self._tensor_ends = torch.tensor([end for _, end in self.layout.tensor_blocks], dtype=torch.int64,
                                         device=self.layout.device)

    # ---- schedule --------------------------------------------------------------------------

    @property
    def refresh_due(self) -> bool:
        """Whether the next call refreshes (the first, then every ``update_every``-th)."""
        return self.calls % self.config.update_every == 0

    def tick(self) -> bool:
        """Counts one call; returns whether it is due to refresh."""
        due = self.refresh_due
        self.calls += 1
        return due

    def refresh_if_due(self, grads: Optional[Sequence[torch.Tensor]]) -> bool:
        """Counts one step and refreshes from ``grads`` (the loss gradient computed with
        ``create_graph=True``) when it is due; returns whether it refreshed. With a process group
        every rank must call it together. (The ``gauss_newton`` estimator needs the outputs:
        :meth:`update_curvature`.)"""
        if self.config.estimator == "gauss_newton":
            raise ValueError("hsc: estimator gauss_newton takes its curvature from update_curvature(loss_fn) "
                             "with loss_fn returning (outputs, loss), not from gradients")
        if not self.tick():
            return False
        self.refresh(grads)
        return True

    def update_curvature(self, loss_fn: Callable[[], object]) -> bool:
        """Call once per step with a callable that recomputes the loss. Every ``update_every``
        calls (the first included) it re-estimates the curvature and refactors; otherwise it
        returns at once. Returns whether it refreshed.

        With the ``gauss_newton`` estimator ``loss_fn()`` returns ``(outputs, loss)``: the rows
        the loss is computed from (a network's outputs, ``[n]`` or ``[n, ...]``) and the loss as a
        function of them alone, a sum of per-row terms (docs/contract.md §4)."""
        if not self.tick():
            return False
        grads, error, curvature = None, None, None
        with torch.enable_grad():
            try:
                result = loss_fn()
                if self.config.estimator == "gauss_newton":
                    if not (isinstance(result, tuple) and len(result) == 2
                            and all(isinstance(t, torch.Tensor) for t in result) and result[1].numel() == 1):
                        raise ValueError("hsc: with estimator gauss_newton, loss_fn must return (outputs, loss): "
                                         "the outputs the loss is computed from and the scalar loss")
                    curvature = result
                else:
                    if not isinstance(result, torch.Tensor) or result.numel() != 1:
                        raise ValueError("hsc: loss_fn must return a scalar tensor")
                    grads = torch.autograd.grad(result, self.params, create_graph=True, allow_unused=True)
                    grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)]
            except Exception as err:  # raised on every rank by refresh, not only on this one
                error = err
            self.refresh(grads, error=error, outputs_and_loss=curvature)
        return True

    # ---- refresh ---------------------------------------------------------------------------

    def refresh(self, grads: Optional[Sequence[torch.Tensor]], *, error: Optional[BaseException] = None,
                outputs_and_loss: Optional[tuple] = None) -> None:
        """Re-estimate the curvature from ``grads`` (the loss gradient with respect to the params,
        computed with ``create_graph=True``), or for the ``gauss_newton`` estimator from
        ``outputs_and_loss``, and refactor.

        ``error``: an exception the caller met while computing ``grads`` on this rank; it is
        raised on every rank (with a process group), after the ranks have agreed on it.
        """
        cfg, layout, ranks = self.config, self.layout, self.ranks
        t0 = time.perf_counter()
        first = self.estimate is None
        # Drawn before anything can fail, so every rank's generator stays in step.
        signs = draw_signs(self.generator, cfg.samples, layout.num_blocks, self.params[0].dtype,
                           layout.device) if cfg.estimator in ("probe", "coloured") else None
        # Gauss-Newton sketches draw as many signs as this rank has output rows: with a group, from
        # a generator of the rank's own (one seed drawn here on every rank), so that the shared one
        # stays in step and the ranks' sketches are independent
        sketch_generator = self.generator
        if cfg.estimator == "gauss_newton" and ranks.distributed:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
            sketch_generator = torch.Generator().manual_seed(seed + ranks.rank)
        blocks, finite, t1 = None, None, t0
        if error is None:
            try:
                if cfg.estimator == "exact":
                    blocks = exact_blocks(layout, grads, self.params, chunk_size=cfg.chunk_size).detach()
                    self.counters["hvps"] += layout.numel
                    t1 = time.perf_counter()
                elif cfg.estimator == "gauss_newton":
                    blocks, products = gauss_newton_blocks(layout, *outputs_and_loss, self.params,
                                                           chunk_size=cfg.chunk_size, sketches=cfg.sketches,
                                                           generator=sketch_generator)
                    blocks = blocks.detach()
                    self.counters["hvps"] += products
                    t1 = time.perf_counter()
                else:
                    hvps = probe_hvps(layout, grads, self.params, signs, chunk_size=cfg.chunk_size,
                                      colours=self.colours).detach()
                    self.counters["hvps"] += cfg.samples * cfg.block_size * self.colour_count
                    t1 = time.perf_counter()
                    shape = (layout.num_blocks, cfg.block_size, cfg.block_size)
                    if ranks.distributed:  # this rank's estimate of every block, averaged below
                        blocks = hvps.new_empty(shape)
                        ops.accumulate_probes(blocks, hvps, signs, layout.mask, ema=0.0, first=True)
                    else:  # one pass, folded straight into the state
                        if first:
                            self.estimate = hvps.new_empty(shape)
                        finite = ops.accumulate_probes(self.estimate, hvps, signs, layout.mask,
                                                       ema=cfg.ema, first=first)
                if blocks is not None:
                    blocks = self.shards.padded(blocks)
            except Exception as err:
                error = err
        t_local = time.perf_counter()
        ranks.agree(error, "refresh", layout.device)  # with a group, also waits for the slowest rank
        t2 = t3 = t4 = time.perf_counter()
        try:
            if blocks is not None:
                blocks = self.shards.reduce_scatter_mean(blocks)
                t3 = time.perf_counter()
                finite = self._fold(blocks, first)
            self.counters["non_finite_estimate_blocks"] += int((~finite).sum())
            t4 = time.perf_counter()
            self._factorise()
        except Exception as err:  # e.g. out of memory on one rank: every rank learns of it
            error = err
        ranks.agree(error, "refresh (factorisation)", layout.device)
        t5 = time.perf_counter()
        self.counters["refreshes"] += 1
        self.timings["hvp"] += t1 - t0
        self.timings["assembly"] += (t_local - t1) + (t4 - t3)
        self.timings["communication"] += (t2 - t_local) + (t3 - t2)
        self.timings["factorisation"] += t5 - t4

    def _fold(self, blocks: torch.Tensor, first: bool) -> torch.Tensor:
        """Folds assembled block estimates of the owned blocks into the state, by the rules
        ``ops.accumulate_probes`` also folds with (``ops.fold_estimate_``). Returns ``[N]``
        finiteness of ``blocks``."""
        if first:
            self.estimate = torch.empty_like(blocks)
        return ops.fold_estimate_(self.estimate, blocks, self.shards.owned(self.layout.mask),
                                  ema=self.config.ema, first=first)

    def _factorise(self) -> None:
        cfg = self.config
        if cfg.mode in ops.EIGH_MODES:
            new = self._factorise_spectral()
        else:
            options = dict(damping=cfg.damping, scale=cfg.scale, mode=cfg.mode, max_tries=cfg.max_tries)
            self.scale = cfg.scale
            if self.correction is None:
                new = ops.correct(self.estimate, **options)
            else:  # refactorise into the same buffer; a failed block that had a factor keeps it
                new = ops.correct_(self.correction.factor, self.estimate, keep_failed=self.has_factor,
                                   **options)
        failed = new.status >= ops.Status.NON_FINITE
        self.counters["kept_previous_factor"] += int((failed & self.has_factor).sum())
        self.has_factor |= ~failed
        self.correction = new

    def _factorise_spectral(self) -> ops.Correction:
        """The spectral modes: the eigenpairs of every owned block, then mu (the relative rule:
        from every rank's eigenvalues, so that all ranks use one mu), then the factor."""
        cfg = self.config
        eigen = ops.eigh(self.estimate, max_sweeps=cfg.max_sweeps)
        values = real_eigenvalues(self.shards.all_gather(
            eigen.eigenvalues.masked_fill((eigen.status != ops.Status.FACTORISED)[:, None], float("nan")),
            phase="refresh"), self.layout.mask)
        # relative: never below the dtype's smallest normal number, so that 1/mu stays finite
        self.scale = (max(cfg.scale * relative_statistic(values), torch.finfo(values.dtype).tiny)
                      if cfg.scale_rule == "relative" else cfg.scale)
        self.eigenvalues = values
        self.spectra.append(spectrum_summary(values, self.scale))
        del self.spectra[:-SUMMARIES_KEPT]
        if self.correction is None:
            return ops.correct_from_eigh(eigen, scale=self.scale, mode=cfg.mode, power=cfg.factor_power)
        return ops.correct_from_eigh_(self.correction.factor, eigen, scale=self.scale, mode=cfg.mode,
                                      keep_failed=self.has_factor, power=cfg.factor_power)

    # ---- apply -----------------------------------------------------------------------------

    def _solve_owned(self, G: torch.Tensor, finite: bool = False) -> torch.Tensor:
        """M^-1 g for gradients gathered into ``[N, b]`` blocks: this rank solves its own, the
        all-gather brings the rest. Non-finite gradient blocks are counted (the owned ones), not
        repaired; ``finite``: the caller has checked that there are none."""
        G = self.shards.owned(G)
        if not finite and not all_finite([G]):
            self.counters["non_finite_gradient_blocks"] += int((~finite_rows(G)).sum())
        return self.shards.all_gather(ops.solve(self.correction, G))

    def solve_blocks(self, G: torch.Tensor, *, finite: bool = False) -> torch.Tensor:
        """M^-1 g for gradients already gathered into blocks (``layout.gather``, ``[N, b]``):
        :meth:`solve` without the gather and the scatter. ``finite=True`` says the caller
        has checked that every entry of G is finite (the optimizer skips steps otherwise), which
        saves the count of non-finite blocks. Returns ``[N, b]`` (a copy of G before the first
        refresh)."""
        if self.correction is None:
            return G.clone()
        t0 = time.perf_counter()
        out = self._solve_owned(G, finite)
        self.timings["apply"] += time.perf_counter() - t0
        return out

    def solve(self, grads: Sequence[torch.Tensor]) -> list:
        """M^-1 g for gradients shaped like the params; returns new tensors (unchanged copies
        before the first refresh)."""
        if self.correction is None:
            return [g.clone() for g in grads]
        t0 = time.perf_counter()
        out = self.layout.scatter(self._solve_owned(self.layout.gather(grads)))
        self.timings["apply"] += time.perf_counter() - t0
        return out

    def solve_flat(self, v: torch.Tensor, *, finite: bool = False) -> torch.Tensor:
        """M^-1 v for a flat vector ``v`` (``[n]``: the params flattened and concatenated in
        order, as ``torch.cat([p.reshape(-1) for p in params])``); a copy of ``v`` before the
        first refresh. ``finite`` as in :meth:`solve_blocks`."""
        if v.dim() != 1 or v.shape[0] != self.layout.numel:
            raise ValueError(f"hsc: v must be a flat vector of the {self.layout.numel} parameter entries, "
                             f"got shape {list(v.shape)}")
        pieces = [x.view(shape) for x, shape in zip(v.split([p.numel() for p in self.params]), self.layout.shapes)]
        blocks = self.solve_blocks(self.layout.gather(pieces), finite=finite)
        return torch.cat([x.reshape(-1) for x in self.layout.scatter(blocks)])

    def gather(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tensors shaped like the params (their gradients, say) as ``[N, b]`` blocks, the form
        :meth:`solve_blocks` takes (``BlockLayout.gather``)."""
        return self.layout.gather(tensors)

    def scatter(self, blocks: torch.Tensor) -> list:
        """``[N, b]`` blocks back to tensors shaped like the params (``BlockLayout.scatter``:
        views of ``blocks`` where the layout allows)."""
        return self.layout.scatter(blocks)

    @torch.no_grad()
    def precondition_(self, *, graft: bool = False) -> bool:
        """Rewrites each parameter's ``.grad`` with M^-1 g, in place (parameters without a
        gradient count as zero and are left without one). Returns whether every rewritten
        gradient is finite (True before the first refresh, when nothing is rewritten).

        ``graft``: then rescales each tensor's M^-1 g to the norm of its raw gradient g, so that
        the optimizer after it keeps its own step length and the preconditioner only turns the
        direction (per-tensor norm grafting, as Shampoo grafts; ``hsc gan``'s per-player method):
        one fused op (``hsc.ops.graft_``) for all tensors.

        Non-finite gradient blocks are counted only when the result is not finite (a NaN or Inf
        in g always reaches M^-1 g), so that an ordinary step reads the device once."""
        if self.correction is None:
            return True
        t0 = time.perf_counter()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        G = self.layout.gather(grads)
        P = self._solve_owned(G, finite=True)
        if not graft:
            finite = all_finite([P])
        elif P.dtype in (torch.float32, torch.float64):
            finite = bool(ops.graft_(P, G, self._tensor_ends).all())
        else:  # graft_ takes float32/64: grafted in float32, judged after rounding back (float16 overflows)
            grafted = P.float()
            ops.graft_(grafted, G.float(), self._tensor_ends)
            P = grafted.to(P.dtype)
            finite = all_finite([P])
        if not finite:
            self.counters["non_finite_gradient_blocks"] += int((~finite_rows(self.shards.owned(G))).sum())
        # Parameters without a gradient receive their (discarded) share in a temporary.
        self.layout.scatter_(P, grads)
        self.timings["apply"] += time.perf_counter() - t0
        return finite

    # ---- what optimizers and applications read --------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the first refresh has happened: before it, every solve returns its input."""
        return self.correction is not None

    @property
    def hvps(self) -> int:
        """Hessian-vector products taken so far (by this rank)."""
        return self.counters["hvps"]

    def spectrum(self) -> Optional[Tuple[torch.Tensor, float]]:
        """In a spectral mode, after a refresh: (the eigenvalues of every block's real slots at
        the last refresh, flattened, and mu of that refresh); otherwise None."""
        if self.eigenvalues is None:
            return None
        return self.eigenvalues, self.scale

    # ---- reporting and checkpoints ---------------------------------------------------------

    def stats(self) -> dict:
        """Blocks by status, damping used (min / median / max), refresh time split, counters (HVPs
        included), mu of the last refresh; in a spectral mode also ``spectrum``, the summary of
        every block's eigenvalues at the last refresh (min / median / max, fraction negative,
        fraction below mu in magnitude), and ``spectra``, one such summary per refresh (the last
        10,000).

        With a process group: this rank's blocks (``owned``), and the collectives' payload bytes."""
        out = {"blocks": self.layout.num_blocks, "block_size": self.config.block_size,
               "calls": self.calls, **self.counters, "seconds": dict(self.timings), "scale": self.scale}
        if self.spectra:
            out.update(spectrum=dict(self.spectra[-1]), spectra=[dict(x) for x in self.spectra])
        if self.ranks.distributed:
            out.update(rank=self.ranks.rank, world_size=self.ranks.world_size,
                       owned=(self.shards.start, self.shards.end), sent_bytes=dict(self.ranks.sent_bytes))
        if self.correction is not None:
            status, damping = self.correction.status, self.correction.damping.double()
            out["status"] = {code.name.lower(): int((status == code).sum()) for code in ops.Status}
            out["damping"] = {"min": float(damping.min()), "median": float(damping.median()),
                              "max": float(damping.max())} if damping.numel() else {}
        return out

    def state_dict(self) -> dict:
        """Rank-independent: every block's state, gathered from the owners (a collective with a
        process group), so it loads on any number of ranks; block counters summed over the ranks;
        timings are this rank's. ``ranges`` records the saving run's split. Tensors are copies."""
        c = self.correction

        def full(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if t is None:
                return None
            gathered = self.shards.all_gather(t, phase="checkpoint")
            return gathered.clone() if gathered is t else gathered

        counters = dict(self.counters)
        if self.ranks.distributed:
            totals = torch.tensor([counters[k] for k in BLOCK_COUNTERS], dtype=torch.int64,
                                  device=self.layout.device)
            self.ranks.all_reduce_sum_(totals, phase="checkpoint")
            counters.update(zip(BLOCK_COUNTERS, totals.tolist()))

        return {
            "config": dataclasses.asdict(self.config),
            "num_blocks": self.layout.num_blocks,
            "ranges": list(self.shards.ranges),
            "calls": self.calls,
            "estimate": full(self.estimate),
            "correction": None if c is None else
            {"factor": full(ops.unpack(c.factor, c.status.shape[0])), "damping": full(c.damping),
             "status": full(c.status)},
            # uint8: not every backend gathers bool
            "has_factor": full(self.has_factor.to(torch.uint8)).bool(),
            "generator": self.generator.get_state(),
            "counters": counters,
            "timings": dict(self.timings),
            "scale": self.scale,
            "spectra": [dict(x) for x in self.spectra],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_blocks"] != self.layout.num_blocks or state["config"]["block_size"] != self.config.block_size:
            raise ValueError(f"hsc: state holds {state['num_blocks']} blocks of {state['config']['block_size']}, "
                             f"this preconditioner has {self.layout.num_blocks} of {self.config.block_size}")
        self.config = PreconditionerConfig(**state["config"]).validate()
        device = self.layout.device

        def owned(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else self.shards.owned(t).to(device).clone()

        self.calls = state["calls"]
        self.estimate = owned(state["estimate"])
        c = state["correction"]
        self.correction = None if c is None else ops.Correction(
            ops.pack(owned(c["factor"])), owned(c["damping"]), owned(c["status"]))
        self.has_factor = owned(state["has_factor"])
        self.generator.set_state(state["generator"])
        self.counters = {**dict.fromkeys(self.counters, 0), **state["counters"]}
        if self.ranks.rank != 0:  # the totals live on rank 0, so that saving sums them once
            self.counters.update(dict.fromkeys(BLOCK_COUNTERS, 0))
        self.timings = {**dict.fromkeys(self.timings, 0.0), **state["timings"]}
        self.scale = state.get("scale", self.config.scale)
        self.spectra = [dict(x) for x in state.get("spectra", [])]
