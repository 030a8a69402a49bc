"""Draws the figures of docs/: ``python docs/make_figures.py`` writes docs/multipliers.png (needs
matplotlib). The multipliers come from hsc.reference.spectral_multiplier, the definition the ops
are tested against."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's hsc

from hsc import reference  # noqa: E402


def multipliers(path: Path) -> None:
    """f(lambda) of the three spectral modes at mu = 1 against Newton's 1/lambda and a gradient
    step's 1/mu."""
    lam = torch.linspace(-6, 6, 2401, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode, style in (("spectral", "-"), ("saddle_free", "--"), ("saddle_free_root", "-")):
        ax.plot(lam, reference.spectral_multiplier(mode, lam, 1.0), style, lw=2, label=mode)
    newton = 1 / lam
    newton[lam.abs() < 0.15] = float("nan")
    ax.plot(lam, newton, ":", color="grey", label="Newton 1/λ")
    ax.axhline(1.0, color="grey", lw=0.8, ls="-.", label="gradient step 1/μ")
    ax.set_ylim(-1.6, 1.6)
    ax.set_xlabel("eigenvalue λ of S (μ = 1)")
    ax.set_ylabel("multiplier f(λ)")
    ax.set_title("M⁻¹ = V f(Λ) Vᵀ: the spectral modes' multipliers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    multipliers(HERE / "multipliers.png")
    print(f"wrote {HERE / 'multipliers.png'}")
