"""Offline data sets: the ring8 and grid25 Gaussian mixtures and scikit-learn's 8x8 digits."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch

DATASETS = ("ring8", "grid25", "digits")


@dataclass(frozen=True)
class Dataset:
    """A sampler of real data.

    ``means``/``sigma`` are set for the mixtures (2-D points); ``images`` holds the digits
    (flattened 8x8, scaled to [-1, 1]) and ``labels`` their classes.
    """

    name: str
    dim: int
    means: Optional[torch.Tensor] = None
    sigma: float = 0.0
    images: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None

    @property
    def is_mixture(self) -> bool:
        return self.means is not None

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` real samples drawn with ``generator`` (the only randomness used)."""
        if self.is_mixture:
            k = torch.randint(len(self.means), (n,), generator=generator)
            return self.means[k] + self.sigma * torch.randn(n, self.dim, generator=generator)
        idx = torch.randint(len(self.images), (n,), generator=generator)
        return self.images[idx]


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


def make_dataset(name: str) -> Dataset:
    if name == "ring8":
        return Dataset(name, 2, means=ring8_means(), sigma=0.01)
    if name == "grid25":
        return Dataset(name, 2, means=grid25_means(), sigma=0.05)
    if name == "digits":
        images, labels = digits_arrays()
        return Dataset(name, 64, images=images, labels=labels)
    raise ValueError(f"hsc gan: unknown data set {name!r}; expected one of {DATASETS}")
