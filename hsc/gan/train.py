"""One GAN training run: configuration, the three optimizers, the budgeted loop, checkpoints.

Methods (same networks and budget for each):

- ``adam``: Adam (lr 2e-4, betas (0.5, 0.999)) on the non-saturating loss.
- ``hsc``: per player, ``hsc.Preconditioner`` rewrites the gradient to M^-1 g, optionally grafted
  (each tensor rescaled to the raw gradient's norm), and a base optimizer (Adam or SGD) takes the
  step; non-saturating loss. ``HSCOptions.players`` selects which players are preconditioned.
- ``competitive``: ``hsc.CompetitiveHSC`` on the zero-sum loss: the coupled step of competitive
  gradient descent with each player's block curvature as its regulariser (``GameConfig``).
- ``acgd``: adaptive competitive gradient descent (``CGDs.ACGD``) on the zero-sum loss; it updates
  both players together, so ``update`` does not apply to it.

All randomness comes from explicit generators (model init from ``seed``, data and latent draws
from one sampler generator, probe signs from each preconditioner's generator); the metric snapshots
draw from their own generator, so evaluating never changes the trajectory. A checkpoint holds the
models, optimizer and preconditioner states, the sampler state and the counters: a resumed run
equals an uninterrupted one bit for bit on the CPU.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..config import CONFIG_FIELDS, PreconditionerConfig
from ..game import CompetitiveHSC, GameConfig
from ..preconditioner import Preconditioner, all_finite
from .data import make_dataset
from .metrics import EVAL_SAMPLES, evaluate
from .models import latent_dim, make_players

METHODS = ("adam", "hsc", "competitive", "acgd")
UPDATES = ("simultaneous", "alternating")
PLAYERS = ("both", "G", "D")
BASES = ("adam", "sgd", "graft-adam")


# The preconditioner's defaults for the GAN players (the library's, where not set here): the
# saddle-free root on 16-entry blocks with mu the median |eigenvalue| of each player's blocks,
# refreshed every 50 steps (bench/results/gan.md measures it against the other modes).
GAN_PRECONDITIONER = dataclasses.replace(PreconditionerConfig(), block_size=16, update_every=50,
                                         mode="saddle_free_root", scale_rule="relative", scale=1.0)


@dataclass
class HSCOptions:
    """The ``hsc`` method: the step rule around each player's preconditioner, and the
    preconditioner's options (``preconditioner``, a :class:`hsc.PreconditionerConfig`; its seed
    is set per player from the run's seed)."""

    players: str = "both"        # which players are preconditioned: "both", "G" or "D"
    base: str = "adam"           # optimizer stepping on the preconditioned gradient: "adam", "sgd",
                                 # or "graft-adam" (Adam's step length, the preconditioned direction)
    lr: float = 2e-4
    momentum: float = 0.9        # for base "sgd"
    graft: bool = True           # rescale each tensor's M^-1 g to the norm of its raw gradient
    preconditioner: PreconditionerConfig = field(default_factory=lambda: dataclasses.replace(GAN_PRECONDITIONER))

    def with_changes(self, **changes) -> "HSCOptions":
        """A copy with ``changes`` applied: this class's fields, or the preconditioner's by name."""
        own = {k: v for k, v in changes.items() if k not in CONFIG_FIELDS}
        inner = {k: v for k, v in changes.items() if k in CONFIG_FIELDS}
        return dataclasses.replace(self, **own,
                                   preconditioner=dataclasses.replace(self.preconditioner, **inner))

    def preconditioner_config(self, seed: int) -> PreconditionerConfig:
        return dataclasses.replace(self.preconditioner, seed=seed)

    def validate(self) -> "HSCOptions":
        if self.players not in PLAYERS:
            raise ValueError(f"hsc gan: players must be one of {PLAYERS}, got {self.players!r}")
        if self.base not in BASES:
            raise ValueError(f"hsc gan: base must be one of {BASES}, got {self.base!r}")
        self.preconditioner.validate()
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "HSCOptions":
        """From :func:`dataclasses.asdict`'s form (or an older checkpoint's flat one)."""
        d = dict(d)
        flat = {k: d.pop(k) for k in list(d) if k in CONFIG_FIELDS}
        # The older flat form was saved when the GAN's defaults were the library's with b = 16 and
        # update_every = 50: its missing fields take those, not today's.
        base = (dataclasses.replace(PreconditionerConfig(), block_size=16, update_every=50) if flat
                else GAN_PRECONDITIONER)
        inner = {**dict(d.pop("preconditioner", {})), **flat}
        if inner.get("patch") is not None:
            inner["patch"] = tuple(inner["patch"])
        return cls(**d, preconditioner=dataclasses.replace(base, **inner))


@dataclass
class TrainConfig:
    """One run. The budget is ``steps`` or ``seconds`` of training time (metric snapshots excluded)."""

    data: str = "ring8"
    method: str = "adam"
    seed: int = 0
    steps: Optional[int] = None
    seconds: Optional[float] = None
    update: str = "simultaneous"
    batch_size: int = 256
    lr: float = 2e-4                       # adam
    betas: Tuple[float, float] = (0.5, 0.999)
    acgd_lr: float = 1e-3
    game: GameConfig = field(default_factory=GameConfig)
    eval_every_seconds: Optional[float] = None  # snapshot period under a seconds budget (default: a 15th)
    eval_every_steps: Optional[int] = None  # under a steps budget (default: a tenth of it)
    eval_samples: int = EVAL_SAMPLES
    hsc: HSCOptions = field(default_factory=HSCOptions)

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ValueError(f"hsc gan: method must be one of {METHODS}, got {self.method!r}")
        if self.update not in UPDATES:
            raise ValueError(f"hsc gan: update must be one of {UPDATES}, got {self.update!r}")
        if (self.steps is None) == (self.seconds is None):
            raise ValueError("hsc gan: give exactly one of steps and seconds")
        self.hsc.validate()
        self.game.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["hsc"] = HSCOptions.from_dict(d.get("hsc", {}))
        game = dict(d.get("game", {}))
        if "preconditioner" in game:
            inner = dict(game["preconditioner"])
            if inner.get("patch") is not None:
                inner["patch"] = tuple(inner["patch"])
            game["preconditioner"] = PreconditionerConfig(**inner)
        d["game"] = GameConfig(**game)
        d["betas"] = tuple(d["betas"])
        return cls(**d)


class GraftedAdam(torch.optim.Optimizer):
    """Shampoo-style grafting: each tensor moves by the length of Adam's step on the raw gradient g
    along the momentum of the preconditioned gradient p = M^-1 g.

    ``.grad`` holds p; the raw gradients are handed over with :meth:`set_raw` before each step.
    update = -lr * ||m_g^ / (sqrt(v_g^) + eps)|| * m_p / ||m_p|| (m, v: Adam's moments, bias-corrected).
    """

    def __init__(self, params, lr: float, betas: Tuple[float, float] = (0.5, 0.999), eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    def set_raw(self, raw: Sequence[torch.Tensor]) -> None:
        # copies: the raw gradients are often the tensors precondition_ then rewrites in place
        self._raw = [g.detach().clone() for g in raw]

    @torch.no_grad()
    def step(self, closure=None):
        raw = iter(self._raw)
        for group in self.param_groups:
            (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
            for p in group["params"]:
                g, d = next(raw), p.grad
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m_g"], st["v_g"], st["m_p"] = (torch.zeros_like(p) for _ in range(3))
                st["step"] += 1
                st["m_g"].mul_(b1).add_(g, alpha=1 - b1)
                st["v_g"].mul_(b2).addcmul_(g, g, value=1 - b2)
                st["m_p"].mul_(b1).add_(d, alpha=1 - b1)
                t = st["step"]
                adam = (st["m_g"] / (1 - b1 ** t)) / ((st["v_g"] / (1 - b2 ** t)).sqrt() + eps)
                length = adam.norm() / st["m_p"].norm().clamp_min(1e-30)
                p.sub_(lr * length * st["m_p"])
        self._raw = []


class Player:
    """One player's update for ``adam``/``hsc``: gradient, optional preconditioning and grafting,
    then the base optimizer's step. ``prepare`` and ``apply`` are separate so that simultaneous
    updates take both gradients before either player moves."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                 preconditioner: Optional[Preconditioner] = None, graft: bool = False):
        self.params = list(module.parameters())
        self.optimizer = optimizer
        self.preconditioner = preconditioner
        self.graft = graft
        self.ready = False
        self.skipped = 0

    def prepare(self, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Sets ``.grad`` to the (preconditioned) gradient of ``loss_fn()``; returns the loss."""
        loss = loss_fn()
        grads = torch.autograd.grad(loss, self.params)
        self.ready = bool(torch.isfinite(loss)) and all_finite(grads)
        if not self.ready:
            self.skipped += 1
            return loss.detach()
        for p, g in zip(self.params, grads):
            p.grad = g
        if isinstance(self.optimizer, GraftedAdam):
            self.optimizer.set_raw(grads)
        if self.preconditioner is not None:
            self.preconditioner.update_curvature(loss_fn)
            raw_norms = [g.norm() for g in grads] if self.graft else None
            self.preconditioner.precondition_()
            with torch.no_grad():
                if raw_norms is not None:
                    for p, n in zip(self.params, raw_norms):
                        p.grad.mul_(n / p.grad.norm().clamp_min(1e-30))
            self.ready = all_finite([p.grad for p in self.params])
            if not self.ready:
                self.skipped += 1
        return loss.detach()

    def apply(self) -> None:
        if self.ready:
            self.optimizer.step()
        self.ready = False

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "skipped": self.skipped,
                "preconditioner": None if self.preconditioner is None else self.preconditioner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.skipped = state["skipped"]
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


class Trainer:
    """Holds one run's state; ``run`` trains to the budget, ``save``/``load`` checkpoint it."""

    def __init__(self, config: TrainConfig):
        self.config = config.validate()
        self.dataset = make_dataset(config.data)
        self.latent = latent_dim(self.dataset.dim)
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.G, self.D = make_players(self.dataset.dim)
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
            return Player(module, torch.optim.Adam(module.parameters(), lr=cfg.lr, betas=cfg.betas))
        if opts.base == "adam":
            optimizer = torch.optim.Adam(module.parameters(), lr=opts.lr, betas=cfg.betas)
        elif opts.base == "graft-adam":
            optimizer = GraftedAdam(module.parameters(), lr=opts.lr, betas=cfg.betas)
        else:
            optimizer = torch.optim.SGD(module.parameters(), lr=opts.lr, momentum=opts.momentum)
        preconditioned = opts.players in ("both", name)
        pre = Preconditioner(module.parameters(), opts.preconditioner_config(2 * cfg.seed + index)) \
            if preconditioned else None
        return Player(module, optimizer, pre, graft=opts.graft and preconditioned)

    # ---- losses ----------------------------------------------------------------------------

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss: -log D(real) - log(1 - D(fake))."""
        return F.softplus(-self.D(real)).mean() + F.softplus(self.D(fake)).mean()

    def g_loss(self, z: torch.Tensor) -> torch.Tensor:
        """The non-saturating generator loss: -log D(G(z))."""
        return F.softplus(-self.D(self.G(z))).mean()

    # ---- one step --------------------------------------------------------------------------

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.config.batch_size
        real = self.dataset.sample(n, self.sampler)
        z = torch.randn(n, self.latent, generator=self.sampler)
        return real, z

    def train_step(self) -> None:
        real, z = self.draw()
        if self.acgd is not None or self.game is not None:
            # zero-sum: D maximises log D(real) + log(1 - D(G(z))), G minimises it
            def objective():
                return -(F.softplus(-self.D(real)).mean() + F.softplus(self.D(self.G(z))).mean())

            if self.game is not None:
                self.game.step(objective)
            else:
                self.acgd.step(objective())
            return
        G, D = self.players["G"], self.players["D"]
        with torch.no_grad():
            fake = self.G(z)
        D.prepare(lambda: self.d_loss(real, fake))
        if self.config.update == "alternating":
            D.apply()
        G.prepare(lambda: self.g_loss(z))
        D.apply()
        G.apply()

    # ---- the loop --------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """``n`` samples from fixed latents (the same at every snapshot; no training RNG used)."""
        gen = torch.Generator().manual_seed(10_000 + self.config.seed)
        return self.G(torch.randn(n, self.latent, generator=gen))

    def snapshot(self) -> Snapshot:
        snap = Snapshot(self.step_count, self.train_seconds,
                        evaluate(self.generate(self.config.eval_samples), self.dataset))
        self.history.append(snap)
        return snap

    def done(self) -> bool:
        cfg = self.config
        if cfg.steps is not None:
            return self.step_count >= cfg.steps
        return self.train_seconds >= cfg.seconds

    def _snapshot_due(self) -> bool:
        cfg, last = self.config, self.history[-1]
        if cfg.steps is not None:
            every = cfg.eval_every_steps or max(1, cfg.steps // 10)
            return self.step_count - last.step >= every
        every = cfg.eval_every_seconds or max(0.5, cfg.seconds / 15)
        return self.train_seconds - last.seconds >= every

    def run(self, progress: Optional[Callable[[float], None]] = None) -> RunResult:
        """Trains until the budget is spent. ``progress`` gets the budget units (steps or seconds)
        done since its last call."""
        if not self.history:
            self.snapshot()
        while not self.done():
            t0 = time.perf_counter()
            self.train_step()
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            self.step_count += 1
            if progress is not None:
                progress(1 if self.config.steps is not None else dt)
            if self._snapshot_due():
                self.snapshot()
        if self.history[-1].step != self.step_count:
            self.snapshot()
        return RunResult(self.config, self.step_count, self.train_seconds, self.history[-1].metrics,
                         list(self.history), self.generate(self.config.eval_samples), self.stats(),
                         self.spectra())

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
        return {name: (p.preconditioner.eigenvalues, p.preconditioner.scale) for name, p in self.players.items()
                if p.preconditioner is not None and p.preconditioner.eigenvalues is not None}

    # ---- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(), "G": self.G.state_dict(), "D": self.D.state_dict(),
                "players": {k: p.state_dict() for k, p in self.players.items()},
                "acgd": None if self.acgd is None else copy.deepcopy(self.acgd.state),
                "game": None if self.game is None else self.game.state_dict(),
                "sampler": self.sampler.get_state(), "step_count": self.step_count,
                "train_seconds": self.train_seconds,
                "history": [dataclasses.asdict(s) for s in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
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
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path, **overrides) -> "Trainer":
        """A trainer restored from ``path``; ``overrides`` change the budget (steps, seconds)."""
        state = torch.load(path, weights_only=False)
        config = TrainConfig.from_dict({**state["config"], **overrides})
        trainer = cls(config)
        trainer.load_state_dict(state)
        return trainer



def train(config: TrainConfig, progress: Optional[Callable[[float], None]] = None) -> RunResult:
    """Runs one configuration from scratch."""
    return Trainer(config).run(progress)
