"""Feature extractors for style transfer: a seeded random multi-scale network and VGG19.

Both map an image ``[1, 3, H, W]`` in [0, 1] to a dict ``layer name -> feature map [1, C, h, w]``
and name which layers the style and content losses read. Their weights are frozen: only the
image is optimised.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

EXTRACTORS = ("random", "vgg19")

# ImageNet statistics: VGG19 was trained on images normalised with them; the random network uses
# the same centring so that both see zero-mean inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetNormalise(nn.Module):
    """(x - mean) / std per colour channel, with ImageNet's mean and std."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FeatureExtractor(nn.Module):
    """Base: ``forward(image)`` returns the feature maps of ``style_layers`` and ``content_layers``;
    ``min_size`` is the smallest image side every layer still sees as at least one pixel."""

    style_layers: Tuple[str, ...]
    content_layers: Tuple[str, ...]
    min_size: int

    def freeze(self) -> "FeatureExtractor":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()


class RandomMultiScaleNet(FeatureExtractor):
    """One layer of random convolutional filters of several sizes, applied at several scales.

    After Ustyuzhaninov et al., "What does it take to generate natural textures?" (ICLR 2017):
    a single layer of random filters of many sizes followed by a ReLU already gives Gram matrices
    that synthesise natural textures. Their model used 128 filters each of 8 sizes up to 55 x 55,
    too heavy for a 2-core CPU at 256 x 256; here the large receptive fields come from applying
    small filters (``kernel_sizes``, ``channels`` each) to the image average-pooled by each of
    ``scales``, which costs a fraction 1/s^2 of the full-resolution layer per scale s. With the
    defaults (3, 5, 7 pixels, 16 filters each, scales 1, 2, 4) the effective filter sizes run from
    3 to 28 pixels and one evaluation at 256^2 costs about 0.35 GMAC.

    Every filter has zero mean and unit norm, so it responds to structure and colour contrast, not
    to overall brightness; there are no biases. Weights are drawn from ``torch.Generator`` seeded
    with ``seed``, so the network is the same on every machine and run.

    Layers: ``scale{s}`` for each scale s (the ReLU outputs of all filter sizes, concatenated).
    Style reads every scale; content reads ``content_scale`` (default 2: one octave coarser than
    the pixels, so the content term fixes the layout and leaves the fine texture to the style).
    """

    def __init__(self, seed: int = 0, kernel_sizes: Sequence[int] = (3, 5, 7), channels: int = 16,
                 scales: Sequence[int] = (1, 2, 4), content_scale: int = 2):
        super().__init__()
        if content_scale not in scales:
            raise ValueError(f"hsc: content_scale must be one of scales {tuple(scales)}, got {content_scale!r}")
        self.normalise = ImageNetNormalise()
        self.kernel_sizes = tuple(kernel_sizes)
        self.scales = tuple(scales)
        generator = torch.Generator().manual_seed(seed)
        weights = []
        for _ in self.scales:
            for k in self.kernel_sizes:
                w = torch.randn(channels, 3, k, k, generator=generator)
                w = w - w.mean(dim=(1, 2, 3), keepdim=True)
                weights.append(w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        self.weights = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in weights)
        self.style_layers = tuple(f"scale{s}" for s in self.scales)
        self.content_layers = (f"scale{content_scale}",)

    @property
    def min_size(self) -> int:
        """The smallest image side the coarsest scale still sees as at least one pixel."""
        return max(self.scales)

    def forward(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.normalise(image)
        out = {}
        filters = iter(self.weights)
        for s in self.scales:
            xs = F.avg_pool2d(x, s) if s > 1 else x
            maps = [F.conv2d(xs, next(filters), padding=k // 2) for k in self.kernel_sizes]
            out[f"scale{s}"] = F.relu(torch.cat(maps, dim=1))
        return out


# Gatys et al. (2016): style from relu1_1 ... relu5_1, content from relu4_2.
VGG_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
VGG_CONTENT_LAYERS = ("relu4_2",)


class VGG19Features(FeatureExtractor):
    """torchvision's VGG19 convolutional part with weights read from a local file.

    ``weights``: a file holding a ``state_dict`` of ``torchvision.models.vgg19`` (what
    ``torch.save(torchvision.models.vgg19(weights=...).state_dict(), path)`` writes). Nothing is
    downloaded. Inputs are normalised with ImageNet's mean and std; the network is cut after the
    last layer the losses read.
    """

    def __init__(self, weights: str, style_layers: Sequence[str] = VGG_STYLE_LAYERS,
                 content_layers: Sequence[str] = VGG_CONTENT_LAYERS):
        super().__init__()
        if not weights:
            raise ValueError("hsc: --weights must name a VGG19 state_dict file for --features vgg19, got none")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"hsc: --weights must be an existing VGG19 state_dict file, got {weights!r} "
                                    "(no such file)")
        try:
            import torchvision
        except ImportError as err:
            raise ImportError("hsc: --features vgg19 needs torchvision: pip install torchvision") from err
        model = torchvision.models.vgg19(weights=None)
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as err:  # unpickling and key/shape mismatches raise several types
            raise ValueError(f"hsc: --weights must be a state_dict of torchvision.models.vgg19, got "
                             f"{weights!r} ({type(err).__name__}: {str(err)[:200]})") from err
        names = _vgg_layer_names(model.features)
        wanted = set(style_layers) | set(content_layers)
        unknown = wanted - set(names)
        if unknown:
            raise ValueError(f"hsc: VGG19 layers must be among {names}, got {sorted(unknown)}")
        last = max(names.index(n) for n in wanted)
        self.normalise = ImageNetNormalise()
        self.body = model.features[:last + 1]
        self.names = names[:last + 1]
        self.style_layers = tuple(style_layers)
        self.content_layers = tuple(content_layers)

    min_size = 16  # four 2 x 2 poolings before relu5_1

    def forward(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.normalise(image)
        wanted = set(self.style_layers) | set(self.content_layers)
        out = {}
        for name, layer in zip(self.names, self.body):
            x = layer(x)
            if name in wanted:
                out[name] = x
        return out


def _vgg_layer_names(features: nn.Sequential) -> list:
    """conv{block}_{i}, relu{block}_{i}, pool{block} for torchvision's VGG ``features``."""
    names, block, index = [], 1, 1
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            names.append(f"conv{block}_{index}")
        elif isinstance(layer, nn.ReLU):
            names.append(f"relu{block}_{index}")
            index += 1
        else:
            names.append(f"pool{block}")
            block, index = block + 1, 1
    return names


def make_extractor(name: str = "random", *, seed: int = 0, weights: str = "") -> FeatureExtractor:
    """``random`` (:class:`RandomMultiScaleNet` seeded with ``seed``) or ``vgg19`` (weights from the
    file ``weights``); frozen, in eval mode."""
    if name == "random":
        return RandomMultiScaleNet(seed=seed).freeze()
    if name == "vgg19":
        return VGG19Features(weights).freeze()
    raise ValueError(f"hsc: --features must be one of {EXTRACTORS}, got {name!r}")
