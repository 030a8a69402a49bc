"""Pictures (matplotlib, Agg backend): samples per method and the metrics against training time."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .data import Dataset  # noqa: E402
from .metrics import metric_names  # noqa: E402
from .train import RunResult  # noqa: E402


def plot_samples(runs: List[RunResult], dataset: Dataset, path: Path, title: str) -> None:
    """One panel per seed: a scatter with the means marked (mixtures) or an image grid (digits)."""
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        m = run.final
        if dataset.is_mixture:
            s = run.samples.numpy()
            ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.4, color="tab:blue")
            mu = dataset.means.numpy()
            ax.scatter(mu[:, 0], mu[:, 1], marker="x", s=40, color="tab:red")
            lim = float(dataset.means.abs().max()) * 1.5
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_title(f"seed {run.config.seed}: {m['modes']}/{len(mu)} modes, {m['high_quality']:.0f}% HQ",
                         fontsize=9)
        else:
            grid = _image_grid(run.samples[:100], rows=10)
            ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
            ax.axis("off")
            ax.set_title(f"seed {run.config.seed}: {m['classes']}/10 classes, FD {m['frechet']:.1f}",
                         fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _image_grid(images: torch.Tensor, rows: int) -> torch.Tensor:
    n = len(images)
    cols = (n + rows - 1) // rows
    canvas = torch.full((rows * 9, cols * 9), -1.0)
    for i, img in enumerate(images.reshape(n, 8, 8)):
        r, c = divmod(i, cols)
        canvas[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = img
    return canvas.numpy()


def plot_curves(runs_by_method: Dict[str, List[RunResult]], dataset: Dataset, path: Path) -> None:
    """Each metric against training wall-clock seconds; one line per run, one colour per method."""
    names = metric_names(dataset)
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
