"""The style-transfer objective (Gatys et al., 2016): content, style and total-variation terms.

For an image x (``[1, 3, H, W]``) and feature maps F_l(x) (``[1, C_l, h_l, w_l]``)::

    gram(F)      = F Fᵀ / (h w)                      (C x C, F as C rows of h w entries)
    content(x)   = mean over layers of mean((F_l(x) - F_l(c))²)
    style(x)     = mean over layers of mean((gram(F_l(x)) - gram(F_l(s)))²)
    tv(x)        = mean((x[..., 1:, :] - x[..., :-1, :])²) + mean((x[..., 1:] - x[..., :-1])²)
    range(x)     = mean(relu(-x)² + relu(x - 1)²)
    loss(x)      = content_weight content(x) + style_weight style(x) + tv_weight tv(x)
                   + range_weight range(x)

The Gram matrix is normalised by the number of positions, so a style image of any size can
serve; the squared total variation keeps the loss twice differentiable for the HVPs. The range
term is a smooth penalty on pixels outside [0, 1]: every optimizer works on the same
unconstrained loss, and clamping the result to [0, 1] at the end then changes it little.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from ..config import option
from .features import FeatureExtractor


def gram(features: torch.Tensor) -> torch.Tensor:
    """F Fᵀ / (h w) for feature maps ``[B, C, h, w]``: ``[B, C, C]``."""
    if features.dim() != 4:
        raise ValueError(f"hsc: features must be [B, C, h, w], got shape {list(features.shape)}")
    B, C, h, w = features.shape
    flat = features.reshape(B, C, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two feature maps of the same shape."""
    return torch.mean((features - target) ** 2)


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between ``gram(features)`` and a target Gram matrix."""
    return torch.mean((gram(features) - target_gram) ** 2)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Squared total variation: mean squared vertical plus mean squared horizontal neighbour difference."""
    return (torch.mean((image[..., 1:, :] - image[..., :-1, :]) ** 2)
            + torch.mean((image[..., 1:] - image[..., :-1]) ** 2))


def out_of_range(image: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each pixel value to [0, 1] (0 inside)."""
    return torch.mean(torch.relu(-image) ** 2 + torch.relu(image - 1) ** 2)


@dataclass
class LossWeights:
    """Weights of the terms of the loss."""

    content: float = option(1.0, "weight of the content term", flag="content-weight")
    style: float = option(1e4, "weight of the style term", flag="style-weight")
    tv: float = option(1.0, "weight of the total variation", flag="tv-weight")
    range: float = option(100.0, "penalty on pixels outside [0, 1]", flag="range-weight")


def _check_image(image: torch.Tensor, name: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[:2] != (1, 3):
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"hsc: {name} must be an image tensor [1, 3, H, W], got {shape}")


class StyleObjective:
    """Holds the content features and the style Gram matrices; ``objective(x)`` is the total loss.

    The optimised image must have the content image's shape; the style image may be any size at
    least ``extractor.min_size`` on each side.
    """

    def __init__(self, extractor: FeatureExtractor, content: torch.Tensor, style: torch.Tensor,
                 weights: LossWeights = LossWeights()):
        _check_image(content, "content")
        _check_image(style, "style")
        for name, image in (("content", content), ("style", style)):
            if min(image.shape[-2:]) < extractor.min_size:
                raise ValueError(f"hsc: {name} image must be at least {extractor.min_size} pixels on each "
                                 f"side for this feature extractor, got {list(image.shape[-2:])}")
        self.extractor = extractor
        self.weights = weights
        self.content = content.detach().clone()
        self.shape = tuple(content.shape)
        with torch.no_grad():
            content_maps = extractor(content)
            style_maps = extractor(style)
        self.content_targets = {n: content_maps[n].detach() for n in extractor.content_layers}
        self.style_targets = {n: gram(style_maps[n]).detach() for n in extractor.style_layers}

    def terms(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The unweighted ``content``, ``style``, ``tv`` and ``range`` terms at ``image``."""
        if tuple(image.shape) != self.shape:
            raise ValueError(f"hsc: image must have the content image's shape {list(self.shape)}, "
                             f"got {list(image.shape)}")
        maps = self.extractor(image)
        content = torch.stack([content_loss(maps[n], t) for n, t in self.content_targets.items()]).mean()
        style = torch.stack([style_loss(maps[n], t) for n, t in self.style_targets.items()]).mean()
        return {"content": content, "style": style, "tv": total_variation(image),
                "range": out_of_range(image)}

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        t, w = self.terms(image), self.weights
        return (w.content * t["content"] + w.style * t["style"] + w.tv * t["tv"]
                + w.range * t["range"])
