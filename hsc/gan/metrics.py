"""Sample-quality metrics.

Mixtures (the PacGAN/VEEGAN protocol): a sample is *high quality* when its distance to the nearest
mean is below 3 sigma; a mode is *captured* when at least one high-quality sample is nearest to it.
The reverse KL is KL(p || uniform) of the mode histogram p of the high-quality samples; with no
high-quality sample it is set to log K, the value of a single captured mode, so that it stays finite.

Digits: a classifier trained here (held-out accuracy reported) labels the samples; classes covered,
KL(class histogram || uniform) and the Frechet distance on its penultimate features (torchmetrics'
FrechetInceptionDistance with a custom feature module).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from .data import Dataset, digits_arrays
from .models import DigitsClassifier, FeatureExtractor

EVAL_SAMPLES = 2500


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
    model: DigitsClassifier
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


def frechet_distance(real: torch.Tensor, fake: torch.Tensor, extractor: nn.Module) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=extractor, normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def digits_metrics(samples: torch.Tensor) -> dict:
    """Classes covered, KL(class histogram || uniform), Frechet distance and the classifier's accuracy."""
    clf = digits_classifier()
    images, _ = digits_arrays()
    with torch.no_grad():
        classes = clf.model(samples).argmax(1)
    counts = torch.bincount(classes, minlength=10)
    return {"classes": int((counts > 0).sum()), "class_kl": kl_to_uniform(counts),
            "frechet": frechet_distance(images, samples, FeatureExtractor(clf.model)),
            "classifier_accuracy": clf.held_out_accuracy}


def evaluate(samples: torch.Tensor, dataset: Dataset) -> dict:
    """The metrics of ``dataset``'s protocol for generated ``samples``."""
    if dataset.is_mixture:
        return mixture_metrics(samples, dataset.means, dataset.sigma)
    return digits_metrics(samples)


# name -> (label, higher is better) for tables and plots
MIXTURE_METRICS = {"modes": ("modes captured", True), "high_quality": ("% high quality", True),
                   "reverse_kl": ("reverse KL", False)}
DIGITS_METRICS = {"classes": ("classes covered", True), "class_kl": ("class KL", False),
                  "frechet": ("Frechet distance", False)}


def metric_names(dataset: Dataset) -> dict:
    return MIXTURE_METRICS if dataset.is_mixture else DIGITS_METRICS
