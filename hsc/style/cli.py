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
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch

from .. import config
from ..apps import add_budget, comma_list, machine, progress_bar, write_json
from .features import EXTRACTORS, make_extractor
from .images import BUNDLED, load_image, save_image
from .objective import LossWeights, StyleObjective
from .run import OPTIMIZERS, Record, RunConfig, RunResult, run

DEFAULT_STEPS = 300
# No flags of their own: b is 3 ph pw (from --hsc-patch); the probe seed is --seed; factor_power
# is the coupled solve's (hsc.game), not a step's.
SKIPPED = ("block_size", "seed", "factor_power")
NOTES = {"hsc.preconditioner.scale": "an absolute mu is given per pixel, mu x H W",
         "hsc.preconditioner.damping": "given per pixel, delta x H W",
         "patch": "the blocks: b = 3 ph pw",
         "hsc_lbfgs.preconditioner.update_every": "counts L-BFGS iterations"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--content", default="astronaut",
                        help=f"content image: a file or one of {', '.join(sorted(BUNDLED))}")
    parser.add_argument("--style", default="china", help="style image: a file or a bundled name")
    parser.add_argument("--size", type=int, default=256, help="side of the square output in pixels")
    parser.add_argument("--optim", default="hsc", help=f"comma list of {tuple(OPTIMIZERS)}")
    add_budget(parser, {"steps": (int, f"optimizer steps, L-BFGS iterations (default {DEFAULT_STEPS})"),
                        "evaluations": (int, "loss + gradient evaluations"),
                        "seconds": (float, "wall-clock seconds of optimisation")})
    parser.add_argument("-o", "--out", default="style.png", help="output image (PNG or JPEG)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--spectrum", action="store_true",
                        help="write <out>-spectrum.png: a histogram of hsc's pixel-block eigenvalues at the "
                             "last refresh (spectral modes)")
    f = parser.add_argument_group("objective")
    f.add_argument("--features", choices=EXTRACTORS, default="random",
                   help="random multi-scale network (offline) or VGG19 with --weights")
    f.add_argument("--weights", default="", help="VGG19 state_dict file for --features vgg19")
    f.add_argument("--feature-seed", type=int, default=0, help="seed of the random network")
    config.add_arguments(f, LossWeights(), prefix="")
    config.add_arguments(parser, RunConfig(), prefix="", skip=SKIPPED, notes=NOTES)


def build_configs(args: argparse.Namespace) -> List[RunConfig]:
    """One :class:`RunConfig` per optimizer named in ``--optim``."""
    names = comma_list(args.optim, "--optim", tuple(OPTIMIZERS))
    steps = args.steps if args.steps is not None or args.evaluations or args.seconds else DEFAULT_STEPS
    base = config.from_arguments(args, RunConfig(steps=steps, evaluations=args.evaluations, seconds=args.seconds),
                                 prefix="")
    return [config.replace(base, optimizer=m).validate() for m in names]


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
    from .plots import plot_loss, plot_side_by_side

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    weights = config.from_arguments(args, LossWeights(), prefix="")
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
    for cfg in configs:
        total = cfg.steps or cfg.evaluations or cfg.seconds
        with progress_bar(total, "step" if cfg.steps else "eval" if cfg.evaluations else "s", cfg.optimizer) as bar:
            results[cfg.optimizer] = run(objective, cfg, _progress_bar(cfg, bar))
        save_image(results[cfg.optimizer].image, str(paths[cfg.optimizer]))

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
            from ..apps import plot_spectra

            plot_spectra(spectra, paths["spectrum"], f"{title}: hsc's block eigenvalues at the last refresh")
            written.append(paths["spectrum"])
        else:
            print("no spectrum to draw: --spectrum needs an hsc run in a spectral mode (--hsc-mode)")
    report = {"content": args.content, "style": args.style, "size": args.size, "features": args.features,
              "feature_seed": args.feature_seed, "weights": dataclasses.asdict(weights),
              "machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "dtype": "float32", "runs": {n: r.to_dict() for n, r in results.items()}}
    write_json(paths["metrics"], report)
    written.append(paths["metrics"])
    print("wrote " + ", ".join(str(p) for p in written))
    diverged = [n for n, r in results.items() if r.diverged]
    if diverged:
        print(f"hsc style: DIVERGED: {', '.join(diverged)} (final loss not finite, or steps skipped for "
              "non-finite values; see metrics.json)", file=sys.stderr)
        return 1
    return 0
