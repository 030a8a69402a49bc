"""Generator, discriminator and the digits classifier (plain ReLU MLPs)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


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


def latent_dim(data_dim: int) -> int:
    """z in R^2 for the 2-D mixtures, R^16 for digits."""
    return 2 if data_dim == 2 else 16


def make_players(data_dim: int) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator). 2-D: G 2->128->128->128->2, D 2->128->128->1.
    Digits: G 16->256->256->64 (tanh), D 64->256->256->1."""
    if data_dim == 2:
        return mlp([2, 128, 128, 128, 2]), mlp([2, 128, 128, 1])
    z = latent_dim(data_dim)
    return mlp([z, 256, 256, data_dim], nn.Tanh()), mlp([data_dim, 256, 256, 1])


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


class FeatureExtractor(nn.Module):
    """Wraps a classifier's features as the custom feature module torchmetrics' FID expects."""

    def __init__(self, classifier: DigitsClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.reshape(len(x), -1).float())
