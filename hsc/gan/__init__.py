"""GAN training with the hsc preconditioner against Adam and ACGD (mixtures of Gaussians, digits,
MNIST and Stacked MNIST).

Entry points: :func:`hsc.gan.train.train` (one run), :func:`hsc.gan.cli.main` (``hsc gan``); the
registries :data:`DATASETS` (data, each naming its players and metrics), :data:`PLAYERS`
(architectures) and :data:`PROTOCOLS` (metrics). Imported lazily by ``hsc.__main__`` so that
``hsc info`` stays fast.
"""
from __future__ import annotations

from .data import DATASETS, make_dataset
from .metrics import PROTOCOLS, mixture_metrics
from .models import PLAYERS, make_players
from .train import HSCSettings, RunResult, TrainConfig, Trainer, train

__all__ = ["DATASETS", "make_dataset", "PROTOCOLS", "mixture_metrics", "PLAYERS", "make_players", "HSCSettings",
           "TrainConfig", "Trainer", "RunResult", "train"]
