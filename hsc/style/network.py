"""A feed-forward stylising network and the perceptual loss it trains on.

The network has the shape of Johnson, Alahi & Fei-Fei (ECCV 2016) with instance normalisation
(Ulyanov et al. 2016), narrowed for a few CPU cores: a 9x9 convolution, two strided 3x3
convolutions down, residual blocks, two nearest-neighbour upsamplings each followed by a 3x3
convolution (resize-convolutions: no checkerboard artefacts), and a 9x9 convolution to RGB; every
convolution reflection-padded. The output is squashed into [0, 1].

The loss is the one ``hsc style`` minimises over pixels (hsc.style.objective): content against
the network's own input photograph, Gram-matrix style against the one style image, total variation,
and the penalty outside [0, 1], each a mean over the batch, so that a network's loss on a
photograph is the pixel objective's value at its output.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn

from .features import FeatureExtractor
from .objective import LossWeights, content_loss, gram, out_of_range, style_loss, total_variation


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(kernel // 2), nn.Conv2d(c_in, c_out, kernel, stride))


def _conv_norm_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv(c_in, c_out, kernel, stride), nn.InstanceNorm2d(c_out, affine=True), nn.ReLU())


class Residual(nn.Module):
    """x + conv-norm-relu-conv-norm(x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_norm_relu(channels, channels, 3), _conv(channels, channels, 3),
                                  nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TransformNet(nn.Module):
    """Photograph ``[B, 3, H, W]`` in [0, 1] -> stylised ``[B, 3, H, W]`` in [0, 1] (H, W multiples
    of 4). ``width``: channels of the first layer (Johnson's 32; 16 here by default), doubled at
    each downsampling; ``blocks``: residual blocks (Johnson's 5)."""

    def __init__(self, width: int = 16, blocks: int = 3):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_norm_relu(3, w, 9), _conv_norm_relu(w, 2 * w, 3, 2), _conv_norm_relu(2 * w, 4 * w, 3, 2),
            *[Residual(4 * w) for _ in range(blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"), _conv_norm_relu(4 * w, 2 * w, 3),
            nn.Upsample(scale_factor=2, mode="nearest"), _conv_norm_relu(2 * w, w, 3),
            _conv(w, 3, 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"hsc: the network takes images whose sides are multiples of 4, got {list(x.shape)}")
        return torch.sigmoid(self.body(x))


class PerceptualLoss:
    """The style-transfer loss of a batch of outputs against their input photographs and one style
    image (hsc.style.objective's terms and weights, averaged over the batch)."""

    def __init__(self, extractor: FeatureExtractor, style: torch.Tensor, weights: LossWeights = LossWeights()):
        if style.dim() != 4 or style.shape[:2] != (1, 3):
            raise ValueError(f"hsc: style must be an image tensor [1, 3, H, W], got {list(style.shape)}")
        if min(style.shape[-2:]) < extractor.min_size:
            raise ValueError(f"hsc: the style image must be at least {extractor.min_size} pixels on each side")
        self.extractor, self.weights = extractor, weights
        with torch.no_grad():
            maps = extractor(style)
        self.style_targets = {n: gram(maps[n]).detach() for n in extractor.style_layers}

    def terms(self, output: torch.Tensor, photo: torch.Tensor) -> Dict[str, torch.Tensor]:
        maps = self.extractor(output)
        with torch.no_grad():
            targets = self.extractor(photo)
        content = torch.stack([content_loss(maps[n], targets[n]) for n in self.extractor.content_layers]).mean()
        style = torch.stack([style_loss(maps[n], t) for n, t in self.style_targets.items()]).mean()
        return {"content": content, "style": style, "tv": total_variation(output), "range": out_of_range(output)}

    def __call__(self, output: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
        t, w = self.terms(output, photo), self.weights
        return w.content * t["content"] + w.style * t["style"] + w.tv * t["tv"] + w.range * t["range"]

    def residuals(self, output: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
        """The loss as a sum of squares: a flat vector r with sum(r²) = ``self(output, photo)``.
        Each term is a weighted mean of squared differences, so its residuals are those differences
        scaled by sqrt(weight / count); the Gauss-Newton estimator's outputs (``gauss_newton`` with
        ``sketches``: the loss's Hessian in r is 2I, so its sketches are plain random signs)."""
        maps, w = self.extractor(output), self.weights
        with torch.no_grad():
            targets = self.extractor(photo)
        parts = []

        def add(terms, weight: float) -> None:  # a mean over len(terms) means of squares
            for d in terms:
                parts.append(d.reshape(-1) * math.sqrt(weight / (len(terms) * d.numel())))

        add([maps[n] - targets[n] for n in self.extractor.content_layers], w.content)
        add([gram(maps[n]) - t for n, t in self.style_targets.items()], w.style)
        add([output[..., 1:, :] - output[..., :-1, :]], w.tv)
        add([output[..., 1:] - output[..., :-1]], w.tv)
        add([torch.cat([torch.relu(-output), torch.relu(output - 1)], 1)], w.range * 2)
        return torch.cat(parts)
