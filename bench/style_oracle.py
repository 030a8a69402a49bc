"""Exact pixel blocks against the probe estimator, per evaluation, at 32² (not timed).

Plain script (not collected by pytest)::

    python bench/style_oracle.py      # bench/results/style_oracle.md

On astronaut in the style of china (style_common.CONTENT, STYLE) at 32², 300 evaluations each: the
hsc optimizer with its defaults (the probe estimator), the same with the exact 3 x 3 pixel blocks
(estimator ``exact``, n HVPs a refresh; refreshed every 30 and every 100 steps), the identity
control (damping 1e5 drowns the curvature: momentum SGD through the same code), L-BFGS and Adam.
Reported: the loss after 10, 30, 100 and 300 evaluations; what the best possible blocks would buy
per evaluation, whatever they cost.

Writes to bench/results/ (``--results DIR``: elsewhere): ``style_oracle.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

# style_common first: it puts the repository on sys.path for the imports of hsc
from style_common import (REFERENCE_EVALUATIONS, add_results_flag, config_with, loss_at_evaluations, loss_text,
                          make_objective, results_dir)
from conftest import command
from hsc.style.run import HSCSettings, RunConfig, run

SIZE = 32
CHECKPOINTS = (10, 30, 100, 300)  # evaluations


def oracle(results: Path) -> None:
    torch.set_num_threads(1)
    objective = make_objective(SIZE)
    budget = {"evaluations": REFERENCE_EVALUATIONS}
    runs = {"lbfgs": RunConfig(optimizer="lbfgs", **budget),
            "adam": RunConfig(optimizer="adam", **budget),
            "hsc probe": config_with({}, **budget),
            "hsc identity control": config_with({"damping": 1e5, "lr": 4.0}, **budget),
            **{f"hsc exact blocks, every {every}": config_with({"estimator": "exact", "update_every": every}, **budget)
               for every in (30, 100)}}
    rows = {}
    for name, config in runs.items():
        r = run(objective, config)
        rows[name] = {e: loss_at_evaluations(r, e) for e in CHECKPOINTS}
        print(f"  {name}: {rows[name]}", flush=True)
    lines = [f"# Exact pixel blocks vs the probe estimator, per evaluation ({SIZE}², not timed)", "",
             f"- hsc settings {dataclasses.asdict(HSCSettings())}; the exact rows swap the estimator "
             "(and the refresh interval) only",
             f"- command: `{command()}`", "",
             "| run | " + " | ".join(f"loss @{e}" if i == 0 else f"@{e}" for i, e in enumerate(CHECKPOINTS)) + " |",
             "|---|" + "---|" * len(CHECKPOINTS)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(loss_text(r[e]) for e in CHECKPOINTS) + " |")
    (results_dir(results) / "style_oracle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_results_flag(parser)
    oracle(parser.parse_args().results)


if __name__ == "__main__":
    main()
