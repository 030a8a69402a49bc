"""What the style-transfer studies share: the pairs, the objective, the L-BFGS reference and the
readings of a run's history. Not a script; each study is one::

    python bench/style_benchmark.py      # the benchmark, time to L-BFGS's loss: style.{md,json,png}
    python bench/style_robustness.py     # every optimizer's defaults on every bundled pair: style_robustness.*
    python bench/style_probes.py         # coloured vs plain probes against exact blocks at 32²: style_probes.md
    python bench/style_sweep.py          # the hsc settings grid at 128²: style_sweep.{md,json}
    python bench/style_lbfgs_grid.py     # the hsc-lbfgs settings grid over the pairs: style_lbfgs_grid_<size>.*
    python bench/style_oracle.py         # exact pixel blocks against the probe estimator at 32²: style_oracle.md

Every study runs on one torch thread, with the random multi-scale features and the default loss
weights, starting from the content image, in float32. Each writes to ``bench/results/`` unless
``--results DIR`` names another folder (a quick check must not overwrite the committed results);
the command recorded in a report is the one that ran.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hsc import config  # noqa: E402
from hsc.style.features import make_extractor  # noqa: E402
from hsc.style.images import load_image  # noqa: E402
from hsc.style.objective import LossWeights, StyleObjective  # noqa: E402
from hsc.style.run import OPTIMIZERS as REGISTRY  # noqa: E402
from hsc.style.run import RunConfig, RunResult, run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONTENT, STYLE = "astronaut", "china"  # the pair of the sweeps, the oracle and the Hessian study
PAIRS = [("astronaut", "china"), ("chelsea", "flower"), ("coffee", "brick")]
# Every optimizer of hsc.style.run, in the reports' order (one registered later comes last).
ORDER = ("lbfgs", "hsc-lbfgs", "hsc", "adam")
OPTIMIZERS = tuple(n for n in ORDER if n in REGISTRY) + tuple(n for n in REGISTRY if n not in ORDER)
REFERENCE_EVALUATIONS = 300  # L-BFGS's run, whose loss is the target
TIME_FACTOR = 3.0  # the others run this many times L-BFGS's wall-clock


def add_results_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder for the reports (default: bench/results; give another for a quick check)")


def results_dir(path: Path) -> Path:
    """``path``, created if missing."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_objective(size: int, content: str = CONTENT, style: str = STYLE) -> StyleObjective:
    """The loss of ``content`` in the style of ``style`` at ``size``² (random features, default weights)."""
    return StyleObjective(make_extractor("random"), load_image(content, size, "--content"),
                          load_image(style, size, "--style"), LossWeights())


def config_with(changes: dict, **budget) -> RunConfig:
    """An hsc run with ``changes`` by field name: RunConfig's own (``optimizer``, ``adam_lr``), or
    those of its HSCSettings and their preconditioner (``hsc.config.replace`` routes each name to
    the first nested config that has it: ``hsc`` before ``hsc_lbfgs``)."""
    return config.replace(RunConfig(optimizer="hsc", **budget), **changes)


def warm_up(objective: StyleObjective) -> None:
    """An untimed run of every optimizer first (first-call costs: vmap, oneDNN kernels)."""
    for name in OPTIMIZERS:
        run(objective, RunConfig(optimizer=name, steps=3))


def reference(objective: StyleObjective) -> RunResult:
    """L-BFGS's run of REFERENCE_EVALUATIONS evaluations: its last loss is the target."""
    return run(objective, RunConfig(optimizer="lbfgs", evaluations=REFERENCE_EVALUATIONS))


def time_to(result: RunResult, target: float) -> Optional[dict]:
    """The first record at or below ``target``: seconds, evaluations, HVPs."""
    for r in result.history:
        if r.loss <= target:
            return {"seconds": r.seconds, "evaluations": r.evaluations, "hvps": r.hvps}
    return None


def loss_at_seconds(result: RunResult, seconds: float) -> float:
    """The loss of the last record within ``seconds``."""
    within = [r.loss for r in result.history if r.seconds <= seconds]
    return within[-1] if within else float("nan")


def loss_at_evaluations(result: RunResult, evaluations: int) -> Optional[float]:
    """The loss of the first record with at least ``evaluations`` evaluations (None: the run stopped before)."""
    return next((h.loss for h in result.history if h.evaluations >= evaluations), None)


def loss_text(value: Optional[float]) -> str:
    """A loss to 4 decimals, or ``diverged`` when it is missing or not finite."""
    return "diverged" if value is None or value != value or value in (float("inf"), float("-inf")) \
        else f"{value:.4f}"
