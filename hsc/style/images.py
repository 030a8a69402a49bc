"""Images for style transfer: a file path (PNG, JPEG, ...) or a bundled name, as ``[1, 3, H, W]`` in [0, 1].

Bundled names come from packages that ship real photographs and textures, so everything works
offline: scikit-image's photographs (``astronaut``, ``chelsea``, ``coffee``, ``rocket``,
``motorcycle``, ``hubble``, ``ihc``, ``retina``, and the grey ``camera``, ``coins``, ``moon``,
``clock``) and grey textures (``brick``, ``grass``, ``gravel``), and scikit-learn's paintings-like
photographs ``china`` and ``flower``. ``PHOTOS`` and ``STYLES`` name the two kinds.
"""
from __future__ import annotations

import os
from typing import Callable, Dict

import numpy as np
import torch
from torch.nn import functional as F


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


BUNDLED: Dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _motorcycle,
    "hubble": _skimage("hubble_deep_field"),
    "ihc": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "camera": _skimage("camera"),
    "coins": _skimage("coins"),
    "moon": _skimage("moon"),
    "clock": _skimage("clock"),
    "brick": _skimage("brick"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}
# The photographs among them (the rest are textures and paintings: the styles).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble", "ihc", "retina", "camera", "coins",
          "moon", "clock")
STYLES = ("china", "flower", "brick", "grass", "gravel")


def _read_file(path: str, argument: str) -> np.ndarray:
    import skimage.io

    try:
        return np.asarray(skimage.io.imread(path))
    except Exception as err:  # the image plugins raise many types for unreadable files
        raise ValueError(f"hsc: {argument} must be a readable image file or one of {sorted(BUNDLED)}, "
                         f"got {path!r} ({err})") from err


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """An ``[H, W]``, ``[H, W, 1|3|4]`` integer or float array -> ``[1, 3, H, W]`` float32 in [0, 1].

    Grey images are repeated over the three channels; an alpha channel is dropped.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"hsc: image array must be [H, W] or [H, W, 1|3|4], got shape {list(a.shape)}")
    a = a[:, :, :3] if a.shape[2] == 4 else np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
    if np.issubdtype(a.dtype, np.integer):
        x = torch.from_numpy(a.astype(np.float32) / float(np.iinfo(a.dtype).max))
    else:
        x = torch.from_numpy(a.astype(np.float32)).clamp(0, 1)
    return x.permute(2, 0, 1).unsqueeze(0).contiguous()


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Scales ``image`` so that its shorter side is ``size``, then centre-crops it to ``size x size``."""
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    image = F.interpolate(image, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[..., top:top + size, left:left + size].clamp(0, 1).contiguous()


def read_image(source: str, argument: str = "image") -> torch.Tensor:
    """``source`` (a bundled name or a file path) at its own size, ``[1, 3, H, W]`` float32 in [0, 1]."""
    if source in BUNDLED:
        return to_tensor(BUNDLED[source]())
    if os.path.isfile(source):
        return to_tensor(_read_file(source, argument))
    raise FileNotFoundError(f"hsc: {argument} must be an image file or one of {sorted(BUNDLED)}, "
                            f"got {source!r} (no such file or bundled name)")


def load_image(source: str, size: int, argument: str = "image") -> torch.Tensor:
    """``source`` (a bundled name or a file path) as a ``[1, 3, size, size]`` float32 tensor in [0, 1].

    ``argument`` names the command-line option in error messages (``--content``, ``--style``).
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"hsc: --size must be an int >= 1, got {size!r}")
    return resize(read_image(source, argument), size)


def save_image(image: torch.Tensor, path: str) -> None:
    """Writes ``[1, 3, H, W]`` (clamped to [0, 1]) as an 8-bit image; the format follows the extension."""
    import skimage.io

    array = (image.detach()[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    skimage.io.imsave(path, array, check_contrast=False)
