"""``hsc gan``: train GANs with several optimizers and seeds, print a table, write metrics and pictures.

Example (the README's main job)::

    hsc gan --data ring8 --optim hsc,competitive,adam,acgd --seconds 20 --seeds 0,1,2 --out runs/gan-ring8

Every field of :class:`~hsc.gan.train.TrainConfig` that a run may change has a flag generated from
it (``--batch-size``, ``--adam-lr``, ...; ``--hsc-*`` for the hsc method and its preconditioner,
``--game-*`` for the competitive step), with the field's help.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .. import config
from ..apps import add_budget, comma_list, machine, mean_std, progress_bar, write_json
from .data import DATASETS
from .metrics import PROTOCOLS
from .train import METHODS, RunResult, TrainConfig, Trainer, default_config

DEFAULT_SECONDS = 20.0
# Fields with no flag of their own: the run's identity and budget come from --data, --optim,
# --seeds, --steps / --seconds and --eval-every; a player's probe seed from the run's seed; the
# GAN's networks have no image-like tensors to cut into patches.
SKIPPED = ("seed", "patch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=tuple(DATASETS), default="ring8",
                        help="; ".join(f"{k}: {v.help}" + (f" (its own settings: {_settings(v.settings)})"
                                                            if v.settings else "") for k, v in DATASETS.items()))
    parser.add_argument("--optim", default="hsc,adam,acgd",
                        help=f"comma list of {METHODS}: hsc (Adam on each player's grafted M^-1 g), adam, "
                             "competitive (the coupled step with block curvature), acgd (cgds' ACGD)")
    add_budget(parser, {"seconds": (float, "training seconds per run (default: 20)"),
                        "steps": (int, "training steps per run")})
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    parser.add_argument("--out", default="runs/gan", help="output folder")
    parser.add_argument("--eval-every", type=float, default=None,
                        help="snapshot period: seconds (seconds budget) or steps (steps budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--checkpoint", action="store_true", help="save each run's final checkpoint")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over the ranks torchrun starts (methods adam and hsc): "
                             "torchrun --nproc_per_node=2 -m hsc gan --distributed ...; gloo on the CPU, "
                             "NCCL on GPUs (one per rank); rank 0 reports and writes")
    parser.add_argument("--spectrum", action="store_true",
                        help="write spectrum-hsc.png: histograms of each player's block eigenvalues at "
                             "the last refresh (spectral modes; the first seed's run)")
    # Flags change only what they name, on top of the data set's settings (default_config).
    config.add_arguments(parser, TrainConfig(), prefix="", skip=SKIPPED, only_given=True)


def _settings(settings: dict) -> str:
    return ", ".join(f"{k} {config.show(v)}" for k, v in settings.items())


def build_configs(args: argparse.Namespace) -> List[TrainConfig]:
    try:
        methods = comma_list(args.optim, "--optim", METHODS)
        seeds = comma_list(args.seeds, "--seeds", parse=int)
    except ValueError as err:
        raise SystemExit(f"hsc gan: {err}") from None
    seconds = None if args.steps is not None else (args.seconds or DEFAULT_SECONDS)
    eval_kw = {}
    if args.eval_every is not None:
        eval_kw = {"eval_every_steps": int(args.eval_every)} if args.steps is not None \
            else {"eval_every_seconds": args.eval_every}
    base = config.from_arguments(args, default_config(args.data, steps=args.steps, seconds=seconds, **eval_kw),
                                 prefix="")
    return [config.replace(base, method=m, seed=s) for m in methods for s in seeds]


def run_configs(configs: Sequence[TrainConfig], out: Optional[Path] = None, checkpoint: bool = False,
                show_progress: bool = True, process_group=None) -> List[RunResult]:
    """Runs ``configs`` one after the other under one progress bar over the total budget
    (data-parallel over ``process_group`` when given)."""
    total = sum(c.steps if c.steps is not None else c.seconds for c in configs)
    unit = "step" if configs[0].steps is not None else "s"
    results = []
    with progress_bar(total, unit, disable=not show_progress) as bar:
        for cfg in configs:
            bar.set_description(f"{cfg.method} seed {cfg.seed}")
            trainer = Trainer(cfg, process_group)
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
    return {method: {key: mean_std([float(r.final[key]) if key in r.final else float(getattr(r, key))
                                    for r in runs]) for key in (*keys, "steps", "seconds")}
            for method, runs in runs_by_method.items()}


def format_table(summary: dict, names: dict, reference: Optional[dict] = None) -> str:
    """A markdown table, mean ± std over seeds; ``reference``: a last row of real samples' figures."""
    cols = list(names) + ["steps"]
    header = ["method"] + [names[c][0] if c in names else c for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in summary.items():
        cells = [method] + [f"{row[c]['mean']:.{0 if c == 'steps' else 2}f} ± {row[c]['std']:.{0 if c == 'steps' else 2}f}"
                            for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    if reference:
        lines.append("| real (held out) | " + " | ".join(f"{reference[c]:.2f}" if c in reference else ""
                                                         for c in cols) + " |")
    return "\n".join(lines)


def _join_ranks(configs: List[TrainConfig]):
    """Joins the process group torchrun describes in the environment: gloo for CPU runs, NCCL with
    one GPU per rank (its local rank) for CUDA runs. Returns (group, rank, configs on this rank's
    device)."""
    import os

    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise SystemExit("hsc gan: --distributed runs under torchrun (torchrun --nproc_per_node=2 -m hsc gan "
                         "--distributed ...)")
    cuda = configs[0].device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        configs = [config.replace(c, device=f"cuda:{local}") for c in configs]
    return dist.group.WORLD, dist.get_rank(), configs


def save_sample_grids(runs_by_method: Dict[str, List[RunResult]], dataset, protocol, out: Path, stem: str) -> None:
    """``<stem>-<method>.png`` (spaces as underscores): each method's samples, one panel per seed."""
    from .plots import plot_samples

    for method, runs in runs_by_method.items():
        plot_samples(runs, dataset, protocol, out / f"{stem}-{method.replace(' ', '_')}.png",
                     f"{dataset.name}: {method}")


def main(args: argparse.Namespace) -> int:
    from .plots import plot_curves

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    configs = build_configs(args)
    group, rank = None, 0
    if args.distributed:
        group, rank, configs = _join_ranks(configs)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    try:
        results = run_configs(configs, out, checkpoint=args.checkpoint, show_progress=rank == 0,
                              process_group=group)
        if group is not None:
            import torch.distributed as dist

            # every rank's last sends received before any rank tears the group down (a gloo rank
            # that exits while its peer still reads from it can abort: seen once in CI)
            dist.barrier(group)
    finally:
        if group is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank != 0:
        return 0
    runs_by_method: Dict[str, List[RunResult]] = {}
    for r in results:
        runs_by_method.setdefault(r.config.method, []).append(r)
    spec = DATASETS[args.data]
    dataset, protocol = spec.load(), PROTOCOLS[spec.protocol]
    summary = summarise(runs_by_method, list(protocol.names))
    reference = protocol.reference(dataset) if dataset.held_out is not None else None
    print(format_table(summary, protocol.names, reference))
    if "classifier_accuracy" in results[0].final:
        print(f"classifier held-out accuracy: {results[0].final['classifier_accuracy']:.1f} %")
    report = {"data": args.data, "machine": machine(), "summary": summary, "reference": reference,
              "configs": [c.to_dict() for c in configs], "runs": [r.to_dict() for r in results]}
    write_json(out / "metrics.json", report)
    save_sample_grids(runs_by_method, dataset, protocol, out, "samples")
    plot_curves(runs_by_method, protocol, out / "metrics-vs-time.png")
    written = "metrics.json, samples-*.png, metrics-vs-time.png"
    if args.spectrum:
        from ..apps import plot_spectra

        spectra = next((r.spectra for r in runs_by_method.get("hsc", []) if r.spectra), None)
        if spectra is None:
            print("no spectrum to draw: --spectrum needs an hsc run in a spectral mode (--hsc-mode)")
        else:
            plot_spectra(spectra, out / "spectrum-hsc.png", f"{args.data}: block eigenvalues at the last refresh")
            written += ", spectrum-hsc.png"
    print(f"wrote {out}/{written}")
    return 0
