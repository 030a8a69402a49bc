"""The hsc-lbfgs settings grid over the three pairs: evaluations and seconds to L-BFGS's loss.

Plain script (not collected by pytest)::

    python bench/style_lbfgs_grid.py --size 128    # bench/results/style_lbfgs_grid_128.{md,json}
    python bench/style_lbfgs_grid.py --size 256 --only 'ema 0 (the default);ema 0, rho 3'

For each pair of style_common.PAIRS at ``--size``: L-BFGS runs 300 evaluations and sets the target;
each variant of LBFGS_GRID (changes to hsc-lbfgs's LBFGSSettings on top of LBFGS_GRID_BASE, the
first round's starting point) then runs at most 600 evaluations. Reported per variant and pair:
evaluations (deterministic) and seconds to the target, and their sum over the pairs. ``--only``
(names joined by ';', since names hold commas) reruns some variants and keeps the other rows of an
earlier run's JSON in the same folder.

Writes to bench/results/ (``--results DIR``: elsewhere): ``style_lbfgs_grid_<size>.json`` and
``style_lbfgs_grid_<size>.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Dict, List

import torch

# style_common first: it puts the repository on sys.path for the imports of hsc
from style_common import (PAIRS, REFERENCE_EVALUATIONS, add_results_flag, make_objective, reference, results_dir,
                          time_to, warm_up)
from conftest import machine
from hsc import config
from hsc.apps import write_json
from hsc.style.run import LBFGSSettings, RunConfig, run

EVALUATIONS = 600  # each variant's budget

# The grid: name -> changes to LBFGSSettings (history, keep_pairs, or PreconditionerConfig fields)
# on top of LBFGS_GRID_BASE, the first round's starting point (the default then); judged on every
# pair of PAIRS by evaluations to L-BFGS's 300-evaluation loss. Round 1 changes one thing; round 2
# starts from ema 0, the one change that helped on every pair (now the default).
LBFGS_GRID_BASE = {"update_every": 60, "ema": 0.9, "scale": 1.0, "keep_pairs": True}
LBFGS_GRID: Dict[str, dict] = {
    "every 60, ema 0.9, rho 1, pairs kept": {},
    "every 20": {"update_every": 20},
    "every 200": {"update_every": 200},
    "ema 0 (the default)": {"ema": 0.0},
    "rho 0.3": {"scale": 0.3},
    "rho 3": {"scale": 3.0},
    "pairs reset at a refresh": {"keep_pairs": False},
    "saddle_free": {"mode": "saddle_free"},
    "patch 2x2": {"patch": (2, 2)},
    "samples 2": {"samples": 2},
    "ema 0, rho 3": {"ema": 0.0, "scale": 3.0},
    "ema 0, rho 2": {"ema": 0.0, "scale": 2.0},
    "ema 0, every 120": {"ema": 0.0, "update_every": 120},
}


def settings(name: str) -> LBFGSSettings:
    """hsc-lbfgs's settings of the variant ``name``."""
    return config.replace(LBFGSSettings(), **{**LBFGS_GRID_BASE, **LBFGS_GRID[name]})


def lbfgs_grid(size: int, chosen: List[str], results: Path, keep_others: bool) -> None:
    """Runs the variants ``chosen`` over every pair; ``keep_others``: the rows of the other variants
    come from the JSON already in ``results`` (the evaluations are deterministic)."""
    torch.set_num_threads(1)
    rows: Dict[str, dict] = {n: {} for n in chosen}
    targets = {}
    for content, style in PAIRS:
        pair = f"{content}/{style}"
        objective = make_objective(size, content, style)
        warm_up(objective)
        lbfgs = reference(objective)
        targets[pair] = {"loss": lbfgs.history[-1].loss, "seconds": lbfgs.seconds}
        for name in chosen:
            r = run(objective, RunConfig(optimizer="hsc-lbfgs", evaluations=EVALUATIONS, hsc_lbfgs=settings(name)))
            rows[name][pair] = {"to_target": time_to(r, targets[pair]["loss"]), "final_loss": r.final_loss,
                                "diverged": r.diverged}
            print(f"  {pair} {name}: {rows[name][pair]}", flush=True)
    path = results / f"style_lbfgs_grid_{size}.json"
    if keep_others and path.exists():
        previous = json.loads(path.read_text())["rows"]
        rows = {n: rows[n] if n in rows else previous[n] for n in LBFGS_GRID if n in rows or n in previous}
    write_lbfgs_grid({"machine": machine(), "size": size, "targets": targets, "base": LBFGS_GRID_BASE,
                      "defaults": dataclasses.asdict(LBFGSSettings()), "grid": LBFGS_GRID, "rows": rows}, results)


def write_lbfgs_grid(out: dict, results: Path) -> None:
    """style_lbfgs_grid_<size>.{json,md} from the grid's results."""
    size, targets, rows = out["size"], out["targets"], out["rows"]
    write_json(results_dir(results) / f"style_lbfgs_grid_{size}.json", out)
    pairs = [f"{c}/{s}" for c, s in PAIRS]
    lines = [f"# hsc-lbfgs settings over three pairs, {size}²: evaluations (seconds) to L-BFGS's "
             f"{REFERENCE_EVALUATIONS}-evaluation loss", "",
             f"- machine: {out['machine']['cpu']}, torch {out['machine']['torch']}, 1 thread; "
             f"command: `{out['machine']['command']}`",
             "- L-BFGS (history 100, strong Wolfe): " + ", ".join(
                 f"{p} {targets[p]['loss']:.4f} in {targets[p]['seconds']:.1f} s" for p in pairs),
             f"- each run at most {EVALUATIONS} evaluations; every variant changes {out['base']} (the first "
             f"round's base) of hsc-lbfgs's settings {out['defaults']}",
             "- evaluations are deterministic; seconds were measured while other work may have shared the machine",
             "", "| variant | " + " | ".join(pairs) + " | evaluations, sum |", "|---|" + "---|" * (len(pairs) + 1)]
    for name, row in rows.items():
        cells, total = [], 0
        for p in pairs:
            hit = row[p]["to_target"]
            cells.append(f"{hit['evaluations']} ({hit['seconds']:.1f} s)" if hit else "not reached")
            total = total + hit["evaluations"] if hit and total is not None else None
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total if total is not None else '-'} |")
    (results / f"style_lbfgs_grid_{size}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image size (default: 128)")
    parser.add_argument("--only", default="",
                        help="variant names joined by ';' (default: the whole grid); the other rows of an "
                        "earlier run at this size are kept")
    add_results_flag(parser)
    args = parser.parse_args()
    chosen = args.only.split(";") if args.only else list(LBFGS_GRID)
    unknown = set(chosen) - set(LBFGS_GRID)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; the grid has {list(LBFGS_GRID)}")
    lbfgs_grid(args.size, chosen, args.results, keep_others=bool(args.only))


if __name__ == "__main__":
    main()
