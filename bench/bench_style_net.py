"""Stylising networks: hsc against Adam at equal wall-clock, and one pass against pixel optimisation.

Plain script (not collected by pytest)::

    python bench/bench_style_net.py                       # bench/results/style_net.{md,json,png}
    python bench/bench_style_net.py --seconds 60 --seeds 1 --styles flower --report style_net_quick   # a quick look
    python bench/bench_style_net.py --robustness          # style_net_robustness.{md,json}
    python bench/bench_style_net.py --markdown-only       # style_net.md again from style_net.json
    python bench/bench_style_net.py --more-seeds 1 --seconds 300   # one more seed added to style_net.json
    python bench/bench_style_net.py --styles china,brick --add     # those styles measured again in style_net.json
    python bench/bench_style_net.py --sweep refresh --seconds 150 --seeds 1 --styles flower,brick   # style_net_sweep_flower_brick.md
    python bench/bench_style_net.py --sweep estimator --seconds 150 --seeds 1   # style_net_sweep_estimator_flower_china_brick.md

The benchmark: ``--styles`` (default flower, china, brick) x ``--seeds`` (default 3) x {adam, hsc},
each run ``--seconds`` (default 300) of training at 128² crops, batch 4, the network's defaults
(hsc style-net train's), one torch thread per run, ``--workers`` runs at a time (default 2),
seed-major so that a change in the machine's load hits both methods alike. Per style it reports:
the held-out loss each method ends at (mean ± std over seeds); the seconds hsc takes to reach
Adam's final held-out loss (mean over seeds of the first snapshot at or below Adam's mean final
loss) divided by Adam's budget (target: at most 0.7); and, for the first seed's networks, the time
of one pass over a held-out photograph at 256² against the time torch.optim.LBFGS (strong Wolfe,
history 100, the pixel objective of hsc style) takes to bring that photograph's loss down to the
network's (also one thread). Where the networks average their weights (``average``), the held-out
loss is the averaged network's (what a checkpoint applies), and the table also gives the final
loss of the weights themselves.

The sweeps (``--sweep NAME [--only NAMES]``): the hsc method's settings (``SWEEPS``: ``refresh``, the
photographs a refresh's HVPs see and the refresh period; ``estimator``, the curvature estimator;
``curvature``, the photographs a Gauss-Newton refresh sees) beside Adam, on ``--styles`` x
``--seeds``; one file per sweep and set of styles, read in bench/results/style_net_notes.md (a
default changes only where no style is worse by more than its seeds' spread).

The robustness matrix: both methods with their defaults on the five bundled styles at 128² and
256² crops, ``--robust-seconds`` each (default 120): a run diverges when its held-out loss ends
non-finite or a step was skipped for a non-finite value.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hsc import config as hsc_config  # noqa: E402
from hsc.apps import machine, write_json  # noqa: E402
from hsc.style.features import make_extractor  # noqa: E402
from hsc.style.images import STYLES, load_image  # noqa: E402
from hsc.style.network_train import NetConfig, NetTrainer  # noqa: E402
from hsc.style.objective import StyleObjective  # noqa: E402
from hsc.style.photos import HELD_OUT  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("adam", "hsc")
# the hsc method's settings each sweep compares (changes to NetConfig by field name): the refresh's
# photographs and period; the curvature estimator (sign-probed HVPs against Gauss-Newton sketches of
# the perceptual loss's residuals) and the power of the factor. Each names every setting the default
# has changed since (the refresh sweep was measured with the probe estimator and M^-1), so that it
# measures the same thing again.
_PROBE = {"estimator": "probe", "sketches": None, "factor_power": 1.0}
SWEEPS = {"refresh": {"hsc batch 4, every 50": {**_PROBE, "curvature_batch": None, "update_every": 50},
                      "hsc batch 1, every 50": {**_PROBE, "curvature_batch": 1, "update_every": 50},
                      "hsc batch 1, every 200": {**_PROBE, "curvature_batch": 1, "update_every": 200},
                      "hsc batch 4, every 200": {**_PROBE, "curvature_batch": None, "update_every": 200}},
          "estimator": {"hsc probe": _PROBE,
                        "hsc gauss_newton 16": {"estimator": "gauss_newton", "sketches": 16, "factor_power": 1.0},
                        "hsc gauss_newton 16, M^-1/2": {"estimator": "gauss_newton", "sketches": 16,
                                                        "factor_power": 0.5}},
          # the photographs a Gauss-Newton refresh sees (the batch's first; the default since: two)
          "curvature": {"hsc curvature batch 1": {"curvature_batch": 1},
                        "hsc curvature batch 2": {"curvature_batch": 2},
                        "hsc curvature batch 4": {"curvature_batch": None}}}
PASS_SIZE = 256


def _train(cfg: NetConfig) -> dict:
    torch.set_num_threads(1)
    trainer = NetTrainer(cfg)
    result = trainer.run()
    out = result.to_dict()
    if cfg.seed == 0:  # the first seed's network, for the one-pass comparison
        out["state"] = {k: v.clone() for k, v in trainer.applied.state_dict().items()}
    return out


def run_all(configs: List[NetConfig], workers: int) -> List[dict]:
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        results = []
        for r in pool.map(_train, configs):
            print(f"  {r['style']} {r['method']} seed {r['seed']}: held-out {r['final_loss']:.4g} "
                  f"after {r['steps']} steps{' DIVERGED' if r['diverged'] else ''}", flush=True)
            results.append(r)
        return results


def seconds_to(history: List[dict], target: float):
    """Training seconds of the first snapshot at or below ``target`` (None if never)."""
    return next((s["seconds"] for s in history if s["held_out_loss"] <= target), None)


def one_pass_against_lbfgs(style: str, state: dict, config: NetConfig, photo_name: str = HELD_OUT[0]) -> dict:
    """One pass of the trained network over a held-out photograph at 256², and L-BFGS over the pixels
    until the pixel objective is down to the network's loss (one thread)."""
    from hsc.style.network import TransformNet

    torch.set_num_threads(1)
    net = TransformNet(config.width, config.blocks)
    net.load_state_dict(state)
    net.eval()
    photo, style_image = load_image(photo_name, PASS_SIZE), load_image(style, PASS_SIZE)
    objective = StyleObjective(make_extractor("random", seed=config.feature_seed), photo, style_image, config.weights)
    with torch.no_grad():
        net(photo)  # warm-up
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            out = net(photo)
            times.append(time.perf_counter() - t0)
        target = float(objective(out))
    image = photo.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([image], lr=1, max_iter=1, max_eval=26, history_size=100, line_search_fn="strong_wolfe")
    evaluations, t0, reached = [0], time.perf_counter(), None

    def closure():
        opt.zero_grad()
        loss = objective(image)
        loss.backward()
        evaluations[0] += 1
        return loss

    for _ in range(2000):
        loss = float(opt.step(closure))
        if loss <= target:
            reached = time.perf_counter() - t0
            break
        if time.perf_counter() - t0 > 600:
            break
    return {"photo": photo_name, "network_loss": target, "pass_seconds": sorted(times)[2],
            "lbfgs_seconds": reached, "lbfgs_evaluations": evaluations[0]}


def summarise(runs: List[dict]) -> dict:
    out = {}
    for style in dict.fromkeys(r["style"] for r in runs):
        row = {}
        for method in METHODS:
            mine = [r for r in runs if r["style"] == style and r["method"] == method]
            finals = [r["final_loss"] for r in mine]
            iterates = [r["history"][-1].get("iterate_loss") for r in mine]
            row[method] = {"final": statistics.fmean(finals), "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                           "iterate_final": (statistics.fmean(iterates) if all(v is not None for v in iterates)
                                             else None),
                           "values": finals, "seconds": statistics.fmean(r["seconds"] for r in mine),
                           "steps": statistics.fmean(r["steps"] for r in mine),
                           "diverged": sum(r["diverged"] for r in mine)}
        target = row["adam"]["final"]
        hits = [seconds_to(r["history"], target) for r in runs if r["style"] == style and r["method"] == "hsc"]
        row["hsc_seconds_to_adam_final"] = (statistics.fmean(hits) if all(h is not None for h in hits) else None)
        row["time_ratio"] = (row["hsc_seconds_to_adam_final"] / row["adam"]["seconds"]
                             if row["hsc_seconds_to_adam_final"] is not None else None)
        out[style] = row
    return out


def markdown(report: dict, stem: str) -> str:
    averaged = any(row[m].get("iterate_final") is not None for row in report["summary"].values() for m in METHODS)
    md = ["# Stylising networks: hsc against Adam at equal wall-clock", "",
          f"- machine: {report['machine']}; {report['workers']} runs at a time, one torch thread each",
          f"- command: `{report['command']}`",
          f"- {report['seconds']:g} s of training per run, seeds {report['seeds']}, 128² crops, batch 4; network and "
          f"methods: hsc style-net train's defaults ({report['defaults']})", "",
          "| style | Adam final held-out loss | hsc final held-out loss | hsc's seconds to Adam's final ÷ Adam's "
          "budget (target ≤ 0.7) | steps Adam / hsc | diverged |"
          + (" the weights themselves, final: Adam / hsc |" if averaged else ""),
          "|---|---|---|---|---|---|" + ("---|" if averaged else "")]
    for style, row in report["summary"].items():
        ratio = "never" if row["time_ratio"] is None else f"{row['time_ratio']:.2f}"
        iterates = (" {:.4g} / {:.4g} |".format(row["adam"]["iterate_final"], row["hsc"]["iterate_final"])
                    if averaged else "")
        md.append(f"| {style} | {row['adam']['final']:.4g} ± {row['adam']['std']:.2g} | "
                  f"{row['hsc']['final']:.4g} ± {row['hsc']['std']:.2g} | {ratio} | "
                  f"{row['adam']['steps']:.0f} / {row['hsc']['steps']:.0f} | "
                  f"{row['adam']['diverged'] + row['hsc']['diverged']} |{iterates}")
    md += ["", "One pass at 256² against pixel optimisation to the same loss (the first seed's networks; "
           f"photograph {HELD_OUT[0]}, one thread):", "",
           "| style | method | network's loss | one pass (s) | L-BFGS to that loss (s) | L-BFGS evaluations | ratio |",
           "|---|---|---|---|---|---|---|"]
    for row in report["passes"]:
        lb = row["lbfgs_seconds"]
        lbfgs = "not within 600 s" if lb is None else f"{lb:.1f}"
        ratio = "" if lb is None else f"{lb / row['pass_seconds']:.0f}x"
        md.append(f"| {row['style']} | {row['method']} | {row['network_loss']:.4g} | {row['pass_seconds']:.3f} | "
                  f"{lbfgs} | {row['lbfgs_evaluations']} | {ratio} |")
    md += ["", f"Held-out loss against training seconds: `{stem}.png`.", ""]
    notes = RESULTS / f"{stem}_notes.md"
    if notes.exists():
        md += [notes.read_text()]
    return "\n".join(md) + "\n"


def plot(runs: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = list(dict.fromkeys(r["style"] for r in runs))
    fig, axes = plt.subplots(1, len(styles), figsize=(5 * len(styles), 3.8), squeeze=False)
    colors = {"adam": "tab:green", "hsc": "tab:red"}
    for ax, style in zip(axes[0], styles):
        seen = set()
        for r in runs:
            if r["style"] != style:
                continue
            ax.plot([s["seconds"] for s in r["history"]], [s["held_out_loss"] for s in r["history"]],
                    color=colors[r["method"]], alpha=0.8, label=None if r["method"] in seen else r["method"])
            seen.add(r["method"])
        ax.set_yscale("log")
        ax.set_xlabel("training seconds")
        ax.set_ylabel("held-out loss")
        ax.set_title(style)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def benchmark(args) -> None:
    styles, seeds = args.styles.split(","), list(range(args.seeds))
    earlier = None
    if args.add or args.more_seeds:  # runs beside the committed report's: same budget and defaults
        flag = "--add" if args.add else "--more-seeds"
        earlier = json.loads((RESULTS / f"{args.report}.json").read_text())
        if earlier["seconds"] != args.seconds:
            raise SystemExit(f"{flag}: {args.report}.json has {earlier['seconds']:g} s runs, not {args.seconds:g}")
        if earlier["defaults"] != NetConfig().to_dict():
            raise SystemExit(f"{flag}: {args.report}.json was measured with other defaults than hsc style-net "
                             "train's current ones; run the benchmark again instead")
    if args.add:  # further styles, the same seeds; a style measured again replaces its runs
        if earlier["seeds"] != seeds:
            raise SystemExit(f"--add: {args.report}.json has seeds {earlier['seeds']}, not {seeds}")
        kept = {r["style"] for r in earlier["runs"]} - set(styles)
        earlier["runs"] = [r for r in earlier["runs"] if r["style"] in kept]
        earlier["passes"] = [p for p in earlier["passes"] if p["style"] in kept]
    elif args.more_seeds:  # the next seeds, the same styles
        styles = list(dict.fromkeys(r["style"] for r in earlier["runs"]))
        seeds = list(range(len(earlier["seeds"]), len(earlier["seeds"]) + args.more_seeds))
    configs = [NetConfig(style=style, method=m, seed=s, seconds=args.seconds)
               for s in seeds for style in styles for m in METHODS]
    runs = run_all(configs, args.workers)
    states = {(r["style"], r["method"]): r.pop("state") for r in runs if "state" in r}
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("fork")) as pool:
        keys = list(states)
        passes = list(pool.map(one_pass_against_lbfgs, [k[0] for k in keys], [states[k] for k in keys],
                               [NetConfig() for _ in keys]))
    for (style, method), p in zip(keys, passes):
        p.update(style=style, method=method)
    command = " ".join(sys.argv)
    if earlier is not None:
        runs, passes = earlier["runs"] + runs, earlier["passes"] + (passes if args.add else [])
        seeds = seeds if args.add else earlier["seeds"] + seeds
        command = f"{earlier['command']}, then {command}"
    report = {"machine": machine(), "command": command, "workers": args.workers, "seconds": args.seconds,
              "seeds": seeds, "defaults": dataclasses.asdict(NetConfig()), "summary": summarise(runs),
              "passes": passes, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / f"{args.report}.json", report)
    (RESULTS / f"{args.report}.md").write_text(markdown(report, args.report))
    plot(runs, RESULTS / f"{args.report}.png")
    print(markdown(report, args.report))


def sweep(args) -> None:
    styles, seeds = args.styles.split(","), list(range(args.seeds))
    chosen = SWEEPS[args.sweep]
    variants = {"adam": ("adam", {}), **{name: ("hsc", changes) for name, changes in chosen.items()}}
    if args.only:
        unknown = set(args.only.split(",")) - set(variants)
        if unknown:
            raise SystemExit(f"--only: no variant named {sorted(unknown)}; the sweep has {list(variants)}")
        variants = {n: variants[n] for n in args.only.split(",")}
    jobs = [(name, hsc_config.replace(NetConfig(style=style, method=method, seed=seed, seconds=args.seconds), **changes))
            for seed in seeds for style in styles for name, (method, changes) in variants.items()]
    runs = run_all([cfg for _, cfg in jobs], args.workers)
    lines = [f"# Stylising networks: the hsc method's settings ({args.sweep})", "", f"- machine: {machine()}",
             f"- command: `{' '.join(sys.argv)}`", f"- {args.seconds:g} s of training per run, seeds {seeds}, "
             f"{args.workers} runs at a time, one thread each, 128² crops, batch 4; the rest hsc style-net train's "
             "defaults", "", "| style | variant | seed | steps | held-out loss: final | seconds to Adam's final |",
             "|---|---|---|---|---|---|"]
    for (name, cfg), r in zip(jobs, runs):
        adam = next((a for (n, c), a in zip(jobs, runs) if n == "adam" and c.style == cfg.style and c.seed == cfg.seed),
                    None)
        hit = None if adam is None else seconds_to(r["history"], adam["final_loss"])
        reached = "no Adam run" if adam is None else "never" if hit is None else f"{hit:.0f}"
        lines.append(f"| {cfg.style} | {name} | {cfg.seed} | {r['steps']} | {r['final_loss']:.4g} | {reached} |")
        r.pop("state", None)
    RESULTS.mkdir(exist_ok=True)
    # one file per sweep and set of styles measured together (the refresh sweep's names predate the others)
    stem = "style_net_sweep_" + ("" if args.sweep == "refresh" else args.sweep + "_") + "_".join(styles)
    write_json(RESULTS / f"{stem}.json", {"machine": machine(), "command": " ".join(sys.argv),
                                          "variants": chosen, "runs": runs})
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def robustness(args) -> None:
    configs = [NetConfig(style=style, method=m, seed=0, seconds=args.robust_seconds, size=size, eval_size=size)
               for size in (128, 256) for style in STYLES for m in METHODS]
    runs = run_all(configs, args.workers)
    for r in runs:  # the one-pass comparison's network weights: not part of this report
        r.pop("state", None)
    lines = ["# Stylising networks: robustness of the defaults", "", f"- machine: {machine()}",
             f"- command: `{' '.join(sys.argv)}`", f"- {args.robust_seconds:g} s per run, seed 0, one thread, "
             "both methods with hsc style-net train's defaults; the size is the training crops' and the "
             "held-out photographs'", "",
             f"**{sum(r['diverged'] for r in runs)} of {len(runs)} runs diverged.**", "",
             "| size | style | method | steps | held-out loss: start | final | diverged |", "|---|---|---|---|---|---|---|"]
    for cfg, r in zip(configs, runs):
        lines.append(f"| {cfg.size} | {cfg.style} | {cfg.method} | {r['steps']} | {r['history'][0]['held_out_loss']:.4g} | "
                     f"{r['final_loss']:.4g} | {'yes' if r['diverged'] else 'no'} |")
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "style_net_robustness.json", {"machine": machine(), "runs": runs})
    (RESULTS / "style_net_robustness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--styles", default="flower,china,brick")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--robustness", action="store_true")
    parser.add_argument("--sweep", choices=sorted(SWEEPS), help="hsc's settings against Adam (SWEEPS)")
    parser.add_argument("--only", default="", help="sweep: comma list of variant names (adam among them)")
    parser.add_argument("--robust-seconds", type=float, default=120.0)
    parser.add_argument("--markdown-only", action="store_true")
    parser.add_argument("--more-seeds", type=int, default=0,
                        help="run this many further seeds and add them to <report>.json (its styles and seconds)")
    parser.add_argument("--add", action="store_true",
                        help="run --styles and put them beside the other styles of <report>.json (same seeds, "
                             "seconds and defaults; a style measured again replaces its runs)")
    parser.add_argument("--report", default="style_net",
                        help="the benchmark's files: bench/results/<report>.{json,md,png}, notes from <report>_notes.md")
    args = parser.parse_args()
    if args.markdown_only:
        (RESULTS / f"{args.report}.md").write_text(
            markdown(json.loads((RESULTS / f"{args.report}.json").read_text()), args.report))
    elif args.robustness:
        robustness(args)
    elif args.sweep:
        sweep(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
