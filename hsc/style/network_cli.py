"""``hsc style-net``: train a stylising network once per style, then stylise any photograph in one pass.

    hsc style-net train --style flower --optim hsc,adam --seconds 600 --out runs/style-net
    hsc style-net apply --checkpoint runs/style-net/flower-hsc-seed0.pt --input photo.jpg -o stylised.png

``train`` writes, per optimizer, a checkpoint (``<style>-<optimizer>-seed<s>.pt``), and for the
whole command ``metrics.json`` (the held-out loss against training seconds, per run),
``held-out-loss.png`` and ``held-out.png`` (the held-out photographs and each network's
stylisation side by side). A run that diverges says so and the command exits with status 1.
``apply`` writes the stylised image and prints the time per image.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from .. import config
from ..apps import add_budget, comma_list, machine, progress_bar, write_json
from .images import BUNDLED, STYLES, load_image, read_image, save_image
from .network_train import METHODS, NetConfig, NetRunResult, NetTrainer, load_network

DEFAULT_SECONDS = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train stylising networks; checkpoints, held-out loss, pictures")
    train.add_argument("--style", default="flower", help=f"style image: a file or a bundled name ({', '.join(STYLES)})")
    train.add_argument("--optim", default="hsc,adam", help=f"comma list of {METHODS}")
    add_budget(train, {"seconds": (float, f"training seconds per run (default {DEFAULT_SECONDS:g})"),
                       "steps": (int, "training steps per run")})
    train.add_argument("--seeds", default="0", help="comma list of seeds")
    train.add_argument("--out", default="runs/style-net", help="output folder")
    train.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    config.add_arguments(train, NetConfig(), prefix="", skip=("seed",))
    apply = sub.add_parser("apply", help="stylise a photograph with a trained network")
    apply.add_argument("--checkpoint", required=True, help="a checkpoint written by train")
    apply.add_argument("--input", required=True, help=f"the photograph: a file or a bundled name ({', '.join(sorted(BUNDLED))})")
    apply.add_argument("--size", type=int, default=None,
                       help="resize and centre-crop to this side first (default: the photograph's own size, "
                            "cropped to multiples of 4)")
    apply.add_argument("-o", "--out", default="stylised.png", help="output image")
    apply.add_argument("--repeats", type=int, default=5, help="timed passes (the median is printed)")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return train(args) if args.action == "train" else apply(args)


def train(args: argparse.Namespace) -> int:
    try:
        methods = comma_list(args.optim, "--optim", METHODS)
        seeds = comma_list(args.seeds, "--seeds", parse=int)
        seconds = None if args.steps is not None else (args.seconds or DEFAULT_SECONDS)
        base = config.from_arguments(args, NetConfig(style=args.style, steps=args.steps, seconds=seconds), prefix="")
        configs = [config.replace(base, method=m, seed=s).validate() for s in seeds for m in methods]
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from err
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: List[NetRunResult] = []
    trainers: Dict[str, NetTrainer] = {}
    total = sum(c.steps if c.steps is not None else c.seconds for c in configs)
    with progress_bar(total, "step" if configs[0].steps is not None else "s") as bar:
        for cfg in configs:
            bar.set_description(f"{cfg.method} seed {cfg.seed}")
            try:
                trainer = NetTrainer(cfg)
            except (ValueError, FileNotFoundError) as err:
                raise SystemExit(str(err)) from err
            budget, done = (cfg.steps if cfg.steps is not None else cfg.seconds), [0.0]

            def advance(amount: float) -> None:
                amount = min(amount, budget - done[0])
                done[0] += amount
                bar.update(amount)

            results.append(trainer.run(advance))
            trainer.save(out / f"{Path(cfg.style).stem}-{cfg.method}-seed{cfg.seed}.pt")
            trainers.setdefault(cfg.method, trainer)
    print(format_table(results))
    from .plots import plot_held_out_loss, plot_stylised

    plot_held_out_loss(results, out / "held-out-loss.png", f"style {args.style}: held-out loss")
    first = next(iter(trainers.values()))
    style_image = load_image(args.style, first.config.eval_size, "--style")
    plot_stylised(first.held_out, style_image, {m: t.stylise(t.held_out) for m, t in trainers.items()},
                  out / "held-out.png", f"held-out photographs in the style of {args.style} (first seed)")
    write_json(out / "metrics.json", {"style": args.style, "machine": machine(),
                                      "configs": [c.to_dict() for c in configs],
                                      "runs": [r.to_dict() for r in results]})
    print(f"wrote {out}/metrics.json, held-out-loss.png, held-out.png and the checkpoints")
    diverged = [f"{r.config.method} seed {r.config.seed}" for r in results if r.diverged]
    if diverged:
        print(f"hsc style-net: DIVERGED: {', '.join(diverged)} (held-out loss not finite, or steps skipped for "
              "non-finite values; see metrics.json)", file=sys.stderr)
        return 1
    return 0


def format_table(results: List[NetRunResult]) -> str:
    lines = ["| optimizer | seed | steps | seconds | held-out loss: start | final |", "|---|---|---|---|---|---|"]
    for r in results:
        flag = " DIVERGED" if r.diverged else ""
        lines.append(f"| {r.config.method} | {r.config.seed} | {r.steps} | {r.seconds:.1f} | "
                     f"{r.history[0].held_out_loss:.4g} | {r.final_loss:.4g}{flag} |")
    return "\n".join(lines)


def apply(args: argparse.Namespace) -> int:
    try:
        net = load_network(args.checkpoint)
        photo = load_image(args.input, args.size, "--input") if args.size else read_image(args.input, "--input")
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from err
    h, w = photo.shape[-2:]
    photo = photo[..., : h - h % 4, : w - w % 4]
    times = []
    with torch.no_grad():
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            stylised = net(photo)
            times.append(time.perf_counter() - t0)
    save_image(stylised, args.out)
    times.sort()
    print(f"stylised {args.input} ({photo.shape[-2]}x{photo.shape[-1]}) in {1000 * times[len(times) // 2]:.1f} ms "
          f"a pass (median of {len(times)}, {torch.get_num_threads()} threads); wrote {args.out}")
    return 0
