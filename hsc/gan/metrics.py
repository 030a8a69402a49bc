"""Sample-quality metrics, one protocol per kind of data (:data:`PROTOCOLS`).

Mixtures (the PacGAN/VEEGAN protocol): a sample is *high quality* when its distance to the nearest
mean is below 3 sigma; a mode is *captured* when at least one high-quality sample is nearest to it.
The reverse KL is KL(p || uniform) of the mode histogram p of the high-quality samples; with no
high-quality sample it is set to log K, the value of a single captured mode, so that it stays finite.

Digits (8x8): a classifier trained here (held-out accuracy reported) labels the samples; classes
covered, KL(class histogram || uniform) and the Frechet distance on its penultimate features
(torchmetrics' FrechetInceptionDistance with a custom feature module).

MNIST and Stacked MNIST: a small CNN trained on the 4,000 training digits (hsc.gan.classifier;
deterministic, cached on disk, its held-out accuracy reported and required >= 97 %) labels every
image or channel. MNIST: classes covered, class KL, the share of samples labelled with confidence
>= 0.9, and the Frechet distance of its penultimate features to the held-out digits. Stacked MNIST:
modes covered of 1,000 and reverse KL of the mode histogram over 26,000 samples (VEEGAN/PacGAN),
and, because a noisy generator buys coverage, the share of channels labelled with confidence
>= 0.9 and the Frechet distance per channel (mean of the three). Each protocol's ``reference``
gives the same figures for real held-out samples.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from .data import Dataset, digits_arrays
from .models import DigitsClassifier

# A sample is "confidently classified" at this softmax probability.
CONFIDENT = 0.9


def kl_to_uniform(counts: torch.Tensor) -> float:
    """KL(p || uniform) of a histogram (0 log 0 = 0); log K for an empty histogram."""
    total = float(counts.sum())
    k = len(counts)
    if total == 0:
        return math.log(k)
    p = counts.double() / total
    nz = p > 0
    return float((p[nz] * (p[nz] * k).log()).sum())


def mixture_metrics(samples: torch.Tensor, means: torch.Tensor, sigma: float) -> dict:
    """Modes captured, % high quality and reverse KL of ``samples`` [n, 2] against the mixture."""
    dist = torch.cdist(samples.double(), means.double())
    nearest_dist, nearest = dist.min(1)
    high_quality = nearest_dist < 3 * sigma
    counts = torch.bincount(nearest[high_quality], minlength=len(means))
    return {"modes": int((counts > 0).sum()),
            "high_quality": 100.0 * float(high_quality.double().mean()) if len(samples) else 0.0,
            "reverse_kl": kl_to_uniform(counts)}


@dataclass
class TrainedClassifier:
    model: nn.Module
    held_out_accuracy: float


@functools.lru_cache(maxsize=1)
def digits_classifier(seed: int = 0, epochs: int = 300) -> TrainedClassifier:
    """Trains the digits classifier (full-batch Adam, 80/20 split by ``seed``); cached per process."""
    images, labels = digits_arrays()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsClassifier()
    order = torch.randperm(len(images), generator=gen)
    cut = int(0.8 * len(images))
    train_idx, test_idx = order[:cut], order[cut:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            nn.functional.cross_entropy(model(images[train_idx]), labels[train_idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(images[test_idx]).argmax(1) == labels[test_idx]).double().mean())
    for p in model.parameters():
        p.requires_grad_(False)
    return TrainedClassifier(model, 100.0 * acc)


class _Precomputed(nn.Module):
    """Hands features computed beforehand to torchmetrics' FID (its custom-feature route), so that
    one forward pass of the classifier serves both the labels and the Frechet distance."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """The Frechet distance between two sets of features ``[n, d]`` (torchmetrics' FID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_Precomputed(real_features.shape[1]), normalize=True)
    fid.update(real_features, real=True)
    fid.update(fake_features, real=False)
    return float(fid.compute())


@torch.no_grad()
def _features(model: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The classifier's penultimate features of ``images``, in batches (bounded memory; images go
    channels-last, the layout the CPU's convolutions run fastest on)."""
    def chunk(i: int) -> torch.Tensor:
        x = images[i:i + batch].float()
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    return torch.cat([model.features(chunk(i)) for i in range(0, len(images), batch)])


@torch.no_grad()
def _labels(model: nn.Module, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(labels, confidences) from the penultimate features."""
    confidence, labels = model.head(features).softmax(1).max(1)
    return labels, confidence


def digits_metrics(samples: torch.Tensor) -> dict:
    """Classes covered, KL(class histogram || uniform), Frechet distance and the classifier's accuracy."""
    clf = digits_classifier()
    images, _ = digits_arrays()
    features = _features(clf.model, samples)
    classes, _ = _labels(clf.model, features)
    counts = torch.bincount(classes, minlength=10)
    return {"classes": int((counts > 0).sum()), "class_kl": kl_to_uniform(counts),
            "frechet": frechet_distance(_features(clf.model, images), features),
            "classifier_accuracy": clf.held_out_accuracy}


def mnist_metrics(samples: torch.Tensor, dataset: Dataset) -> dict:
    """MNIST: classes covered, class KL, % confidently classified, Frechet distance to the held-out
    digits on the classifier's features."""
    from .classifier import mnist_classifier

    clf = mnist_classifier()
    samples = samples.float().cpu()
    features = _features(clf.model, samples)
    labels, confidence = _labels(clf.model, features)
    counts = torch.bincount(labels, minlength=10)
    return {"classes": int((counts > 0).sum()), "class_kl": kl_to_uniform(counts),
            "confident": 100.0 * float((confidence >= CONFIDENT).double().mean()),
            "frechet": frechet_distance(_features(clf.model, dataset.held_out), features),
            "classifier_accuracy": clf.held_out_accuracy}


def stacked_mnist_metrics(samples: torch.Tensor, dataset: Dataset) -> dict:
    """Stacked MNIST: modes covered of 1,000, reverse KL of the mode histogram, % of channels
    confidently classified, and the Frechet distance per channel to the held-out digits (mean)."""
    from .classifier import mnist_classifier

    clf = mnist_classifier()
    samples = samples.float().cpu()
    n, c = samples.shape[:2]
    channels = samples.reshape(n * c, 1, *samples.shape[2:])
    features = _features(clf.model, channels).reshape(n, c, -1)
    labels, confidence = _labels(clf.model, features.flatten(0, 1))
    digits = labels.reshape(n, c)
    modes = (digits * torch.tensor([10 ** (c - 1 - i) for i in range(c)])).sum(1)
    counts = torch.bincount(modes, minlength=10 ** c)
    real = _features(clf.model, dataset.held_out)
    frechet = [frechet_distance(real, features[:, i]) for i in range(c)]
    return {"modes": int((counts > 0).sum()), "reverse_kl": kl_to_uniform(counts),
            "confident": 100.0 * float((confidence >= CONFIDENT).double().mean()),
            "frechet": sum(frechet) / c, "classifier_accuracy": clf.held_out_accuracy}


@dataclass(frozen=True)
class Protocol:
    """How one kind of data is judged: the metrics (name -> (label, higher is better)), the
    headline metric of tables, how many samples a snapshot draws, and the evaluation itself."""

    names: Dict[str, Tuple[str, bool]]
    headline: str
    samples: int
    evaluate: Callable[[torch.Tensor, Dataset], dict]

    def reference(self, dataset: Dataset, seed: int = 0) -> dict:
        """The metrics of real samples (held-out ones where the data set keeps some)."""
        generator = torch.Generator().manual_seed(seed)
        if dataset.held_out is not None:
            real, _ = dataset.sample_with_labels(self.samples, generator, held_out=True)
        else:
            real = dataset.sample(self.samples, generator)
        return self.evaluate(real, dataset)


PROTOCOLS: Dict[str, Protocol] = {
    "mixture": Protocol({"modes": ("modes captured", True), "high_quality": ("% high quality", True),
                         "reverse_kl": ("reverse KL", False)}, "modes", 2500,
                        lambda s, d: mixture_metrics(s, d.means, d.sigma)),
    "digits": Protocol({"classes": ("classes covered", True), "class_kl": ("class KL", False),
                        "frechet": ("Frechet distance", False)}, "frechet", 2500,
                       lambda s, d: digits_metrics(s)),
    "mnist": Protocol({"frechet": ("Frechet distance", False), "classes": ("classes covered", True),
                       "class_kl": ("class KL", False), "confident": ("% confident", True)}, "frechet", 5000,
                      mnist_metrics),
    "stacked-mnist": Protocol({"modes": ("modes of 1,000", True), "reverse_kl": ("reverse KL", False),
                               "confident": ("% confident channels", True),
                               "frechet": ("Frechet distance per channel", False)}, "modes", 26000,
                              stacked_mnist_metrics),
}


def protocol_of(dataset_name: str) -> Protocol:
    from .data import DATASETS

    return PROTOCOLS[DATASETS[dataset_name].protocol]
