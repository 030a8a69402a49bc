"""Coloured probes against plain sign probes at equal HVP count, both against the exact pixel blocks.

Plain script (not collected by pytest)::

    python bench/style_probes.py      # the three pairs at 32²: bench/results/style_probes.md

For each pair of style_common.PAIRS at 32², at the content image and after 50 L-BFGS iterations:
the exact 3 x 3 pixel blocks (estimator ``exact``, the oracle), then for colour radius 1 and 2 and
8 seeds, one refresh (ema 0) of the coloured estimator (C colours, 3 C HVPs) and one of plain sign
probes with samples = C (the same HVP count). Reported: the relative Frobenius error of each
estimate of the blocks, ‖estimate − exact‖_F / ‖exact‖_F over all blocks, median of the seeds.
The estimates are read from ``Preconditioner.estimate`` (the blocks before their factorisation).

Writes to bench/results/ (``--results DIR``: elsewhere): ``style_probes.md``.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

# style_common first: it puts the repository on sys.path for the imports of hsc
from style_common import PAIRS, add_results_flag, make_objective, results_dir
from conftest import command
from hsc.preconditioner import Preconditioner

SIZE = 32
SEEDS = 8
LBFGS_ITERATIONS = 50


def probes(results: Path) -> None:
    torch.set_num_threads(1)
    rows = []
    for content, style in PAIRS:
        objective = make_objective(SIZE, content, style)
        image = objective.content.clone().requires_grad_(True)
        points = {"content image": image.detach().clone()}
        optimizer = torch.optim.LBFGS([image], max_iter=LBFGS_ITERATIONS, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = objective(image)
            loss.backward()
            return loss

        optimizer.step(closure)
        points[f"after {LBFGS_ITERATIONS} L-BFGS iterations"] = image.detach().clone()
        for where, point in points.items():
            x = point.clone().requires_grad_(True)
            exact = Preconditioner([x], block_size=3, patch=(1, 1), estimator="exact", ema=0.0)
            exact.update_curvature(lambda: objective(x))
            for radius in (1, 2):
                errors = {"coloured": [], "probe": []}
                colours = None
                for seed in range(SEEDS):
                    c = Preconditioner([x], block_size=3, patch=(1, 1), estimator="coloured", colour_radius=radius,
                                       ema=0.0, seed=seed)
                    c.update_curvature(lambda: objective(x))
                    colours = c.colour_count
                    p = Preconditioner([x], block_size=3, patch=(1, 1), estimator="probe", samples=colours,
                                       ema=0.0, seed=seed)
                    p.update_curvature(lambda: objective(x))
                    for name, pre in (("coloured", c), ("probe", p)):
                        errors[name].append(float((pre.estimate - exact.estimate).norm() / exact.estimate.norm()))
                rows.append({"pair": f"{content}/{style}", "point": where, "radius": radius, "colours": colours,
                             "hvps": 3 * colours, "coloured": statistics.median(errors["coloured"]),
                             "probe": statistics.median(errors["probe"])})
                print(rows[-1], flush=True)
    lines = [f"# Coloured probes against plain sign probes at equal HVP count ({SIZE}², exact blocks as the "
             "oracle)", "",
             f"- command: `{command()}`; random features; blocks of one pixel's 3 colours (b = 3)",
             f"- error: ‖estimate − exact blocks‖_F / ‖exact blocks‖_F over all blocks, median of {SEEDS} seeds; "
             "one refresh, no averaging across refreshes (ema 0); plain probes get samples = C sign draws, so "
             "both take 3 C HVPs", "",
             "| pair | point | radius r | colours C | HVPs | coloured error | plain probes error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['point']} | {r['radius']} | {r['colours']} | {r['hvps']} | "
                     f"{r['coloured']:.3f} | {r['probe']:.3f} |")
    (results_dir(results) / "style_probes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_results_flag(parser)
    probes(parser.parse_args().results)


if __name__ == "__main__":
    main()
