"""Pictures (matplotlib, Agg backend): samples per method and the metrics against training time."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .data import Dataset  # noqa: E402
from .metrics import Protocol  # noqa: E402
from .train import RunResult  # noqa: E402


def plot_samples(runs: List[RunResult], dataset: Dataset, protocol: Protocol, path: Path, title: str) -> None:
    """One panel per seed: a scatter with the means marked (points) or a grid of 100 images; the
    panel's title gives the protocol's first three metrics."""
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        m = run.final
        caption = f"seed {run.config.seed}: " + ", ".join(f"{k} {m[k]:.3g}" for k in list(protocol.names)[:3])
        if dataset.is_points:
            s = run.samples.numpy()
            ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.4, color="tab:blue")
            mu = dataset.means.numpy()
            ax.scatter(mu[:, 0], mu[:, 1], marker="x", s=40, color="tab:red")
            lim = float(dataset.means.abs().max()) * 1.5
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_title(caption, fontsize=8)
            continue
        grid = image_grid(run.samples[:100], dataset.shape, rows=10)
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None)
        ax.axis("off")
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def image_grid(images: torch.Tensor, shape, rows: int):
    """Images in [-1, 1] (flattened or ``[n, C, H, W]``) tiled into one picture in [0, 1] with a
    1-pixel border: ``[H', W']`` for one channel, ``[H', W', 3]`` for three (RGB)."""
    side = int(round(shape[0] ** 0.5)) if len(shape) == 1 else None
    images = images.reshape(len(images), 1, side, side) if side else images.reshape(len(images), *shape)
    n, c, h, w = images.shape
    cols = (n + rows - 1) // rows
    canvas = torch.zeros(c, rows * (h + 1), cols * (w + 1))
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        canvas[:, r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = (img.float() + 1) / 2
    canvas = canvas.clamp(0, 1)
    return canvas[0].numpy() if c == 1 else canvas.permute(1, 2, 0).numpy()


def plot_curves(runs_by_method: Dict[str, List[RunResult]], protocol: Protocol, path: Path) -> None:
    """Each metric against training wall-clock seconds; one line per run, one colour per method."""
    names = protocol.names
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, (label, _)) in zip(axes[0], names.items()):
        for color, (method, runs) in zip(colors, runs_by_method.items()):
            for i, run in enumerate(runs):
                t = [s.seconds for s in run.history]
                v = [s.metrics[key] for s in run.history]
                ax.plot(t, v, color=color, alpha=0.8, label=method if i == 0 else None)
        ax.set_xlabel("training seconds")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
