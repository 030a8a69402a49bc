"""``hsc style``: neural style transfer with hsc, L-BFGS and Adam over the image's pixels.

Example::

    hsc style --content astronaut --style china --size 256 --optim hsc,lbfgs,adam --steps 300 -o out.png

With one optimizer it writes ``out.png``; with several ``out-<optimizer>.png`` each and
``out-side-by-side.png``; always ``out-loss.png`` (loss against seconds and evaluations) and
``metrics.json`` next to the image.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch

from .. import config
from .features import EXTRACTORS, make_extractor
from .images import BUNDLED, load_image, save_image
from .objective import LossWeights, StyleObjective
from ..optim import STEP_RULES, StepControl
from .run import INITS, OPTIMIZERS, HSCSettings, LBFGSSettings, Record, RunConfig, RunResult, run

DEFAULT_STEPS = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    h, w, r = HSCSettings(), LossWeights(), RunConfig()
    parser.add_argument("--content", default="astronaut",
                        help=f"content image: a file or one of {', '.join(sorted(BUNDLED))}")
    parser.add_argument("--style", default="china", help="style image: a file or a bundled name")
    parser.add_argument("--size", type=int, default=256, help="side of the square output in pixels")
    parser.add_argument("--optim", default="hsc", help=f"comma list of {OPTIMIZERS}")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int,
                        help=f"optimizer steps, L-BFGS iterations (default {DEFAULT_STEPS})")
    budget.add_argument("--evaluations", type=int, help="loss + gradient evaluations")
    budget.add_argument("--seconds", type=float, help="wall-clock seconds of optimisation")
    parser.add_argument("-o", "--out", default="style.png", help="output image (PNG or JPEG)")
    parser.add_argument("--init", choices=INITS, default=r.init, help="start from the content image or noise")
    parser.add_argument("--seed", type=int, default=r.seed, help="noise start and hsc's probe signs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--spectrum", action="store_true",
                        help="write <out>-spectrum.png: a histogram of hsc's pixel-block eigenvalues at the "
                             "last refresh (spectral modes)")
    f = parser.add_argument_group("objective")
    f.add_argument("--features", choices=EXTRACTORS, default="random",
                   help="random multi-scale network (offline) or VGG19 with --weights")
    f.add_argument("--weights", default="", help="VGG19 state_dict file for --features vgg19")
    f.add_argument("--feature-seed", type=int, default=0, help="seed of the random network")
    f.add_argument("--content-weight", type=float, default=w.content)
    f.add_argument("--style-weight", type=float, default=w.style)
    f.add_argument("--tv-weight", type=float, default=w.tv)
    f.add_argument("--range-weight", type=float, default=w.range, help="penalty on pixels outside [0, 1]")
    p = parser.add_argument_group("peers")
    p.add_argument("--adam-lr", type=float, default=r.adam_lr)
    p.add_argument("--lbfgs-history", type=int, default=r.lbfgs_history)
    g = parser.add_argument_group("hsc: momentum SGD on the preconditioned gradient")
    g.add_argument("--hsc-lr", type=float, default=h.lr, help=f"learning rate (default: {h.lr:g})")
    g.add_argument("--hsc-momentum", type=float, default=h.momentum,
                   help=f"heavy-ball momentum (default: {h.momentum:g})")
    g.add_argument("--hsc-step-control", choices=STEP_RULES + ("none",),
                   default=h.step_control.rule if h.step_control else "none",
                   help="trust: a step that raises the loss is undone and the step shrunk; armijo: "
                        "backtracking; none: every step at the full lr (default: %(default)s)")
    p = parser.add_argument_group("hsc: the preconditioner over the pixels (hsc.PreconditionerConfig)")
    config.add_arguments(p, h.preconditioner, skip=("block_size", "seed", "factor_power"),
                         notes={"scale": "an absolute mu is given per pixel, mu x H W",
                                "damping": "given per pixel, delta x H W",
                                "patch": "the blocks: b = 3 ph pw"})
    lb = LBFGSSettings()
    q = parser.add_argument_group("hsc-lbfgs: L-BFGS with the pixel blocks' M^-1 as initial inverse Hessian")
    q.add_argument("--hsc-lbfgs-history", type=int, default=lb.history, help=f"pairs kept (default: {lb.history})")
    q.add_argument("--hsc-lbfgs-keep-pairs", choices=("on", "off"), default="on" if lb.keep_pairs else "off",
                   help="keep the pairs across a refresh (default: %(default)s)")
    config.add_arguments(q, lb.preconditioner, prefix="hsc-lbfgs", skip=("block_size", "seed", "factor_power"),
                         notes={"update_every": "counts L-BFGS iterations", "patch": "the blocks: b = 3 ph pw"})


def build_configs(args: argparse.Namespace) -> List[RunConfig]:
    """One :class:`RunConfig` per optimizer named in ``--optim``."""
    names = [m.strip() for m in args.optim.split(",") if m.strip()]
    unknown = [m for m in names if m not in OPTIMIZERS]
    if not names or unknown:
        raise ValueError(f"hsc: --optim must name optimizers among {OPTIMIZERS}, got {args.optim!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"hsc: --optim must not repeat an optimizer, got {args.optim!r}")
    steps = args.steps if args.steps is not None or args.evaluations or args.seconds else DEFAULT_STEPS
    h, lb = HSCSettings(), LBFGSSettings()
    hsc = HSCSettings(lr=args.hsc_lr, momentum=args.hsc_momentum,
                      preconditioner=config.from_arguments(args, h.preconditioner),
                      step_control=None if args.hsc_step_control == "none" else StepControl(rule=args.hsc_step_control))
    hsc_lbfgs = LBFGSSettings(history=args.hsc_lbfgs_history, keep_pairs=args.hsc_lbfgs_keep_pairs == "on",
                              preconditioner=config.from_arguments(args, lb.preconditioner, prefix="hsc-lbfgs"))
    return [RunConfig(optimizer=m, steps=steps, evaluations=args.evaluations, seconds=args.seconds,
                      init=args.init, seed=args.seed, adam_lr=args.adam_lr,
                      lbfgs_history=args.lbfgs_history, hsc=hsc, hsc_lbfgs=hsc_lbfgs).validate()
            for m in names]


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
            f"{os.cpu_count()} cores, torch {torch.__version__}")


def format_table(results: Dict[str, RunResult]) -> str:
    """A markdown table: budget used and the final (clamped) loss and its terms, per optimizer."""
    lines = ["| optimizer | steps | evaluations | HVPs | seconds | final loss | content | style | tv |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        t = r.final_terms
        loss = f"{r.final_loss:.4g}" + (" DIVERGED" if r.diverged else "")
        lines.append(f"| {name} | {r.steps} | {r.evaluations} | {r.hvps} | {r.seconds:.1f} | "
                     f"{loss} | {t['content']:.3g} | {t['style']:.3g} | {t['tv']:.3g} |")
    return "\n".join(lines)


def _progress_bar(config: RunConfig, bar) -> Callable[[Record], None]:
    """Advances ``bar`` in the budget's unit (steps, evaluations or seconds) after each step."""
    last = {"steps": 0, "evaluations": 0, "seconds": 0.0}

    def advance(record: Record) -> None:
        done = {"steps": last["steps"] + 1, "evaluations": record.evaluations, "seconds": record.seconds}
        unit = "steps" if config.steps is not None else "evaluations" if config.evaluations else "seconds"
        bar.update(done[unit] - last[unit])
        last.update(done)
        bar.set_postfix(loss=f"{record.loss:.4g}", refresh=False)

    return advance


def output_paths(out: Path, names: List[str]) -> Dict[str, Path]:
    """Where each result goes: ``out`` itself for one optimizer, ``<stem>-<name><suffix>`` for several,
    plus ``loss``, ``side_by_side`` and ``metrics``."""
    suffix = out.suffix or ".png"
    stem = out.with_suffix("")
    paths = {n: (out.with_suffix(suffix) if len(names) == 1 else Path(f"{stem}-{n}{suffix}")) for n in names}
    paths["loss"] = Path(f"{stem}-loss.png")
    paths["side_by_side"] = Path(f"{stem}-side-by-side.png")
    paths["metrics"] = out.parent / "metrics.json"
    paths["spectrum"] = Path(f"{stem}-spectrum.png")
    return paths


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .plots import plot_loss, plot_side_by_side

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    weights = LossWeights(content=args.content_weight, style=args.style_weight, tv=args.tv_weight,
                          range=args.range_weight)
    try:  # a bad argument ends the command with its message, not a traceback
        configs = build_configs(args)
        content = load_image(args.content, args.size, "--content")
        style = load_image(args.style, args.size, "--style")
        extractor = make_extractor(args.features, seed=args.feature_seed, weights=args.weights)
        objective = StyleObjective(extractor, content, style, weights)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise SystemExit(str(err)) from err
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [c.optimizer for c in configs]
    paths = output_paths(out, names)

    results: Dict[str, RunResult] = {}
    for config in configs:
        total = config.steps or config.evaluations or config.seconds
        with tqdm(total=total, desc=config.optimizer, dynamic_ncols=True, mininterval=0.5,
                  unit="step" if config.steps else "eval" if config.evaluations else "s") as bar:
            results[config.optimizer] = run(objective, config, _progress_bar(config, bar))
        save_image(results[config.optimizer].image, str(paths[config.optimizer]))

    print(format_table(results))
    title = f"{args.content} in the style of {args.style}, {args.size}² ({args.features} features)"
    plot_loss(results, paths["loss"], title)
    written = [paths[n] for n in names] + [paths["loss"]]
    if len(names) > 1:
        plot_side_by_side(content, style, results, paths["side_by_side"], [title])
        written.append(paths["side_by_side"])
    if args.spectrum:
        spectra = results["hsc"].spectra if "hsc" in results else {}
        if spectra:
            from ..spectrum_plot import plot_spectra

            plot_spectra(spectra, paths["spectrum"], f"{title}: hsc's block eigenvalues at the last refresh")
            written.append(paths["spectrum"])
        else:
            print("no spectrum to draw: --spectrum needs an hsc run in a spectral mode (--hsc-mode)")
    report = {"content": args.content, "style": args.style, "size": args.size, "features": args.features,
              "feature_seed": args.feature_seed, "weights": dataclasses.asdict(weights),
              "machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "dtype": "float32", "runs": {n: r.to_dict() for n, r in results.items()}}
    paths["metrics"].write_text(json.dumps(finite_or_none(report), indent=1))
    written.append(paths["metrics"])
    print("wrote " + ", ".join(str(p) for p in written))
    diverged = [n for n, r in results.items() if r.diverged]
    if diverged:
        print(f"hsc style: DIVERGED: {', '.join(diverged)} (final loss not finite, or steps skipped for "
              "non-finite values; see metrics.json)", file=sys.stderr)
        return 1
    return 0


def finite_or_none(obj):
    """``obj`` with every non-finite float replaced by None, so that the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj
