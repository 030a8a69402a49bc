"""GAN training with the hsc preconditioner against Adam and ACGD (mixtures of Gaussians, 8x8 digits).

Entry points: :func:`hsc.gan.train.train` (one run), :func:`hsc.gan.cli.main` (``hsc gan``).
Imported lazily by ``hsc.__main__`` so that ``hsc info`` stays fast.
"""
from __future__ import annotations

from .data import DATASETS, make_dataset
from .metrics import evaluate, mixture_metrics
from .train import HSCOptions, RunResult, TrainConfig, Trainer, train

__all__ = ["DATASETS", "make_dataset", "evaluate", "mixture_metrics", "HSCOptions", "TrainConfig",
           "Trainer", "RunResult", "train"]
