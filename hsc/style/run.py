"""One style-transfer optimisation of the image's pixels with hsc, hsc-lbfgs, L-BFGS or Adam.

Same rules for every optimizer:

- The loss is evaluated on the unconstrained image; the output is the last iterate clamped to
  [0, 1] (``RunResult.image``), and ``final_loss`` is the loss of that clamped image.
- An *evaluation* is one loss-and-gradient computation. hsc's Hessian-vector products (b per
  curvature refresh, b = 3 ph pw for patches of ph x pw pixels) are counted apart, in ``hvps``.
- After every optimizer step the history records (wall-clock seconds of optimisation,
  evaluations, HVPs, loss). The loss is the newest one known without an extra evaluation: for
  hsc and Adam the loss at the iterate the step started from, for L-BFGS the loss at the point its
  line search accepted.
- The budget is any of steps (L-BFGS: iterations), evaluations and seconds; the run stops at the
  first one reached.

L-BFGS is ``torch.optim.LBFGS`` with a strong-Wolfe line search, called once per iteration so
that the history has one record per iteration. Each call starts by evaluating the current point,
which the line search already evaluated; the closure returns those cached values, so one
iteration costs exactly the evaluations of its line search, as in a single long call.
``hsc-lbfgs`` is ``hsc.PreconditionedLBFGS`` (L-BFGS with H_0 = gamma M^-1 from the pixel blocks'
curvature), stepped the same way; its curvature refreshes evaluate the loss once more (counted)
and take b HVPs per colour (counted in ``hvps``).

A run is ``diverged`` when its final loss is not finite or when the optimizer skipped a step for
a non-finite value: the CLI reports it loudly and exits with an error.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..config import PreconditionerConfig, nested, option
from ..lbfgs import PreconditionedLBFGS
from ..optim import HSC, StepControl
from .objective import StyleObjective

INITS = ("content", "noise")


# The preconditioner's defaults over the pixels (the library's, where not set here): blocks of
# 1x1-pixel patches (b = 3) in the Cholesky mode with an absolute mu, refreshed every 100 steps;
# scale and damping per pixel (see HSCSettings). bench/results/style_notes.md holds the grid
# that chose them; the library's spectral default diverged on pixels with momentum 0.97.
STYLE_PRECONDITIONER = dataclasses.replace(PreconditionerConfig(), block_size=3, patch=(1, 1),
                                           update_every=100, scale=500.0, damping=1.0, mode="cholesky",
                                           scale_rule="absolute")


@dataclass
class HSCSettings:
    """The ``hsc`` optimizer over the pixels: momentum SGD (``lr``, ``momentum``) on M^-1 g, with
    the preconditioner's options in ``preconditioner`` (a :class:`hsc.PreconditionerConfig`).
    Spatial patches of ``patch`` pixels are the blocks, so the block size is always 3 ph pw; the
    probe signs are seeded by the run's seed.

    ``scale`` (an absolute mu) and ``damping`` (delta) are given per pixel: the loss terms are
    means over pixels, so the gradient and the curvature of one pixel shrink as 1 / (H W), and the
    preconditioner receives ``scale / (H W)`` and ``damping / (H W)``. The same values then give
    the same per-pixel steps at every image size. A relative scale (``scale_rule="relative"``) is
    the ratio rho to the blocks' median |eigenvalue|, free of the size already.
    """

    lr: float = option(0.1, "learning rate")
    momentum: float = option(0.97, "heavy-ball momentum")
    preconditioner: PreconditionerConfig = nested(lambda: dataclasses.replace(STYLE_PRECONDITIONER),
                                                  "hsc: the preconditioner over the pixels (hsc.PreconditionerConfig)")
    # a step that raises the loss is undone (docs/contract.md §5); None: every step at the full lr
    step_control: Optional[StepControl] = nested(StepControl, "hsc: step control (hsc.StepControl); none: "
                                                 "every step at the full lr", flatten=False, switch="rule")

    @property
    def patch(self) -> tuple:
        return self.preconditioner.patch

    @property
    def block_size(self) -> int:
        return 3 * self.patch[0] * self.patch[1]

    def optimizer(self, image: torch.Tensor, seed: int) -> HSC:
        """``hsc.HSC`` over ``image`` (``[1, 3, H, W]``) with these settings."""
        pixels = image.shape[-2] * image.shape[-1]
        pre = self.preconditioner
        # per pixel: an absolute mu, and the damping (a relative mu is rho, already size-free)
        cfg = dataclasses.replace(pre, block_size=self.block_size, patch=tuple(self.patch),
                                  scale=pre.scale / pixels if pre.scale_rule == "absolute" else pre.scale,
                                  damping=pre.damping / pixels, seed=seed)
        return HSC([image], lr=self.lr, momentum=self.momentum, step_control=self.step_control,
                   **dataclasses.asdict(cfg))


# hsc-lbfgs: the preconditioner over the pixels, per pixel-block (b = 3): the library's spectral
# default (saddle-free root, mu relative to the blocks' median |eigenvalue|), refreshed every 60
# iterations. Each refresh replaces the estimate (ema 0): L-BFGS moves far in 60 iterations, and an
# average with the last point's blocks cost evaluations on every pair and size tried
# (bench/results/style_lbfgs_grid_*.md).
LBFGS_PRECONDITIONER = dataclasses.replace(PreconditionerConfig(), block_size=3, patch=(1, 1),
                                           update_every=60, ema=0.0)


@dataclass
class LBFGSSettings:
    """``hsc-lbfgs``: hsc.PreconditionedLBFGS over the pixels (history, pairs kept across a
    refresh or not, the preconditioner's options; patches as in HSCSettings, b = 3 ph pw)."""

    history: int = option(100, "pairs kept")
    keep_pairs: bool = option(True, "keep the pairs across a refresh")
    preconditioner: PreconditionerConfig = nested(lambda: dataclasses.replace(LBFGS_PRECONDITIONER),
                                                  "hsc-lbfgs: L-BFGS with the pixel blocks' M^-1 as initial "
                                                  "inverse Hessian (hsc.PreconditionerConfig)")

    def optimizer(self, image: torch.Tensor, seed: int) -> PreconditionedLBFGS:
        ph, pw = self.preconditioner.patch
        cfg = dataclasses.replace(self.preconditioner, block_size=3 * ph * pw, seed=seed)
        # max_eval: the start evaluation (cached) plus torch's default line-search limit of 25
        return PreconditionedLBFGS([image], lr=1, max_iter=1, max_eval=26, history_size=self.history,
                                   line_search_fn="strong_wolfe", preconditioner=cfg,
                                   keep_pairs=self.keep_pairs)


@dataclass
class RunConfig:
    """One run: the optimizer, its settings, the start image and the budget."""

    optimizer: str = "hsc"
    steps: Optional[int] = None
    evaluations: Optional[int] = None
    seconds: Optional[float] = None
    init: str = option("content", "start from the content image or from uniform noise", choices=INITS)
    seed: int = option(0, "the noise start and hsc's probe signs")
    adam_lr: float = option(0.1, "adam: the learning rate")
    lbfgs_history: int = option(100, "lbfgs: pairs kept")
    hsc: HSCSettings = nested(HSCSettings, "hsc: momentum SGD on the preconditioned gradient", flatten=False)
    hsc_lbfgs: LBFGSSettings = nested(LBFGSSettings, "hsc-lbfgs", flatten=False)

    def validate(self) -> "RunConfig":
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"hsc: --optim must name optimizers among {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.init not in INITS:
            raise ValueError(f"hsc: --init must be one of {INITS}, got {self.init!r}")
        if self.steps is None and self.evaluations is None and self.seconds is None:
            raise ValueError("hsc: give a budget: --steps, --evaluations or --seconds")
        for name in ("steps", "evaluations"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"hsc: --{name} must be an int >= 1, got {value!r}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"hsc: --seconds must be > 0, got {self.seconds!r}")
        patch = self.hsc.patch
        if not (isinstance(patch, (tuple, list)) and len(patch) == 2
                and all(isinstance(p, int) and p >= 1 for p in patch)):
            raise ValueError(f"hsc: --hsc-patch must be two ints >= 1 (ph, pw), got {patch!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Record:
    seconds: float
    evaluations: int
    hvps: int
    loss: float


@dataclass
class RunResult:
    config: RunConfig
    image: torch.Tensor              # the last iterate clamped to [0, 1]
    final_loss: float                # the loss of ``image``
    final_terms: Dict[str, float]    # its unweighted content / style / tv terms
    history: List[Record]
    steps: int
    seconds: float
    stats: dict
    diverged: bool                   # final loss not finite, or a step skipped for a non-finite value
    # hsc in a spectral mode: the pixel blocks' eigenvalues at the last refresh, and mu.
    spectra: Dict[str, Tuple[torch.Tensor, float]] = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        return self.history[-1].evaluations

    @property
    def hvps(self) -> int:
        return self.history[-1].hvps

    def to_dict(self) -> dict:
        return {"optimizer": self.config.optimizer, "config": self.config.to_dict(),
                "diverged": self.diverged, "final_loss": self.final_loss, "final_terms": self.final_terms, "steps": self.steps,
                "seconds": self.seconds, "evaluations": self.evaluations, "hvps": self.hvps,
                "history": [dataclasses.asdict(r) for r in self.history], "stats": self.stats}


def initial_image(content: torch.Tensor, init: str, seed: int) -> torch.Tensor:
    """The start: a copy of the content image, or uniform noise in [0, 1] drawn from ``seed``."""
    if init == "content":
        return content.clone()
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(content.shape, generator=generator)


class StyleOptimizer:
    """One optimizer's steps over the image: counts evaluations; an entry of :data:`OPTIMIZERS`.
    A new optimizer is one subclass and one entry (``color`` is its colour in the plots)."""

    color = "tab:grey"

    def __init__(self, objective: StyleObjective, image: torch.Tensor, config: RunConfig):
        self.objective, self.image, self.config = objective, image, config
        self.evaluations = 0
        self.optimizer = self.make(image, config)

    def make(self, image: torch.Tensor, config: RunConfig) -> torch.optim.Optimizer:
        raise NotImplementedError

    def step(self) -> Optional[float]:
        """One step; returns the loss to record, or None when the optimizer cannot move any more."""
        raise NotImplementedError

    @property
    def hvps(self) -> int:
        return 0

    @property
    def skipped(self) -> int:
        """Steps skipped for a non-finite value (a diverged run)."""
        c = getattr(self.optimizer, "counters", {})
        return sum(v for k, v in c.items() if k.startswith("skipped_non_finite"))

    def spectra(self) -> Dict[str, Tuple[torch.Tensor, float]]:
        return {}

    def stats(self) -> dict:
        return {}

    def _loss(self) -> torch.Tensor:
        self.evaluations += 1
        return self.objective(self.image)

    def _gradient_closure(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss()
        loss.backward()
        return loss


class _Preconditioned(StyleOptimizer):
    """The hsc optimizers: HVPs and the pixel blocks' spectrum from their preconditioner."""

    def _preconditioner(self):
        raise NotImplementedError

    @property
    def hvps(self) -> int:
        return self._preconditioner().hvps

    def spectra(self) -> Dict[str, Tuple[torch.Tensor, float]]:
        spectrum = self._preconditioner().spectrum()
        return {} if spectrum is None else {"pixels": spectrum}

    def stats(self) -> dict:
        return self.optimizer.stats()


class HSCOptimizer(_Preconditioned):
    """``hsc``: hsc.HSC over the pixels (HSCSettings)."""

    color = "tab:red"

    def make(self, image, config):
        return config.hsc.optimizer(image, config.seed)

    def _preconditioner(self):
        return self.optimizer.preconditioners[0]

    def step(self):
        return float(self.optimizer.step(self._loss).detach())


class AdamOptimizer(StyleOptimizer):
    """``adam``: torch.optim.Adam at ``adam_lr``."""

    color = "tab:green"

    def make(self, image, config):
        return torch.optim.Adam([image], lr=config.adam_lr)

    def step(self):
        loss = self._gradient_closure()
        self.optimizer.step()
        return float(loss.detach())


class LBFGSOptimizer(StyleOptimizer):
    """``lbfgs``: torch.optim.LBFGS, strong Wolfe, one call per iteration; each call's first
    evaluation (the point the last line search accepted) comes from a cache (module docstring)."""

    color = "tab:blue"

    def __init__(self, objective, image, config):
        self._cache: List[tuple] = []
        super().__init__(objective, image, config)

    def make(self, image, config):
        # max_eval: the start evaluation (cached) plus torch's default line-search limit of 25.
        return torch.optim.LBFGS([image], lr=1, max_iter=1, max_eval=26, history_size=config.lbfgs_history,
                                 line_search_fn="strong_wolfe")

    def _cached_closure(self) -> torch.Tensor:
        for image, loss, grad in self._cache:
            if torch.equal(image, self.image):
                self.image.grad = grad.clone()
                return loss
        loss = self._gradient_closure().detach()
        self._cache.append((self.image.detach().clone(), loss, self.image.grad.clone()))
        return loss

    def _call(self) -> None:
        self.optimizer.step(self._cached_closure)

    def step(self):
        evaluations_before = self.evaluations
        before = self.image.detach().clone()
        self._call()
        # Keep only the accepted point: the next call's first evaluation.
        self._cache = [entry for entry in self._cache if torch.equal(entry[0], self.image)][:1]
        if self.evaluations == evaluations_before and torch.equal(before, self.image):
            return None  # converged: L-BFGS found no descent direction
        return float(self._cached_closure())  # the accepted point: cached, evaluated if ever missing

    def stats(self):
        state = self.optimizer.state[self.image]
        return {"iterations": state.get("n_iter", 0), "func_evals": state.get("func_evals", 0)}


class HSCLBFGSOptimizer(LBFGSOptimizer, _Preconditioned):
    """``hsc-lbfgs``: hsc.PreconditionedLBFGS (LBFGSSettings), stepped as ``lbfgs``; its
    refreshes evaluate the loss once more (counted) for their HVPs."""

    color = "tab:purple"

    def make(self, image, config):
        return config.hsc_lbfgs.optimizer(image, config.seed)

    def _preconditioner(self):
        return self.optimizer.preconditioner

    def _call(self) -> None:
        self.optimizer.step(self._cached_closure, self._loss)

    def stats(self):
        return self.optimizer.stats()


OPTIMIZERS: Dict[str, type] = {"hsc": HSCOptimizer, "hsc-lbfgs": HSCLBFGSOptimizer, "lbfgs": LBFGSOptimizer,
                               "adam": AdamOptimizer}


def run(objective: StyleObjective, config: RunConfig,
        progress: Optional[Callable[[Record], None]] = None) -> RunResult:
    """Optimises the image from ``config.init`` until the budget is spent; ``progress`` gets each record."""
    config.validate()
    image = initial_image(objective.content, config.init, config.seed).requires_grad_(True)
    stepper = OPTIMIZERS[config.optimizer](objective, image, config)
    history: List[Record] = []
    seconds, steps = 0.0, 0

    def spent() -> bool:
        return ((config.steps is not None and steps >= config.steps)
                or (config.evaluations is not None and stepper.evaluations >= config.evaluations)
                or (config.seconds is not None and seconds >= config.seconds))

    while not spent():
        t0 = time.perf_counter()
        loss = stepper.step()
        seconds += time.perf_counter() - t0
        if loss is None:
            break
        steps += 1
        history.append(Record(seconds, stepper.evaluations, stepper.hvps, loss))
        if progress is not None:
            progress(history[-1])
    with torch.no_grad():
        final = image.detach().clamp(0, 1)
        terms = {k: float(v) for k, v in objective.terms(final).items()}
        final_loss = float(objective(final))
    diverged = not math.isfinite(final_loss) or stepper.skipped > 0
    return RunResult(config, final, final_loss, terms, history, steps, seconds, stepper.stats(), diverged,
                     stepper.spectra())
