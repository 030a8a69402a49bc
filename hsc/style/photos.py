"""Training photographs for a stylising network: random crops, scales and flips, drawn
deterministically from one seeded generator (its state is the sampler's whole state, so a
checkpoint resumes the draws bit for bit).

Default split of the bundled photographs (hsc.style.images.PHOTOS): nine for training, three held
out for evaluation (:data:`HELD_OUT`). A folder of the user's own images is the alternative:
every readable image in it, sorted by name, with every fifth held out.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import torch
from torch.nn import functional as F

from .images import PHOTOS, read_image, resize

HELD_OUT = ("chelsea", "coffee", "motorcycle")
TRAIN = tuple(p for p in PHOTOS if p not in HELD_OUT)
# Photos are kept with their shorter side at most this many pixels: crops come from that copy.
WORKING_SIDE = 512
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def split_sources(folder: str = "") -> Tuple[List[str], List[str]]:
    """(training sources, held-out sources): the bundled split, or a folder's images (every fifth,
    in name order, held out)."""
    if not folder:
        return list(TRAIN), list(HELD_OUT)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"hsc: --photos must be a folder of images, got {folder!r}")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if len(files) < 2:
        raise ValueError(f"hsc: --photos needs at least 2 images (one is held out), found {len(files)} in {folder!r}")
    held = files[::5]
    return [f for f in files if f not in held], held


def _working_copy(source: str) -> torch.Tensor:
    image = read_image(source, "--photos")
    h, w = image.shape[-2:]
    if min(h, w) > WORKING_SIDE:
        scale = WORKING_SIDE / min(h, w)
        image = F.interpolate(image, size=(round(h * scale), round(w * scale)), mode="bilinear",
                              antialias=True, align_corners=False).clamp(0, 1)
    return image


class PhotoSampler:
    """Batches of ``size x size`` crops: a photograph drawn uniformly, a square crop whose side is
    drawn uniformly between ``min_fraction`` of the photograph's shorter side and all of it,
    resized to ``size``, and flipped left-right with probability 1/2."""

    def __init__(self, sources: Sequence[str], size: int, seed: int, min_fraction: float = 0.4):
        if not sources:
            raise ValueError("hsc: the photo sampler needs at least one photograph")
        self.photos = [_working_copy(s) for s in sources]
        small = [s for s, p in zip(sources, self.photos) if min(p.shape[-2:]) < size]
        if small:
            raise ValueError(f"hsc: photographs must be at least {size} pixels on each side, got {small}")
        self.size, self.min_fraction = size, min_fraction
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n: int) -> torch.Tensor:
        """``[n, 3, size, size]`` in [0, 1]."""
        g, crops = self.generator, []
        for _ in range(n):
            photo = self.photos[int(torch.randint(len(self.photos), (1,), generator=g))]
            h, w = photo.shape[-2:]
            short = min(h, w)
            lowest = max(self.size, int(self.min_fraction * short))
            side = lowest + int(torch.randint(short - lowest + 1, (1,), generator=g))
            top = int(torch.randint(h - side + 1, (1,), generator=g))
            left = int(torch.randint(w - side + 1, (1,), generator=g))
            crop = photo[..., top:top + side, left:left + side]
            if side != self.size:
                crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True,
                                     align_corners=False).clamp(0, 1)
            if bool(torch.rand((), generator=g) < 0.5):
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.cat(crops)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def held_out_images(sources: Sequence[str], size: int) -> torch.Tensor:
    """The held-out photographs, each resized and centre-cropped to ``size``: ``[k, 3, size, size]``."""
    return torch.cat([resize(read_image(s, "--photos"), size) for s in sources])
