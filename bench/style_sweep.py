"""The hsc optimizer's settings grid on one pair: loss per evaluation and against L-BFGS's time.

Plain script (not collected by pytest)::

    python bench/style_sweep.py                        # the grid at 128²: bench/results/style_sweep.{md,json}
    python bench/style_sweep.py --only "r1 base,r1 every 100"   # some variants only

On astronaut in the style of china (style_common.CONTENT, STYLE) at ``--size``: L-BFGS runs 300
evaluations and sets the target and the reference time; each variant of SWEEP (changes to the hsc
optimizer's defaults, or an Adam learning rate) then runs 600 evaluations or 3x L-BFGS's time,
whichever comes first. Reported per variant: the loss at 100, 300 and 600 evaluations and at
L-BFGS's time, the seconds to the target, HVPs and steps skipped. The grid chose hsc's pixel
defaults (bench/results/style_notes.md, "The hsc optimizer before step control").

Writes to bench/results/ (``--results DIR``: elsewhere): ``style_sweep.json`` and ``style_sweep.md``
(whatever the size, and with only the variants run).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Dict, List

import torch

# style_common first: it puts the repository on sys.path for the imports of hsc
from style_common import (REFERENCE_EVALUATIONS, TIME_FACTOR, add_results_flag, config_with, loss_at_evaluations,
                          loss_at_seconds, loss_text, make_objective, reference, results_dir, time_to, warm_up)
from conftest import machine
from hsc.apps import comma_list, write_json
from hsc.style.run import HSCSettings, run

EVALUATIONS = 600  # each variant's budget, or TIME_FACTOR x L-BFGS's time

# name -> changes to HSCSettings and its preconditioner, or to RunConfig's adam_lr / optimizer
# (style_common.config_with); the grid of style_notes.md
SWEEP: Dict[str, dict] = {
    "adam lr 0.01": {"optimizer": "adam", "adam_lr": 0.01},
    "adam lr 0.02": {"optimizer": "adam", "adam_lr": 0.02},
    "adam lr 0.05": {"optimizer": "adam", "adam_lr": 0.05},
    "adam lr 0.1": {"optimizer": "adam", "adam_lr": 0.1},
    "adam lr 0.2": {"optimizer": "adam", "adam_lr": 0.2},
    # round 1: one change at a time from lr 0.1, momentum 0.9, every 10, mu 500, delta 1
    "r1 base": {"momentum": 0.9, "update_every": 10},
    "r1 mu 250": {"momentum": 0.9, "update_every": 10, "scale": 250.0},
    "r1 mu 1000": {"momentum": 0.9, "update_every": 10, "scale": 1000.0},
    "r1 mu 2000": {"momentum": 0.9, "update_every": 10, "scale": 2000.0},
    "r1 lr 0.05": {"momentum": 0.9, "update_every": 10, "lr": 0.05},
    "r1 lr 0.2": {"momentum": 0.9, "update_every": 10, "lr": 0.2},
    "r1 momentum 0.5": {"momentum": 0.5, "update_every": 10},
    "r1 momentum 0.95": {"momentum": 0.95, "update_every": 10},
    "r1 every 3": {"momentum": 0.9, "update_every": 3},
    "r1 every 30": {"momentum": 0.9, "update_every": 30},
    "r1 every 100": {"momentum": 0.9, "update_every": 100},
    "r1 samples 4": {"momentum": 0.9, "update_every": 10, "samples": 4},
    "r1 ema 0.5": {"momentum": 0.9, "update_every": 10, "ema": 0.5},
    "r1 ema 0.99": {"momentum": 0.9, "update_every": 10, "ema": 0.99},
    "r1 delta 10": {"momentum": 0.9, "update_every": 10, "damping": 10.0},
    "r1 delta 100": {"momentum": 0.9, "update_every": 10, "damping": 100.0},
    "r1 patch 2x2 every 30": {"momentum": 0.9, "update_every": 30, "patch": (2, 2)},
    "r1 singular_safe": {"momentum": 0.9, "update_every": 10, "mode": "singular_safe"},
    # round 2: from every 100
    "r2 every 100 ema 0.99": {"momentum": 0.9, "update_every": 100, "ema": 0.99},
    "r2 every 100 delta 100": {"momentum": 0.9, "update_every": 100, "damping": 100.0},
    "r2 every 100 lr 0.15": {"momentum": 0.9, "update_every": 100, "lr": 0.15},
    "r2 every 100 mu 350": {"momentum": 0.9, "update_every": 100, "scale": 350.0},
    "r2 every 100 mu 700": {"momentum": 0.9, "update_every": 100, "scale": 700.0},
    "r2 every 300": {"momentum": 0.9, "update_every": 300},
    "r2 every 100 momentum 0.95": {"momentum": 0.95, "update_every": 100},
    # control: delta 1e5 drowns the curvature, M^-1 = const I: momentum SGD through the same code
    "r2 identity lr 4": {"momentum": 0.9, "damping": 1e5, "lr": 4.0},
    "r2 identity lr 8": {"momentum": 0.9, "damping": 1e5, "lr": 8.0},
    # round 3: from every 100, momentum 0.95
    "r3 momentum 0.97 (default)": {},
    "r3 momentum 0.98": {"momentum": 0.98},
    "r3 momentum 0.99": {"momentum": 0.99},
    "r3 momentum 0.97 lr 0.07": {"lr": 0.07},
    "r3 momentum 0.97 samples 2": {"samples": 2},
    "r3 momentum 0.95 delta 100": {"momentum": 0.95, "damping": 100.0},
    "r3 momentum 0.95 mu 700 lr 0.15": {"momentum": 0.95, "scale": 700.0, "lr": 0.15},
    "r3 momentum 0.95 patch 2x2": {"momentum": 0.95, "patch": (2, 2)},
}


def sweep(size: int, names: List[str], results: Path) -> None:
    torch.set_num_threads(1)
    objective = make_objective(size)
    warm_up(objective)
    lbfgs = reference(objective)
    target = lbfgs.history[-1].loss
    rows = {}
    for name in names:
        r = run(objective, config_with(SWEEP[name], evaluations=EVALUATIONS, seconds=TIME_FACTOR * lbfgs.seconds))
        rows[name] = {"changes": {k: list(v) if isinstance(v, tuple) else v for k, v in SWEEP[name].items()},
                      "loss_at_100": loss_at_evaluations(r, 100), "loss_at_300": loss_at_evaluations(r, 300),
                      "loss_at_600": loss_at_evaluations(r, 600),
                      "loss_at_reference_seconds": loss_at_seconds(r, lbfgs.seconds),
                      "to_target": time_to(r, target), "evaluations": r.evaluations, "hvps": r.hvps,
                      "seconds": r.seconds, "skipped_steps": sum(v for k, v in r.stats.items()
                                                                 if k.startswith("skipped"))}
        print(f"  {name}: {rows[name]}", flush=True)
    out = {"machine": machine(), "size": size, "target": target, "reference_seconds": lbfgs.seconds,
           "defaults": dataclasses.asdict(HSCSettings()), "rows": rows}
    write_json(results_dir(results) / "style_sweep.json", out)
    lines = [f"# hsc settings grid, {size}², target {target:.4f} (L-BFGS, {REFERENCE_EVALUATIONS} evaluations, "
             f"{lbfgs.seconds:.1f} s)", "", f"- machine: {out['machine']['cpu']}, torch {out['machine']['torch']}, "
             f"1 thread; command: `{out['machine']['command']}`",
             f"- each run: {EVALUATIONS} evaluations or {TIME_FACTOR:g}x L-BFGS's time; changes to {out['defaults']}",
             "- `diverged`: the loss overflowed and every later step was skipped", "",
             "| variant | loss @100 | @300 | @600 | at L-BFGS's time | to target | HVPs | skipped steps |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        hit = r["to_target"]
        lines.append(f"| {name} | {loss_text(r['loss_at_100'])} | {loss_text(r['loss_at_300'])} | "
                     f"{loss_text(r['loss_at_600'])} | {loss_text(r['loss_at_reference_seconds'])} | "
                     f"{'%.1f s' % hit['seconds'] if hit else 'no'} | {r['hvps']} | {r['skipped_steps']} |")
    (results / "style_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image size (default: 128)")
    parser.add_argument("--only", default="", help="comma list of variant names (default: the whole grid)")
    add_results_flag(parser)
    args = parser.parse_args()
    try:
        chosen = comma_list(args.only, "--only", allowed=list(SWEEP)) if args.only else list(SWEEP)
    except ValueError as e:
        parser.error(str(e))
    sweep(args.size, [n for n in SWEEP if n in chosen], args.results)  # in the grid's order


if __name__ == "__main__":
    main()
