"""``hsc gan``: train GANs with several optimizers and seeds, print a table, write metrics and pictures.

Example (the README's main job)::

    hsc gan --data ring8 --optim hsc,adam,acgd --seconds 20 --seeds 0,1,2 --out runs/gan-ring8
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .. import config
from .data import DATASETS, make_dataset
from .metrics import metric_names
from ..game import COUPLINGS, REGULARISERS, GameConfig
from .train import BASES, METHODS, PLAYERS, UPDATES, HSCOptions, RunResult, TrainConfig, Trainer

DEFAULT_SECONDS = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = HSCOptions()
    parser.add_argument("--data", choices=DATASETS, default="ring8")
    parser.add_argument("--optim", default="hsc,adam,acgd",
                        help=f"comma list of {METHODS}: hsc (Adam on each player's grafted M^-1 g), adam, "
                             "competitive (the coupled step with block curvature), acgd (cgds' ACGD)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, help=f"training seconds per run (default {DEFAULT_SECONDS:g})")
    budget.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    parser.add_argument("--out", default="runs/gan", help="output folder")
    parser.add_argument("--update", choices=UPDATES, default="simultaneous")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-every", type=float, default=None,
                        help="snapshot period: seconds (seconds budget) or steps (steps budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--checkpoint", action="store_true", help="save each run's final checkpoint")
    parser.add_argument("--spectrum", action="store_true",
                        help="write spectrum-hsc.png: histograms of each player's block eigenvalues at "
                             "the last refresh (spectral modes; the first seed's run)")
    g = parser.add_argument_group("hsc method: the step around each player's preconditioner")
    g.add_argument("--hsc-players", choices=PLAYERS, default=d.players,
                   help=f"which players are preconditioned (default: {d.players})")
    g.add_argument("--hsc-base", choices=BASES, default=d.base,
                   help=f"optimizer stepping on the preconditioned gradient (default: {d.base})")
    g.add_argument("--hsc-lr", type=float, default=d.lr, help=f"the base optimizer's lr (default: {d.lr:g})")
    g.add_argument("--hsc-momentum", type=float, default=d.momentum,
                   help=f"momentum of base sgd (default: {d.momentum:g})")
    g.add_argument("--hsc-graft", choices=("on", "off"), default="on" if d.graft else "off",
                   help="rescale each tensor's M^-1 g to its raw gradient's norm (default: "
                        f"{'on' if d.graft else 'off'})")
    p = parser.add_argument_group("hsc method: the preconditioner (hsc.PreconditionerConfig)")
    config.add_arguments(p, d.preconditioner, skip=("seed", "patch"))
    game = GameConfig()
    c = parser.add_argument_group("competitive method: the coupled step (hsc.CompetitiveHSC)")
    c.add_argument("--game-lr", type=float, default=game.lr,
                   help=f"step scale: the regulariser is lr M^-1 (default: {game.lr:g})")
    c.add_argument("--game-regulariser", choices=REGULARISERS, default=game.regulariser,
                   help="block: each player's block curvature; adam: ACGD's diagonal; identity: CGD's "
                        f"(default: {game.regulariser})")
    c.add_argument("--game-coupling", choices=COUPLINGS, default=game.coupling,
                   help="cg: solve the coupled step; ridge: one mixed product, no solve "
                        f"(default: {game.coupling})")
    c.add_argument("--game-cg-tol", type=float, default=game.cg_tol,
                   help=f"CG's relative residual (default: {game.cg_tol:g})")
    c.add_argument("--game-cg-max-iter", type=int, default=game.cg_max_iter,
                   help=f"CG's iteration cap (default: {game.cg_max_iter})")
    g2 = parser.add_argument_group("competitive method: each player's preconditioner (block regulariser)")
    config.add_arguments(g2, game.preconditioner, prefix="game", skip=("seed", "patch", "factor_power"))


def game_config(args: argparse.Namespace) -> GameConfig:
    d = GameConfig()
    return GameConfig(lr=args.game_lr, regulariser=args.game_regulariser, coupling=args.game_coupling,
                      cg_tol=args.game_cg_tol, cg_max_iter=args.game_cg_max_iter,
                      preconditioner=config.from_arguments(args, d.preconditioner, prefix="game"))


def hsc_options(args: argparse.Namespace) -> HSCOptions:
    d = HSCOptions()
    return HSCOptions(players=args.hsc_players, base=args.hsc_base, lr=args.hsc_lr,
                      momentum=args.hsc_momentum, graft=args.hsc_graft == "on",
                      preconditioner=config.from_arguments(args, d.preconditioner))


def run_configs(configs: Sequence[TrainConfig], out: Optional[Path] = None, checkpoint: bool = False,
                show_progress: bool = True) -> List[RunResult]:
    """Runs ``configs`` one after the other under one tqdm bar over the total budget."""
    from tqdm import tqdm

    total = sum(c.steps if c.steps is not None else c.seconds for c in configs)
    unit = "step" if configs[0].steps is not None else "s"
    results = []
    with tqdm(total=total, unit=unit, disable=not show_progress, dynamic_ncols=True, mininterval=0.5,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}]") as bar:
        for cfg in configs:
            bar.set_description(f"{cfg.method} seed {cfg.seed}")
            trainer = Trainer(cfg)
            budget = cfg.steps if cfg.steps is not None else cfg.seconds
            done = [0.0]

            def advance(amount: float) -> None:  # the last step overshoots a seconds budget: clamp
                amount = min(amount, budget - done[0])
                done[0] += amount
                bar.update(amount)

            result = trainer.run(advance)
            if checkpoint and out is not None:
                trainer.save(out / f"checkpoint-{cfg.method}-seed{cfg.seed}.pt")
            results.append(result)
    return results


def summarise(runs_by_method: Dict[str, List[RunResult]], keys: Sequence[str]) -> dict:
    """method -> metric -> {mean, std, values} over seeds (plus steps and seconds)."""
    out = {}
    for method, runs in runs_by_method.items():
        row = {}
        for key in (*keys, "steps", "seconds"):
            values = [float(r.final[key]) if key in r.final else float(getattr(r, key)) for r in runs]
            row[key] = {"mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
        out[method] = row
    return out


def format_table(summary: dict, names: dict) -> str:
    """A markdown table, mean ± std over seeds."""
    cols = list(names) + ["steps"]
    header = ["method"] + [names[c][0] if c in names else c for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in summary.items():
        cells = [method] + [f"{row[c]['mean']:.{0 if c == 'steps' else 2}f} ± {row[c]['std']:.{0 if c == 'steps' else 2}f}"
                            for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), " \
           f"{os.cpu_count()} cores, torch {torch.__version__}"


def build_configs(args: argparse.Namespace) -> List[TrainConfig]:
    methods = [m.strip() for m in args.optim.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"hsc gan: unknown optimizer {m!r}; expected some of {METHODS}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    seconds = None if args.steps is not None else (args.seconds or DEFAULT_SECONDS)
    eval_kw = {}
    if args.eval_every is not None:
        eval_kw = {"eval_every_steps": int(args.eval_every)} if args.steps is not None \
            else {"eval_every_seconds": args.eval_every}
    return [TrainConfig(data=args.data, method=m, seed=s, steps=args.steps, seconds=seconds,
                        update=args.update, batch_size=args.batch_size, hsc=hsc_options(args),
                        game=game_config(args), **eval_kw)
            for m in methods for s in seeds]


def main(args: argparse.Namespace) -> int:
    from .plots import plot_curves, plot_samples

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = build_configs(args)
    results = run_configs(configs, out, checkpoint=args.checkpoint)
    runs_by_method: Dict[str, List[RunResult]] = {}
    for r in results:
        runs_by_method.setdefault(r.config.method, []).append(r)
    dataset = make_dataset(args.data)
    names = metric_names(dataset)
    summary = summarise(runs_by_method, list(names))
    table = format_table(summary, names)
    print(table)
    if not dataset.is_mixture:
        print(f"digits classifier held-out accuracy: {results[0].final['classifier_accuracy']:.1f} %")
    report = {"data": args.data, "machine": machine(), "summary": summary,
              "configs": [c.to_dict() for c in configs], "runs": [r.to_dict() for r in results]}
    (out / "metrics.json").write_text(json.dumps(report, indent=1, default=_json_default))
    for method, runs in runs_by_method.items():
        plot_samples(runs, dataset, out / f"samples-{method}.png", f"{args.data}: {method}")
    plot_curves(runs_by_method, dataset, out / "metrics-vs-time.png")
    written = "metrics.json, samples-*.png, metrics-vs-time.png"
    if args.spectrum:
        from ..spectrum_plot import plot_spectra

        spectra = next((r.spectra for r in runs_by_method.get("hsc", []) if r.spectra), None)
        if spectra is None:
            print("no spectrum to draw: --spectrum needs an hsc run in a spectral mode (--hsc-mode)")
        else:
            plot_spectra(spectra, out / "spectrum-hsc.png", f"{args.data}: block eigenvalues at the last refresh")
            written += ", spectrum-hsc.png"
    print(f"wrote {out}/{written}")
    return 0


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(type(obj))
