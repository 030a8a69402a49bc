"""Style-transfer robustness: every optimizer's defaults on every bundled pair, converged or not.

Plain script (not collected by pytest)::

    python bench/style_robustness.py            # 4 photographs x 5 styles at 64², 128², 256²
    python bench/style_robustness.py --smoke    # one pair at 32², 20 evaluations, into a temporary folder

Every optimizer the CLI offers (hsc.style.run.OPTIMIZERS), with its defaults, on every bundled
photograph in the style of every bundled texture or painting at 64², 128² and 256², 100
evaluations each (L-BFGS and hsc-lbfgs: that many evaluations; the others one per step). A run
has converged when it did not diverge (hsc.style.run: final loss finite, no step skipped) and its
final loss is below half the start's. tests/test_style.py runs the same check in small.

Writes to bench/results/ (``--results DIR``: elsewhere; ``--smoke`` without ``--results``: a new
temporary folder): ``style_robustness.json``, ``style_robustness.md`` and
``style_robustness_<content>_<style>_<size>.png`` (every optimizer's image for astronaut and
chelsea in the style of china and brick).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Dict, Sequence

import torch

# style_common first: it puts the repository on sys.path for the imports of hsc
from style_common import OPTIMIZERS, RESULTS, add_results_flag, make_objective, results_dir
from conftest import machine
from hsc.apps import write_json
from hsc.style.images import load_image
from hsc.style.plots import plot_side_by_side
from hsc.style.run import RunConfig, RunResult, run

# The matrix: every bundled photograph in the style of every bundled texture or painting.
CONTENTS = ("astronaut", "chelsea", "coffee", "rocket")
STYLES = ("brick", "grass", "gravel", "china", "flower")
SIZES = (64, 128, 256)
EVALUATIONS = 100
PICTURED = {"contents": ("astronaut", "chelsea"), "styles": ("china", "brick")}
# --smoke: one pictured pair, small and short (checks the script, measures nothing)
SMOKE = {"contents": ("astronaut",), "styles": ("china",), "sizes": (32,), "evaluations": 20}


def robustness(results: Path, contents: Sequence[str] = CONTENTS, styles: Sequence[str] = STYLES,
               sizes: Sequence[int] = SIZES, evaluations: int = EVALUATIONS) -> None:
    torch.set_num_threads(1)
    results_dir(results)
    cases = {}
    failures = []
    for size in sizes:
        pictures: Dict[str, Dict[str, RunResult]] = {}
        for content in contents:
            for style in styles:
                objective = make_objective(size, content, style)
                with torch.no_grad():
                    start = float(objective(objective.content))
                row = {}
                for name in OPTIMIZERS:
                    r = run(objective, RunConfig(optimizer=name, evaluations=evaluations))
                    converged = not r.diverged and r.final_loss < 0.5 * start
                    row[name] = {"final_loss": r.final_loss, "start_loss": start, "diverged": r.diverged,
                                 "converged": converged, "seconds": r.seconds, "evaluations": r.evaluations,
                                 "hvps": r.hvps}
                    if not converged:
                        failures.append(f"{content}/{style} {size}² {name}")
                    if style in PICTURED["styles"] and content in PICTURED["contents"]:
                        pictures.setdefault(f"{content}/{style}", {})[name] = r
                cases[f"{content}/{style} {size}²"] = row
                print(f"  {content}/{style} {size}²: " + ", ".join(
                    f"{n} {v['final_loss']:.4g}{'' if v['converged'] else ' FAILED'}" for n, v in row.items()),
                    flush=True)
        for pair, pictured in pictures.items():
            content, style = pair.split("/")
            plot_side_by_side(make_objective(size, content, style).content, load_image(style, size), pictured,
                              results / f"style_robustness_{content}_{style}_{size}.png",
                              [f"{pair}, {size}², {evaluations} evaluations, every optimizer's defaults"])
    report = {"machine": machine(), "evaluations": evaluations, "sizes": tuple(sizes),
              "contents": tuple(contents), "styles": tuple(styles), "cases": cases, "failures": failures}
    write_json(results / "style_robustness.json", report)
    m = report["machine"]
    lines = ["# Style transfer robustness: every optimizer's defaults on every bundled pair", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, one torch thread; command: "
             f"`{m['command']}`",
             f"- {len(contents)} photographs x {len(styles)} styles x sizes {tuple(sizes)}, "
             f"{evaluations} evaluations, random features, start from the content image",
             "- converged: no divergence (final loss finite, no step skipped) and final loss below half "
             "the start's", "",
             f"**{len(failures)} of {len(cases) * len(OPTIMIZERS)} runs did not converge**"
             + (": " + ", ".join(failures) if failures else "."), "",
             "| pair | size | start loss | " + " | ".join(f"{n} final" for n in OPTIMIZERS) + " |",
             "|---|---|---|" + "---|" * len(OPTIMIZERS)]
    for key, row in cases.items():
        pair, size = key.rsplit(" ", 1)
        first = next(iter(row.values()))
        lines.append(f"| {pair} | {size} | {first['start_loss']:.4g} | " + " | ".join(
            f"{v['final_loss']:.4g}" + ("" if v["converged"] else " **failed**") for v in row.values()) + " |")
    lines += ["", "Pictures: `style_robustness_<content>_<style>_<size>.png` (astronaut and chelsea in the style "
              "of china and brick, every optimizer)."]
    (results / "style_robustness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help=f"one pair at 32², {SMOKE['evaluations']} evaluations, to check the script "
                        "(into a temporary folder unless --results names one)")
    add_results_flag(parser)
    args = parser.parse_args()
    if not args.smoke:
        robustness(args.results)
        return
    results = args.results
    if results.resolve() == RESULTS.resolve():
        results = Path(tempfile.mkdtemp(prefix="style_robustness_smoke_"))
    robustness(results, **SMOKE)
    print(f"smoke run: wrote {results}")


if __name__ == "__main__":
    main()
