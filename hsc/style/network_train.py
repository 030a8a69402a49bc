"""Training a stylising network (hsc.style.network) on photographs: one run, its budget,
held-out loss snapshots, checkpoints that resume bit for bit on the CPU.

Methods, same network, data and budget:

- ``adam``: Adam at Johnson's lr 1e-3.
- ``hsc``: hsc.Preconditioner rewrites the gradient to M^-1/2 g (Gauss-Newton sketches of the
  loss's residuals, NetHSCSettings), each tensor grafted to its raw gradient's norm, then Adam
  takes the step (the GAN's per-player method).

Randomness: the network's init from ``seed``, the crops from the photo sampler's generator
(``seed`` + 1), the sketches' signs from the preconditioner's (``seed``). The held-out loss is the
mean of the perceptual loss over the held-out photographs, each resized to ``eval_size``, of the
network a checkpoint applies: the moving average of the weights when ``average`` is set (snapshots
also record the iterate's own loss then), the weights themselves otherwise.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..apps import BudgetedTraining, WeightAverage
from ..config import PreconditionerConfig, from_dict, nested, option
from ..numerics import all_finite
from ..preconditioner import Preconditioner
from .features import make_extractor
from .images import STYLES, load_image
from .network import PerceptualLoss, TransformNet
from .objective import LossWeights
from .photos import PhotoSampler, held_out_images, split_sources

METHODS = ("adam", "hsc")


def _optional_int(text: str) -> Optional[int]:
    return None if text.lower() == "none" else int(text)


@dataclass
class NetHSCSettings:
    """The ``hsc`` method: Adam on each tensor's grafted M^-1 g."""

    lr: float = option(1e-3, "the base Adam's lr")
    graft: bool = option(True, "rescale each tensor's M^-1 g to its raw gradient's norm")
    # two photographs: with one, the curvature followed whichever crop fell on a refresh step, and one
    # china seed of three trained slower than Adam (1.68 against Adam's mean 1.34); with two it ends at
    # 1.29, every style meets the time target and flower ends lower on every seed, brick 3 % higher;
    # with all four, a quarter fewer steps (3 styles x 3 seeds, 300 s, bench/results/style_net_notes.md).
    # A refresh's 16 sketches take about 4 s then (about 1.6 s on one photograph; an Adam step 0.6 s
    # at 128², one thread, AMD EPYC)
    curvature_batch: Optional[int] = option(2, "photographs of the batch a refresh's curvature sees (the "
                                            "first ones, at most the batch); none: the whole batch",
                                            _optional_int)
    # Gauss-Newton sketches of the perceptual loss's residuals, not sign-probed HVPs: the probes'
    # blocks were aliasing noise (half the eigenvalues negative), the sketches are PSD, alias-free and
    # a third of the cost (one backward each against a double backward); M^-1/2 because the
    # Gauss-Newton spectrum spans ~1e5 about its median, where M^-1 steps along the flat half
    # (bench/results/style_net_notes.md, the estimator sweep)
    preconditioner: PreconditionerConfig = nested(
        lambda: PreconditionerConfig(estimator="gauss_newton", sketches=16, factor_power=0.5),
        "hsc: the preconditioner over the network's weights (hsc.PreconditionerConfig)")


@dataclass
class NetConfig:
    """One training run; the budget is ``steps`` or ``seconds`` of training (snapshots excluded)."""

    style: str = "flower"
    method: str = "adam"
    seed: int = 0
    steps: Optional[int] = None
    seconds: Optional[float] = None
    size: int = option(128, "side of the training crops in pixels (a multiple of 4)")
    batch_size: int = option(4, "crops per step")
    width: int = option(16, "channels of the network's first layer (doubled twice)")
    blocks: int = option(3, "residual blocks")
    adam_lr: float = option(1e-3, "adam: the learning rate (Johnson's)")
    photos: str = option("", "a folder of training photographs (every fifth held out); empty: the bundled "
                         "photographs")
    eval_size: int = option(128, "side of the held-out photographs the snapshots evaluate")
    # the GAN's remedy for late oscillation (hsc gan's generator_average): flower's held-out loss swung
    # by a factor of two between snapshots 20 s apart for both methods; the average ends below the
    # weights' own for both methods on flower and brick, for hsc on china, level for Adam's china
    # (3 styles x 3 seeds, 300 s; bench/results/style_net_notes.md)
    average: float = option(0.999, "snapshots, checkpoints and apply use an exponential moving average of the "
                            "weights with decay min(this, (1 + t) / (10 + t)) at step t (the averaged "
                            "iterate, against the step's oscillation); 0: the weights themselves")
    feature_seed: int = option(0, "seed of the random feature network of the loss")
    eval_every_seconds: Optional[float] = None   # default: a 15th of the budget
    eval_every_steps: Optional[int] = None       # default: a tenth of the budget
    weights: LossWeights = nested(LossWeights, "the loss (hsc.style.objective)")
    hsc: NetHSCSettings = nested(NetHSCSettings, "hsc method", flatten=False)

    def validate(self) -> "NetConfig":
        if self.method not in METHODS:
            raise ValueError(f"hsc style-net: method must be one of {METHODS}, got {self.method!r}")
        if (self.steps is None) == (self.seconds is None):
            raise ValueError("hsc style-net: give exactly one of steps and seconds")
        for name in ("size", "eval_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 16 and value % 4 == 0):
                raise ValueError(f"hsc style-net: {name} must be a multiple of 4, at least 16, got {value!r}")
        if not 0.0 <= self.average < 1.0:
            raise ValueError(f"hsc style-net: average must be in [0, 1), got {self.average!r}")
        for name in ("batch_size", "width", "blocks"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"hsc style-net: {name} must be an int >= 1, got {getattr(self, name)!r}")
        cb = self.hsc.curvature_batch
        if cb is not None and not (isinstance(cb, int) and cb >= 1):  # above the batch: the whole batch
            raise ValueError(f"hsc style-net: curvature_batch must be an int >= 1 or None, got {cb!r}")
        self.hsc.preconditioner.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Snapshot:
    step: int
    seconds: float
    held_out_loss: float  # of the network a checkpoint applies (the average, when averaging)
    iterate_loss: Optional[float] = None  # when averaging: the weights' own


@dataclass
class NetRunResult:
    config: NetConfig
    steps: int
    seconds: float
    history: List[Snapshot]
    skipped: int
    stats: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return self.history[-1].held_out_loss

    @property
    def diverged(self) -> bool:
        """A non-finite held-out loss, or a step skipped for a non-finite value."""
        return not math.isfinite(self.final_loss) or self.skipped > 0

    def to_dict(self) -> dict:
        return {"method": self.config.method, "style": self.config.style, "seed": self.config.seed,
                "steps": self.steps, "seconds": self.seconds, "final_loss": self.final_loss,
                "diverged": self.diverged, "skipped": self.skipped,
                "history": [dataclasses.asdict(s) for s in self.history], "stats": self.stats}


class NetTrainer(BudgetedTraining):
    """One run's state: ``run`` trains to the budget; ``save``/``load`` checkpoint it."""

    def __init__(self, config: NetConfig):
        self.config = config.validate()
        train, held = split_sources(config.photos)
        self.held_out_sources = held
        self.sampler = PhotoSampler(train, config.size, seed=config.seed + 1)
        self.held_out = held_out_images(held, config.eval_size)
        style = load_image(config.style, max(config.size, config.eval_size), "--style")
        self.loss = PerceptualLoss(make_extractor("random", seed=config.feature_seed), style, config.weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.net = TransformNet(config.width, config.blocks)
        self.params = list(self.net.parameters())
        self.average = WeightAverage(self.net, config.average) if config.average else None
        lr = config.adam_lr if config.method == "adam" else config.hsc.lr
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.preconditioner = (Preconditioner(self.params, dataclasses.replace(config.hsc.preconditioner,
                                                                               seed=config.seed))
                               if config.method == "hsc" else None)
        self.step_count, self.train_seconds, self.skipped = 0, 0.0, 0
        self.history: List[Snapshot] = []

    # ---- one step --------------------------------------------------------------------------

    def train_step(self) -> None:
        self._step()
        if self.average is not None:
            self.average.update(self.net, self.step_count)

    def _step(self) -> None:
        photos = self.sampler.draw(self.config.batch_size)
        loss_fn = lambda: self.loss(self.net(photos), photos)  # noqa: E731
        with torch.enable_grad():
            loss = loss_fn()
            grads = torch.autograd.grad(loss, self.params)
        if not (bool(torch.isfinite(loss)) and all_finite(grads)):
            self.skipped += 1
            return
        for p, g in zip(self.params, grads):
            p.grad = g
        if self.preconditioner is not None:
            seen = photos[:self.config.hsc.curvature_batch]
            if self.preconditioner.config.estimator == "gauss_newton":  # the loss as its residuals' squares
                def curvature_fn():
                    rows = self.loss.residuals(self.net(seen), seen)[:, None]
                    return rows, rows.square().sum()
            else:
                curvature_fn = lambda: self.loss(self.net(seen), seen)  # noqa: E731
            self.preconditioner.update_curvature(curvature_fn)
            if not self.preconditioner.precondition_(graft=self.config.hsc.graft):
                self.skipped += 1
                return
        self.optimizer.step()

    # ---- evaluation ------------------------------------------------------------------------

    @property
    def applied(self) -> TransformNet:
        """The network a checkpoint applies: the weights' moving average when averaging."""
        return self.net if self.average is None else self.average.module

    @torch.no_grad()
    def held_out_loss(self, network: Optional[TransformNet] = None) -> float:
        """The perceptual loss of ``network`` (default: :attr:`applied`) on the held-out
        photographs (mean over them)."""
        network = self.applied if network is None else network
        return float(torch.stack([self.loss(network(x[None]), x[None]) for x in self.held_out]).mean())

    @torch.no_grad()
    def stylise(self, photos: torch.Tensor) -> torch.Tensor:
        return self.applied(photos)

    def snapshot(self) -> Snapshot:
        snap = Snapshot(self.step_count, self.train_seconds, self.held_out_loss(),
                        None if self.average is None else self.held_out_loss(self.net))
        self.history.append(snap)
        return snap

    # ---- the loop --------------------------------------------------------------------------

    def result(self) -> NetRunResult:
        return NetRunResult(self.config, self.step_count, self.train_seconds, list(self.history), self.skipped,
                            self.stats())

    def stats(self) -> dict:
        out = {"steps_per_second": self.step_count / max(self.train_seconds, 1e-9), "skipped": self.skipped,
               "parameters": sum(p.numel() for p in self.params)}
        if self.preconditioner is not None:
            s = self.preconditioner.stats()
            out["preconditioner"] = {k: s[k] for k in ("blocks", "refreshes", "hvps", "seconds", "scale", "spectrum")
                                     if k in s}
        return out

    # ---- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(), "net": self.net.state_dict(),
                "average": None if self.average is None else self.average.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "preconditioner": None if self.preconditioner is None else self.preconditioner.state_dict(),
                "sampler": self.sampler.state_dict(), "step_count": self.step_count,
                "train_seconds": self.train_seconds, "skipped": self.skipped,
                "history": [dataclasses.asdict(s) for s in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.preconditioner is not None:
            self.preconditioner.load_state_dict(state["preconditioner"])
        self.sampler.load_state_dict(state["sampler"])
        self.step_count, self.train_seconds = state["step_count"], state["train_seconds"]
        self.skipped = state["skipped"]
        self.history = [Snapshot(**s) for s in state["history"]]

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path, **overrides) -> "NetTrainer":
        """A trainer restored from ``path``; ``overrides`` change the budget (steps, seconds)."""
        state = torch.load(path, weights_only=False)
        trainer = cls(from_dict(NetConfig, {**state["config"], **overrides}))
        trainer.load_state_dict(state)
        return trainer


def load_network(path) -> TransformNet:
    """The trained network of a checkpoint (its weights' moving average when it was trained with
    ``average``), in eval mode."""
    state = torch.load(path, weights_only=False)
    config = from_dict(NetConfig, state["config"])
    net = TransformNet(config.width, config.blocks)
    net.load_state_dict(state["average"] if state.get("average") is not None else state["net"])
    return net.eval().requires_grad_(False)


__all__ = ["METHODS", "STYLES", "NetConfig", "NetHSCSettings", "NetTrainer", "NetRunResult", "load_network"]
