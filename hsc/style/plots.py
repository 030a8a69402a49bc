"""Pictures (matplotlib, Agg backend): loss against time and evaluations, images side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .run import OPTIMIZERS, RunResult  # noqa: E402


def _draw_loss(axes, results: Dict[str, RunResult], title: str = "", target: Optional[float] = None) -> None:
    """Loss against wall-clock seconds on ``axes[0]`` and against evaluations on ``axes[1]``."""
    for label, result in results.items():
        color = OPTIMIZERS[result.config.optimizer].color
        seconds = [r.seconds for r in result.history]
        evaluations = [r.evaluations for r in result.history]
        losses = [r.loss for r in result.history]
        axes[0].plot(seconds, losses, color=color, label=label)
        axes[1].plot(evaluations, losses, color=color, label=label)
    for ax, xlabel in zip(axes, ("wall-clock seconds", "loss + gradient evaluations")):
        if target is not None:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(title, fontsize=9)
    axes[0].legend()


def plot_loss(results: Dict[str, RunResult], path: Path, title: str = "",
              target: Optional[float] = None) -> None:
    """One run per optimizer: the loss against seconds and against evaluations (log scale)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    _draw_loss(axes, results, title, target)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_loss_grid(rows: Dict[str, Dict[str, RunResult]], path: Path,
                   targets: Optional[Dict[str, float]] = None) -> None:
    """One row of :func:`plot_loss` per setting (e.g. image size), the ``targets`` as dotted lines."""
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.8 * len(rows)), squeeze=False)
    for ax_row, (name, results) in zip(axes, rows.items()):
        _draw_loss(ax_row, results, name, (targets or {}).get(name))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _as_array(image: torch.Tensor):
    return image.detach()[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def plot_side_by_side(content: torch.Tensor, style: torch.Tensor, results: Dict[str, RunResult],
                      path: Path, captions: Sequence[str] = ()) -> None:
    """Content, style, then each optimizer's clamped result with its final loss."""
    panels = [("content", content), ("style", style)] + [
        (f"{label}: loss {r.final_loss:.4g}", r.image) for label, r in results.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (caption, image) in zip(axes, panels):
        ax.imshow(_as_array(image))
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if captions:
        fig.suptitle("; ".join(captions), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_held_out_loss(results, path: Path, title: str = "") -> None:
    """The held-out loss of each stylising-network run against training seconds (log scale)."""
    from .network_train import METHODS

    colors = dict(zip(METHODS, ("tab:green", "tab:red")))
    fig, ax = plt.subplots(figsize=(6, 4))
    seen = set()
    for r in results:
        label = None if r.config.method in seen else r.config.method
        seen.add(r.config.method)
        ax.plot([s.seconds for s in r.history], [s.held_out_loss for s in r.history],
                color=colors.get(r.config.method), alpha=0.8, label=label)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("held-out loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_stylised(photos: torch.Tensor, style: torch.Tensor, outputs: Dict[str, torch.Tensor], path: Path,
                  title: str = "") -> None:
    """One row per photograph: the photograph, then each network's stylisation; the style on top."""
    rows, cols = len(photos), 1 + len(outputs)
    fig, axes = plt.subplots(rows + 1, cols, figsize=(2.6 * cols, 2.6 * (rows + 1)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0][0].imshow(_as_array(style))
    axes[0][0].set_title("style", fontsize=9)
    for i, photo in enumerate(photos):
        axes[i + 1][0].imshow(_as_array(photo[None]))
        for j, (name, out) in enumerate(outputs.items(), 1):
            axes[i + 1][j].imshow(_as_array(out[i][None]))
            if i == 0:
                axes[i + 1][j].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
