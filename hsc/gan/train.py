"""One GAN training run: configuration, the four methods, the budgeted loop, checkpoints.

Methods (same networks and budget for each):

- ``adam``: Adam (lr 2e-4, betas (0.5, 0.999)) on the non-saturating loss.
- ``hsc``: per player, ``hsc.Preconditioner`` rewrites the gradient to M^-1 g, grafted by default
  (each tensor rescaled to the raw gradient's norm), and a base optimizer (Adam, SGD or
  ``hsc.GraftedAdam``) takes the step; non-saturating loss. ``HSCSettings.players`` selects which
  players are preconditioned.
- ``competitive``: ``hsc.CompetitiveHSC`` on the zero-sum loss: the coupled step of competitive
  gradient descent with each player's block curvature as its regulariser (``GameConfig``).
- ``acgd``: adaptive competitive gradient descent (``CGDs.ACGD``) on the zero-sum loss; it updates
  both players together, so ``update`` does not apply to it.

The data set decides the players, the metrics and the batch size (``hsc.gan.data.DATASETS``).

Data-parallel (``Trainer(config, process_group=group)``, methods ``adam`` and ``hsc``; every rank
builds the same trainer): each rank draws the whole batch from the shared sampler and trains on
its slice of it, the gradients are averaged over the ranks, and each player's preconditioner
shards its blocks over them (docs/contract.md §5), so the run follows the one-process run on the
whole batch up to the order of floating-point sums (batch norm's statistics are then a slice's).
Ranks agree on when to stop and to take a snapshot; a checkpoint is written by rank 0 and loads
on any number of ranks.
All randomness comes from explicit generators (model init from ``seed``, data and latent draws
from one sampler generator on the CPU, probe signs from each preconditioner's generator); the
metric snapshots draw from their own generator, so evaluating never changes the trajectory. A
checkpoint holds the models, optimizer and preconditioner states, the sampler state and the
counters: a resumed run equals an uninterrupted one bit for bit on the CPU.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..apps import BudgetedTraining, Lookahead, WeightAverage
from ..config import PreconditionerConfig, float_pair, from_dict, nested, option, replace
from ..distributed import RankGroup
from ..game import CompetitiveHSC, GameConfig
from ..grafting import GraftedAdam
from ..numerics import all_finite
from ..preconditioner import Preconditioner
from .data import DATASETS
from .metrics import PROTOCOLS
from .models import PLAYERS, make_players

METHODS = ("adam", "hsc", "competitive", "acgd")
UPDATES = ("simultaneous", "alternating")
PRECONDITIONED = ("both", "G", "D")
BASES = ("adam", "sgd", "graft-adam")


def _optional_int(text: str) -> Optional[int]:
    return None if text.lower() == "none" else int(text)


def _optional_name(text: str) -> Optional[str]:
    return None if text.lower() == "none" else text


@dataclass
class HSCSettings:
    """The ``hsc`` method: the step rule around each player's preconditioner, and the
    preconditioner's options (the library's defaults; its seed is set per player from the run's)."""

    players: str = option("both", "which players are preconditioned", choices=PRECONDITIONED)
    base: str = option("adam", "optimizer stepping on the preconditioned gradient: adam, sgd, or "
                       "graft-adam (Adam's step length along the preconditioned direction)", choices=BASES)
    lr: float = option(2e-4, "the base optimizer's lr")
    momentum: float = option(0.9, "momentum of base sgd")
    graft: bool = option(True, "rescale each tensor's M^-1 g to its raw gradient's norm")
    optimism: float = option(0.0, "optimistic step: the base optimizer sees u + optimism (u - u_last), u "
                             "the (grafted) preconditioned gradient, against simultaneous play's "
                             "rotation (1: optimistic gradient descent); 0: off")
    curvature_batch: Optional[int] = option(None, "samples of the batch a refresh's HVPs see (the first "
                                            "ones: subsampled curvature, as Sophia and K-FAC use); none: "
                                            "the whole batch", _optional_int)
    preconditioner: PreconditionerConfig = nested(PreconditionerConfig, "each player's preconditioner "
                                                  "(hsc.PreconditionerConfig)")

    def preconditioner_config(self, seed: int) -> PreconditionerConfig:
        return dataclasses.replace(self.preconditioner, seed=seed)

    def validate(self) -> "HSCSettings":
        if self.players not in PRECONDITIONED:
            raise ValueError(f"hsc gan: players must be one of {PRECONDITIONED}, got {self.players!r}")
        if self.base not in BASES:
            raise ValueError(f"hsc gan: base must be one of {BASES}, got {self.base!r}")
        if not (self.optimism >= 0 and math.isfinite(self.optimism)):
            raise ValueError(f"hsc gan: optimism must be a finite number >= 0, got {self.optimism!r}")
        self.preconditioner.validate()
        return self


@dataclass
class TrainConfig:
    """One run. The budget is ``steps`` or ``seconds`` of training time (metric snapshots excluded)."""

    data: str = "ring8"
    method: str = "adam"
    seed: int = 0
    steps: Optional[int] = None
    seconds: Optional[float] = None
    update: str = option("simultaneous", "simultaneous: both players step from the same point; "
                         "alternating: D steps first", choices=UPDATES)
    batch_size: Optional[int] = option(None, "samples per step; none: the data set's (256 for the mixtures "
                                       "and digits, 64 for the MNIST sets)", _optional_int)
    adam_lr: float = option(2e-4, "adam: the learning rate (DCGAN's)")
    betas: Tuple[float, float] = option((0.5, 0.999), "Adam's betas (adam, and hsc's base adam)", float_pair)
    acgd_lr: float = option(1e-3, "acgd: cgds' ACGD learning rate (both players)")
    architecture: Optional[str] = option(None, f"the players (one of {', '.join(PLAYERS)}); none: the "
                                         "data set's", _optional_name)
    device: str = option("cpu", "where the players train: cpu, cuda, cuda:1, ...")
    eval_samples: Optional[int] = option(None, "samples per metric snapshot; none: the protocol's (2,500 "
                                         "mixtures and digits, 5,000 MNIST, 26,000 Stacked MNIST)",
                                         _optional_int)
    generator_average: float = option(0.0, "snapshots sample an exponential moving average of G's weights "
                                      "with decay min(this, (1 + t) / (10 + t)) at step t, about the last "
                                      "tenth of the run's steps, against simultaneous play's late "
                                      "oscillation (the averaged iterate); 0: G itself")
    lookahead: int = option(0, "lookahead-minmax: every this many steps both players' weights go back to "
                            "slow <- slow + lookahead_alpha (weights - slow), slow the weights this many steps "
                            "before, against simultaneous play's rotation (hsc.apps.Lookahead); 0: off", int)
    lookahead_alpha: float = option(0.5, "lookahead-minmax: the fraction of the way the slow weights move")
    eval_every_seconds: Optional[float] = None  # snapshot period under a seconds budget (default: a 15th)
    eval_every_steps: Optional[int] = None  # under a steps budget (default: a tenth of it)
    hsc: HSCSettings = nested(HSCSettings, "hsc method: the step around each player's preconditioner",
                              flatten=False)
    game: GameConfig = nested(GameConfig, "competitive method: the coupled step (hsc.CompetitiveHSC)",
                              flatten=False)

    def validate(self) -> "TrainConfig":
        if self.data not in DATASETS:
            raise ValueError(f"hsc gan: data must be one of {tuple(DATASETS)}, got {self.data!r}")
        if self.method not in METHODS:
            raise ValueError(f"hsc gan: method must be one of {METHODS}, got {self.method!r}")
        if self.update not in UPDATES:
            raise ValueError(f"hsc gan: update must be one of {UPDATES}, got {self.update!r}")
        if self.architecture is not None and self.architecture not in PLAYERS:
            raise ValueError(f"hsc gan: architecture must be one of {tuple(PLAYERS)}, got {self.architecture!r}")
        if not (isinstance(self.lookahead, int) and self.lookahead >= 0):
            raise ValueError(f"hsc gan: lookahead must be an int >= 0, got {self.lookahead!r}")
        if not 0.0 < self.lookahead_alpha <= 1.0:
            raise ValueError(f"hsc gan: lookahead_alpha must be in (0, 1], got {self.lookahead_alpha!r}")
        if not 0.0 <= self.generator_average < 1.0:
            raise ValueError(f"hsc gan: generator_average must be in [0, 1), got {self.generator_average!r}")
        if (self.steps is None) == (self.seconds is None):
            raise ValueError("hsc gan: give exactly one of steps and seconds")
        self.hsc.validate()
        self.game.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return from_dict(cls, d)


def default_config(data: str, **changes) -> TrainConfig:
    """The run ``hsc gan --data <data>`` makes without other flags: TrainConfig's defaults with the
    data set's own settings (``DATASETS[data].settings``), then ``changes`` by field name."""
    if data not in DATASETS:
        raise ValueError(f"hsc gan: data must be one of {tuple(DATASETS)}, got {data!r}")
    return replace(replace(TrainConfig(data=data), **DATASETS[data].settings), **changes)


class Player:
    """One player's update for ``adam``/``hsc``: gradient, optional preconditioning and grafting,
    then the base optimizer's step. ``prepare`` and ``apply`` are separate so that simultaneous
    updates take both gradients before either player moves."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                 preconditioner: Optional[Preconditioner] = None, graft: bool = False,
                 ranks: Optional[RankGroup] = None, optimism: float = 0.0):
        self.params = list(module.parameters())
        self.ranks = ranks or RankGroup()
        self.optimizer = optimizer
        self.preconditioner = preconditioner
        self.graft = graft
        self.optimism = optimism
        self.last: Optional[List[torch.Tensor]] = None  # the last step's direction (optimism)
        self.ready = False
        self.skipped = 0

    def prepare(self, loss_fn: Callable[[], torch.Tensor],
                curvature_fn: Optional[Callable[[], object]] = None) -> torch.Tensor:
        """Sets ``.grad`` to the (preconditioned) gradient of ``loss_fn()``; returns the loss. A
        refresh takes its curvature from ``curvature_fn()`` (default: ``loss_fn()``)."""
        loss = loss_fn()
        grads = torch.autograd.grad(loss, self.params)
        # data-parallel: the mean over the ranks, the same on every rank, so they all decide alike
        self.ranks.all_reduce_mean_(grads)
        self.ready = all_finite(grads) and (self.ranks.distributed or bool(torch.isfinite(loss)))
        if not self.ready:
            self.skipped += 1
            return loss.detach()
        for p, g in zip(self.params, grads):
            p.grad = g
        if isinstance(self.optimizer, GraftedAdam):
            self.optimizer.set_raw(grads)
        if self.preconditioner is not None:
            self.preconditioner.update_curvature(curvature_fn or loss_fn)
            self.ready = self.preconditioner.precondition_(graft=self.graft)
            if not self.ready:
                self.skipped += 1
        if self.ready and self.optimism:
            self._extrapolate()
        return loss.detach()

    def _extrapolate(self) -> None:
        """``.grad`` <- u + optimism (u - u_last): the optimistic step, which damps the rotation
        that simultaneous gradient play adds around an equilibrium (Daskalakis et al., 2018). The
        first step has no u_last and steps with u; a skipped step keeps the last one."""
        current = [p.grad.detach().clone() for p in self.params]
        if self.last is not None:
            for p, u, last in zip(self.params, current, self.last):
                p.grad.add_(u - last, alpha=self.optimism)
        self.last = current

    def apply(self) -> None:
        if self.ready:
            self.optimizer.step()
        self.ready = False

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "skipped": self.skipped, "last": self.last,
                "preconditioner": None if self.preconditioner is None else self.preconditioner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.skipped = state["skipped"]
        self.last = state.get("last")
        if self.preconditioner is not None:
            self.preconditioner.load_state_dict(state["preconditioner"])


@dataclass
class Snapshot:
    step: int
    seconds: float
    metrics: dict


@dataclass
class RunResult:
    config: TrainConfig
    steps: int
    seconds: float
    final: dict
    history: List[Snapshot]
    samples: torch.Tensor
    stats: dict
    # Spectral modes: per preconditioned player, its blocks' eigenvalues at the last refresh and mu.
    spectra: Dict[str, Tuple[torch.Tensor, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.config.method, "seed": self.config.seed, "steps": self.steps,
                "seconds": self.seconds, "final": self.final,
                "history": [dataclasses.asdict(s) for s in self.history], "stats": self.stats}


class Trainer(BudgetedTraining):
    """Holds one run's state; ``run`` trains to the budget, ``save``/``load`` checkpoint it."""

    def __init__(self, config: TrainConfig, process_group=None):
        self.config = config.validate()
        self.ranks = RankGroup(process_group)
        spec = DATASETS[config.data]
        self.dataset = spec.load()
        self.protocol = PROTOCOLS[spec.protocol]
        self.batch_size = config.batch_size or spec.batch_size
        if self.ranks.distributed:
            if config.method not in ("adam", "hsc"):
                raise ValueError(f"hsc gan: data-parallel training takes the methods adam and hsc, "
                                 f"got {config.method!r}")
            if self.batch_size % self.ranks.world_size:
                raise ValueError(f"hsc gan: the batch ({self.batch_size}) must split evenly over "
                                 f"{self.ranks.world_size} ranks")
        self.eval_samples = config.eval_samples or self.protocol.samples
        self.device = torch.device(config.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            players = make_players(config.architecture or spec.players, self.dataset)
        self.G, self.D = players.generator.to(self.device), players.discriminator.to(self.device)
        self.latent = players.latent_dim
        self.G_average = WeightAverage(self.G, config.generator_average) if config.generator_average else None
        self.lookahead = (Lookahead((self.G, self.D), config.lookahead, config.lookahead_alpha)
                          if config.lookahead else None)
        self.sampler = torch.Generator().manual_seed(config.seed + 1)
        self.step_count = 0
        self.train_seconds = 0.0
        self.history: List[Snapshot] = []
        self.players: dict[str, Player] = {}
        self.acgd = None
        self.game = None
        if config.method == "competitive":
            game = dataclasses.replace(config.game, preconditioner=dataclasses.replace(
                config.game.preconditioner, seed=2 * config.seed))
            self.game = CompetitiveHSC(self.G.parameters(), self.D.parameters(), game)
        elif config.method == "acgd":
            from CGDs import ACGD

            self.acgd = ACGD(max_params=self.D.parameters(), min_params=self.G.parameters(),
                             lr_max=config.acgd_lr, lr_min=config.acgd_lr)
        else:
            for index, (name, module) in enumerate((("G", self.G), ("D", self.D))):
                self.players[name] = self._make_player(name, module, index)

    def _make_player(self, name: str, module: nn.Module, index: int) -> Player:
        cfg, opts = self.config, self.config.hsc
        if cfg.method == "adam":
            return Player(module, torch.optim.Adam(module.parameters(), lr=cfg.adam_lr, betas=cfg.betas),
                          ranks=self.ranks)
        if opts.base == "adam":
            optimizer = torch.optim.Adam(module.parameters(), lr=opts.lr, betas=cfg.betas)
        elif opts.base == "graft-adam":
            optimizer = GraftedAdam(module.parameters(), lr=opts.lr, betas=cfg.betas)
        else:
            optimizer = torch.optim.SGD(module.parameters(), lr=opts.lr, momentum=opts.momentum)
        preconditioned = opts.players in ("both", name)
        pre = Preconditioner(module.parameters(), opts.preconditioner_config(2 * cfg.seed + index),
                             ranks=self.ranks) if preconditioned else None
        return Player(module, optimizer, pre, graft=opts.graft and preconditioned, ranks=self.ranks,
                      optimism=opts.optimism)

    # ---- losses ----------------------------------------------------------------------------

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor, with_outputs: bool = False):
        """The discriminator's loss: -log D(real) - log(1 - D(fake)); ``with_outputs``: (D's
        outputs, the loss computed from them), the form the gauss_newton estimator takes."""
        outputs = torch.cat([self.D(real), self.D(fake)])
        n = len(real)
        loss = F.softplus(-outputs[:n]).mean() + F.softplus(outputs[n:]).mean()
        return (outputs, loss) if with_outputs else loss

    def g_loss(self, z: torch.Tensor, with_outputs: bool = False):
        """The non-saturating generator loss: -log D(G(z)) (``with_outputs``: as in :meth:`d_loss`)."""
        outputs = self.D(self.G(z))
        loss = F.softplus(-outputs).mean()
        return (outputs, loss) if with_outputs else loss

    def zero_sum(self, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """f for the zero-sum methods: D maximises log D(real) + log(1 - D(G(z))), G minimises it."""
        return -(F.softplus(-self.D(real)).mean() + F.softplus(self.D(self.G(z))).mean())

    # ---- one step --------------------------------------------------------------------------

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's real samples and latents: the whole batch, or this rank's slice of it."""
        n = self.batch_size
        real = self.dataset.sample(n, self.sampler)
        z = torch.randn(n, self.latent, generator=self.sampler)
        if self.ranks.distributed:
            part = slice(self.ranks.rank * n // self.ranks.world_size, (self.ranks.rank + 1) * n // self.ranks.world_size)
            real, z = real[part], z[part]
        return real.to(self.device), z.to(self.device)

    def train_step(self) -> None:
        self._step()
        if self.lookahead is not None:  # the loop counts this step after train_step returns
            self.lookahead.update(self.step_count + 1)
        if self.G_average is not None:
            self.G_average.update(self.G, self.step_count)

    def _step(self) -> None:
        real, z = self.draw()
        if self.game is not None:
            self.game.step(lambda: self.zero_sum(real, z))
            return
        if self.acgd is not None:
            self.acgd.step(self.zero_sum(real, z))
            return
        G, D = self.players["G"], self.players["D"]
        # the refresh's closures: on the first curvature_batch samples; (outputs, loss) for gauss_newton
        k = self.config.hsc.curvature_batch
        outputs = self.config.hsc.preconditioner.estimator == "gauss_newton"
        with torch.no_grad():
            fake = self.G(z)
        D.prepare(lambda: self.d_loss(real, fake), lambda: self.d_loss(real[:k], fake[:k], outputs))
        if self.config.update == "alternating":
            D.apply()
        G.prepare(lambda: self.g_loss(z), lambda: self.g_loss(z[:k], outputs))
        D.apply()
        G.apply()

    # ---- the loop --------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, n: int, batch: int = 2000) -> torch.Tensor:
        """``n`` samples from fixed latents (the same at every snapshot; no training RNG used), on
        the CPU; the generator runs in eval mode (batch norm on its running statistics), so that
        sampling never changes the run."""
        gen = torch.Generator().manual_seed(10_000 + self.config.seed)
        z = torch.randn(n, self.latent, generator=gen)
        G = self.G if self.G_average is None else self.G_average.module
        training = G.training
        G.eval()
        try:
            return torch.cat([G(z[i:i + batch].to(self.device)).cpu() for i in range(0, n, batch)])
        finally:
            G.train(training)

    def snapshot(self) -> Snapshot:
        snap = Snapshot(self.step_count, self.train_seconds,
                        evaluate(self.generate(self.eval_samples), self.dataset, self.protocol))
        self.history.append(snap)
        return snap

    def agree(self, flag: bool) -> bool:
        """Data-parallel: whether ``flag`` holds on every rank, whose clocks differ."""
        return self.ranks.all_true(flag, self.device)

    def synchronize(self) -> None:
        """Waits for the device (a GPU runs asynchronously), so that step times are real."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def result(self) -> RunResult:
        return RunResult(self.config, self.step_count, self.train_seconds, self.history[-1].metrics,
                         list(self.history), self.generate(self.eval_samples), self.stats(), self.spectra())

    def stats(self) -> dict:
        out: dict = {"steps_per_second": self.step_count / max(self.train_seconds, 1e-9)}
        for name, player in self.players.items():
            out[f"{name}_skipped"] = player.skipped
            if player.preconditioner is not None:
                s = player.preconditioner.stats()
                out[f"{name}_preconditioner"] = {k: s[k] for k in ("blocks", "refreshes", "hvps", "seconds",
                                                                   "status", "scale", "spectrum") if k in s}
        if self.game is not None:
            g = self.game.stats()
            steps = max(g["steps"], 1)
            out["game"] = {"steps": g["steps"], "skipped_non_finite": g["skipped_non_finite"],
                           "cg_iterations_per_step": g["cg_iterations"] / steps,
                           "mixed_products_per_step": g["mixed_products"] / steps,
                           "hvps_per_step": g["hvps"] / steps, "cg_capped": g["cg_capped"],
                           "solve_side": g["solve_side"]}
        return out

    def spectra(self) -> Dict[str, Tuple[torch.Tensor, float]]:
        """Each preconditioned player's block eigenvalues at the last refresh, and mu (spectral modes)."""
        out = {}
        for name, player in self.players.items():
            spectrum = None if player.preconditioner is None else player.preconditioner.spectrum()
            if spectrum is not None:
                out[name] = spectrum
        return out

    # ---- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(), "G": self.G.state_dict(), "D": self.D.state_dict(),
                "G_average": None if self.G_average is None else self.G_average.state_dict(),
                "lookahead": None if self.lookahead is None else self.lookahead.state_dict(),
                "players": {k: p.state_dict() for k, p in self.players.items()},
                "acgd": None if self.acgd is None else copy.deepcopy(self.acgd.state),
                "game": None if self.game is None else self.game.state_dict(),
                "sampler": self.sampler.get_state(), "step_count": self.step_count,
                "train_seconds": self.train_seconds,
                "history": [dataclasses.asdict(s) for s in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_average is not None:
            self.G_average.load_state_dict(state["G_average"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(state["lookahead"])
        for k, p in self.players.items():
            p.load_state_dict(state["players"][k])
        if self.acgd is not None:
            self.acgd.state.update(copy.deepcopy(state["acgd"]))
        if self.game is not None:
            self.game.load_state_dict(state["game"])
        self.sampler.set_state(state["sampler"])
        self.step_count = state["step_count"]
        self.train_seconds = state["train_seconds"]
        self.history = [Snapshot(**s) for s in state["history"]]

    def save(self, path) -> None:
        """Writes the checkpoint (data-parallel: every rank calls it, rank 0 writes)."""
        state = self.state_dict()
        if self.ranks.rank == 0:
            torch.save(state, path)

    @classmethod
    def load(cls, path, process_group=None, **overrides) -> "Trainer":
        """A trainer restored from ``path``; ``overrides`` change the budget (steps, seconds)."""
        state = torch.load(path, weights_only=False)
        config = TrainConfig.from_dict({**state["config"], **overrides})
        trainer = cls(config, process_group)
        trainer.load_state_dict(state)
        return trainer


def evaluate(samples: torch.Tensor, dataset, protocol) -> dict:
    """The metrics of ``protocol`` for generated ``samples`` (a module function, so tests can time it)."""
    return protocol.evaluate(samples, dataset)


def train(config: TrainConfig, progress: Optional[Callable[[float], None]] = None) -> RunResult:
    """Runs one configuration from scratch."""
    return Trainer(config).run(progress)
