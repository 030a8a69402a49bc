"""The players, one registry entry per architecture (:data:`PLAYERS`), and the digits classifier.

A data set names its players (``hsc.gan.data.DATASETS[name].players``); an entry builds the
generator and the discriminator for that data set's sample shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Sequence

import torch
from torch import nn

from .data import Dataset


def mlp(sizes: Sequence[int], out_act: nn.Module | None = None) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (and ``out_act`` at the end)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


@dataclass
class Players:
    generator: nn.Module
    discriminator: nn.Module
    latent_dim: int


def mlp2d(dataset: Dataset) -> Players:
    """The 2-D mixtures: G 2->128->128->128->2, D 2->128->128->1 (ReLU)."""
    return Players(mlp([2, 128, 128, 128, 2]), mlp([2, 128, 128, 1]), 2)


def mlp_digits(dataset: Dataset) -> Players:
    """Flattened images: G 16->256->256->dim (tanh), D dim->256->256->1."""
    return Players(mlp([16, 256, 256, dataset.dim], nn.Tanh()), mlp([dataset.dim, 256, 256, 1]), 16)


class Reshape(nn.Module):
    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *self.shape)


def dcgan(dataset: Dataset, batch_norm: bool = True) -> Players:
    """DCGAN-style players for 28x28 images with C channels, sized for a few CPU cores:
    G: z (64) -> linear -> 128x7x7 -> [BN], ReLU -> transposed conv 4x4/2 to 64x14x14 -> [BN],
    ReLU -> transposed conv 4x4/2 to Cx28x28 -> tanh; D: conv 4x4/2 to 64x14x14 -> LeakyReLU(0.2)
    -> conv 4x4/2 to 128x7x7 -> LeakyReLU(0.2) -> linear -> 1. No batch norm in D: its loss then
    depends on each sample alone, as the HVPs of a subsampled refresh assume."""
    c, z = dataset.shape[0], 64

    def norm(channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()

    G = nn.Sequential(
        nn.Linear(z, 128 * 7 * 7), Reshape(128, 7, 7), norm(128), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1), norm(64), nn.ReLU(),
        nn.ConvTranspose2d(64, c, 4, 2, 1), nn.Tanh())
    D = nn.Sequential(
        nn.Conv2d(c, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1))
    return Players(G, D, z)


# dcgan-plain: the same without batch norm (the ablation; and data-parallel runs then follow the
# one-process run exactly, as no statistic depends on how the batch is split).
PLAYERS: Dict[str, Callable[[Dataset], Players]] = {
    "mlp2d": mlp2d, "mlp-digits": mlp_digits, "dcgan": dcgan,
    "dcgan-plain": lambda dataset: dcgan(dataset, batch_norm=False)}


def make_players(name: str, dataset: Dataset) -> Players:
    if name not in PLAYERS:
        raise ValueError(f"hsc gan: unknown players {name!r}; expected one of {tuple(PLAYERS)}")
    return PLAYERS[name](dataset)


class DigitsClassifier(nn.Module):
    """64 -> 128 -> 64 -> 10; ``features`` (the 64-wide penultimate layer) feed the Frechet distance."""

    num_features = 64

    def __init__(self):
        super().__init__()
        self.body = mlp([64, 128, 64])
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

