"""Histograms of block eigenvalues (the spectral modes' diagnostics), for the applications' CLIs.
matplotlib is imported when a picture is drawn: the library itself does not need it."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import torch


def plot_spectra(spectra: Dict[str, Tuple[torch.Tensor, float]], path: Path, title: str) -> None:
    """One panel per entry ``name -> (eigenvalues, mu)``: a histogram of the eigenvalues on a
    symmetric logarithmic axis (linear within mu of 0), with -mu and +mu marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spectra), figsize=(5 * len(spectra), 3.5), squeeze=False)
    for ax, (name, (values, mu)) in zip(axes[0], spectra.items()):
        v = values.double().cpu()
        top = float(v.abs().max()) if v.numel() else 1.0
        # Bins uniform in the symlog coordinate: linear within mu, logarithmic beyond.
        edges = torch.logspace(torch.log10(torch.tensor(mu)), torch.log10(torch.tensor(max(top, 2 * mu))), 40)
        bins = torch.cat([-edges.flip(0), torch.linspace(-mu, mu, 9)[1:-1], edges]).numpy()
        ax.hist(v.numpy(), bins=bins, color="tab:blue")
        ax.set_xscale("symlog", linthresh=mu)
        ax.set_yscale("log")
        for x in (-mu, mu):
            ax.axvline(x, color="tab:red", lw=1, ls="--")
        negative = float((v < 0).double().mean()) if v.numel() else 0.0
        ax.set_title(f"{name}: {v.numel()} eigenvalues, {100 * negative:.0f} % negative, mu = {mu:.3g}",
                     fontsize=9)
        ax.set_xlabel("eigenvalue (symlog; dashed: ±mu)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
