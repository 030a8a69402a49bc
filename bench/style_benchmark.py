"""Style-transfer benchmark: hsc-lbfgs, hsc, L-BFGS and Adam over the pixels, time to L-BFGS's loss.

Plain script (not collected by pytest)::

    python bench/style_benchmark.py                  # 128² and 256²: bench/results/style.{md,json,png}
    python bench/style_benchmark.py --repeats 2      # two timing repeats instead of one
    python bench/style_benchmark.py --markdown-only  # style.md again from style.json (after editing the notes)

The protocol: three content/style pairs (style_common.PAIRS), the random multi-scale features, the
default loss weights, start from the content image, float32, one torch thread. Per pair and size:
L-BFGS runs 300 evaluations and sets the target, the loss it reaches; the others run for 3x L-BFGS's
wall-clock. Every optimizer gets an untimed warm-up run first (first-call costs: vmap, oneDNN
kernels). Losses per evaluation are deterministic; the wall-clock is measured ``--repeats`` times
(median). The report also measures what one gradient and one HVP cost (the first pair), and, at
32², how much of the exact Hessian the pixel blocks hold (the `why` section).

Writes to bench/results/ (``--results DIR``: elsewhere): ``style.json``, ``style.md`` (with the
hand-written ``style_notes.md`` of the same folder appended), ``style.png`` (loss against seconds
and evaluations, target dotted) and ``style_<content>_<style>_<size>.png`` (the images, at the
largest size).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch

# style_common first: it puts the repository on sys.path for the imports of hsc
from style_common import (OPTIMIZERS, PAIRS, REFERENCE_EVALUATIONS, TIME_FACTOR, add_results_flag,
                          loss_at_seconds, make_objective, reference, results_dir, time_to, warm_up)
from conftest import machine
from hsc.apps import comma_list, write_json
from hsc.curvature import batched_hvp
from hsc.layout import BlockLayout
from hsc.style.images import load_image
from hsc.style.objective import LossWeights, StyleObjective
from hsc.style.plots import plot_loss_grid, plot_side_by_side
from hsc.style.run import HSCSettings, LBFGSSettings, RunConfig, RunResult, run


def thinned(history: list, points: int = 400) -> list:
    """At most ``points`` records, evenly spaced, always with the last (keeps style.json small)."""
    step = max(1, -(-len(history) // points))
    return history[::step] + ([history[-1]] if (len(history) - 1) % step else [])


def median_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def costs(objective: StyleObjective) -> dict:
    """Milliseconds of one loss + gradient, of one HVP (on top of a gradient with its graph), and
    of 3 and 12 HVPs batched with vmap and looped (a refresh at b = 3 and b = 12)."""
    x = objective.content.clone().requires_grad_(True)

    def gradient():
        torch.autograd.grad(objective(x), x)

    def hvps(count: int, batched: bool):
        vectors = torch.randn(count, x.numel(), generator=torch.Generator().manual_seed(0))

        def fn():
            g = torch.autograd.grad(objective(x), x, create_graph=True)[0]
            if batched:
                batched_hvp([g], [x], vectors)
            else:
                for v in vectors:
                    torch.autograd.grad(g, x, v.view_as(x), retain_graph=True)
        return fn

    out = {"gradient_ms": median_ms(gradient)}
    with_graph = median_ms(hvps(0, False))
    for count in (1, 3, 12):
        out[f"hvp_x{count}_loop_ms"] = median_ms(hvps(count, False)) - with_graph
        if count > 1:
            out[f"hvp_x{count}_vmap_ms"] = median_ms(hvps(count, True)) - with_graph
    return out


def hessian_structure(size: int = 32) -> dict:
    """The exact pixel Hessian at ``size``² (n HVPs), at the content image and at L-BFGS's
    300-evaluation image: its spectrum, the share of its squared Frobenius norm inside the pixel
    blocks of each patch size, the probe estimator's noise (the off-block part of a block's rows
    against the block, per block, median), and the spectrum after block-Jacobi preconditioning.
    The blocks are cut from the dense Hessian by the layout's index (which pixels form a block)."""
    objective = make_objective(size)
    solution = reference(objective).image
    out = {}
    for where, point in (("content image", objective.content), ("L-BFGS 300 evaluations", solution)):
        x = point.clone().requires_grad_(True)
        loss = objective(x)
        grad = torch.autograd.grad(loss, x, create_graph=True)[0]
        n = x.numel()
        H = torch.cat([batched_hvp([grad], [x], torch.eye(n)[i:i + 512]) for i in range(0, n, 512)])
        H = ((H + H.T) / 2).double()
        eig = torch.linalg.eigvalsh(H)
        top = eig.abs().sort(descending=True).values
        row = {"loss": float(loss.detach()), "n": n, "eig_min": float(eig[0]), "eig_max": float(eig[-1]),
               "eig_median": float(eig.median()), "negative": int((eig < 0).sum()),
               "top_1pct_share_of_frobenius": float((top[:n // 100] ** 2).sum() / (top ** 2).sum()),
               "patches": {}}
        for ph in (1, 2, 4):
            index = BlockLayout([x], 3 * ph * ph, patch=(ph, ph)).index
            inside = torch.zeros_like(H, dtype=torch.bool)
            inside[index[:, :, None], index[:, None, :]] = True
            blocks = H[index[:, :, None], index[:, None, :]]
            off = torch.where(inside, 0.0, H)
            noise = (off[index] ** 2).sum(dim=(1, 2)) / (blocks ** 2).sum(dim=(1, 2))
            block_eig = torch.linalg.eigvalsh(blocks)
            patch = {"b": 3 * ph * ph, "block_share_of_frobenius": float((blocks ** 2).sum() / (H ** 2).sum()),
                     "probe_noise_median": float(noise.sqrt().median()),
                     "indefinite_blocks": float((block_eig[:, 0] <= 0).double().mean())}
            if bool((block_eig[:, 0] > 0).all()):
                D = torch.zeros_like(H)
                D[index[:, :, None], index[:, None, :]] = blocks
                L_inv = torch.linalg.inv(torch.linalg.cholesky(D))
                pe = torch.linalg.eigvalsh(L_inv @ H @ L_inv.T)
                patch["preconditioned_eig_min"], patch["preconditioned_eig_max"] = float(pe[0]), float(pe[-1])
            row["patches"][f"{ph}x{ph}"] = patch
        out[where] = row
    return out


def benchmark(sizes: List[int], repeats: int, results: Path) -> None:
    torch.set_num_threads(1)
    report = {"machine": machine(), "pairs": PAIRS, "features": "random",
              "weights": dataclasses.asdict(LossWeights()), "dtype": "float32", "init": "content",
              "hsc": dataclasses.asdict(HSCSettings()), "hsc_lbfgs": dataclasses.asdict(LBFGSSettings()),
              "adam_lr": RunConfig().adam_lr, "lbfgs_history": RunConfig().lbfgs_history,
              "repeats": repeats, "time_factor": TIME_FACTOR, "cases": {}}
    curves: Dict[str, Dict[str, RunResult]] = {}
    targets: Dict[str, float] = {}
    results_dir(results)
    for content, style in PAIRS:
        for size in sizes:
            objective = make_objective(size, content, style)
            warm_up(objective)
            load_before = os.getloadavg()[0]
            runs: Dict[str, List[RunResult]] = {name: [] for name in OPTIMIZERS}
            for _ in range(repeats):  # repeat-major: a change in the machine's load hits all alike
                lbfgs = reference(objective)
                runs["lbfgs"].append(lbfgs)
                for name in OPTIMIZERS:
                    if name != "lbfgs":
                        runs[name].append(run(objective, RunConfig(optimizer=name,
                                                                   seconds=TIME_FACTOR * lbfgs.seconds)))
            target = runs["lbfgs"][0].history[-1].loss
            reference_seconds = statistics.median(r.seconds for r in runs["lbfgs"])
            rows = {}
            for name, measured in runs.items():
                hits = [time_to(r, target) for r in measured]
                reached = [h for h in hits if h is not None]
                rows[name] = {
                    "reached": len(reached), "repeats": len(measured),
                    "seconds_to_target": [h["seconds"] for h in reached],
                    "evaluations_to_target": reached[0]["evaluations"] if reached else None,
                    "hvps_to_target": reached[0]["hvps"] if reached else None,
                    "loss_at_reference_seconds": statistics.median(loss_at_seconds(r, reference_seconds)
                                                                   for r in measured),
                    "budget_seconds": statistics.median(r.seconds for r in measured),
                    "evaluations": statistics.median(r.evaluations for r in measured),
                    "hvps": measured[0].hvps, "last_loss": measured[0].history[-1].loss,
                    "final_clamped_loss": measured[0].final_loss, "diverged": any(r.diverged for r in measured),
                    "ms_per_evaluation": 1e3 * statistics.median(r.seconds / r.evaluations for r in measured),
                    "stats": measured[0].stats,
                    "history": thinned([dataclasses.asdict(h) for h in measured[0].history]),
                }
                print(f"  {content}/{style} {size}² {name}: {rows[name]['reached']}/{len(measured)} reached "
                      f"{target:.4f} ({_seconds(rows[name]['seconds_to_target'])} s against L-BFGS's "
                      f"{reference_seconds:.1f} s)", flush=True)
            key = f"{content}/{style} {size}²"
            report["cases"][key] = {
                "content": content, "style": style, "size": size, "target": target,
                "reference_seconds": reference_seconds, "rows": rows,
                "costs": costs(objective) if (content, style) == PAIRS[0] else None,
                "load_average_1min_before_after": (load_before, os.getloadavg()[0])}
            curves[key] = {name: measured[0] for name, measured in runs.items()}
            targets[key] = target
            if size == max(sizes):
                plot_side_by_side(objective.content, load_image(style, size), curves[key],
                                  results / f"style_{content}_{style}_{size}.png",
                                  [f"{content} in the style of {style}, {size}², random features; L-BFGS "
                                   f"{REFERENCE_EVALUATIONS} evaluations, the others {TIME_FACTOR:g}x its "
                                   "wall-clock"])
    report["hessian_32"] = hessian_structure()
    plot_loss_grid(curves, results / "style.png", targets)
    write_json(results / "style.json", report)
    text = markdown(report, results)
    (results / "style.md").write_text(text)
    print(text)


def _seconds(values: List[float]) -> str:
    if not values:
        return "not reached"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def _beats(case: dict) -> bool:
    times = case["rows"]["hsc-lbfgs"]["seconds_to_target"]
    return bool(times) and statistics.median(times) < case["reference_seconds"]


def markdown(report: dict, results: Path) -> str:
    """style.md from the report, with ``results``/style_notes.md appended when it exists."""
    m = report["machine"]
    lines = [
        "# Style transfer: hsc-lbfgs, hsc, L-BFGS and Adam over the pixels", "",
        f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['torch_threads']} torch thread; "
        f"command: `{m['command']}`",
        f"- problems: {', '.join(f'{c} in the style of {s}' for c, s in report['pairs'])}; random multi-scale "
        f"features, loss weights {report['weights']}, start from the content image, {report['dtype']}",
        f"- hsc-lbfgs: {report['hsc_lbfgs']}",
        f"- hsc: {report['hsc']}; Adam lr {report['adam_lr']}; L-BFGS history {report['lbfgs_history']}, "
        "strong-Wolfe line search",
        f"- protocol: L-BFGS runs {REFERENCE_EVALUATIONS} evaluations and its loss there is the target; the "
        f"others run {report['time_factor']:g}x L-BFGS's wall-clock; {report['repeats']} timing repeat(s), "
        "median (min–max); losses per evaluation are the same in every repeat",
        "- an evaluation is one loss + gradient (hsc-lbfgs's curvature refreshes evaluate the loss once "
        "more, counted); HVPs are counted apart", "",
        "## Time to reach L-BFGS's 300-evaluation loss", "",
        "| case | target loss | optimizer | seconds to target | evaluations to target | HVPs to target "
        "| loss at L-BFGS's 300-evaluation time | budget s | evaluations in budget | loss at the end "
        "| ms / evaluation |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in report["cases"].items():
        for name, r in s["rows"].items():
            lines.append(
                f"| {key} | {s['target']:.4f} | {name}{' (diverged)' if r['diverged'] else ''} | "
                f"{_seconds(r['seconds_to_target'])} | "
                f"{r['evaluations_to_target'] if r['evaluations_to_target'] is not None else '-'} | "
                f"{r['hvps_to_target'] if r['hvps_to_target'] is not None else '-'} | "
                f"{r['loss_at_reference_seconds']:.4f} | {r['budget_seconds']:.1f} | {r['evaluations']:.0f} | "
                f"{r['last_loss']:.4f} | {r['ms_per_evaluation']:.1f} |")
    lines += ["", "Target (hsc-lbfgs reaches the target in less wall-clock than L-BFGS): " + ", ".join(
        f"{key} {'met' if _beats(s) else 'missed'}" for key, s in report["cases"].items()), ""]
    lines += ["## Costs (milliseconds, medians of 5; the first pair)", "",
              "| case | loss + gradient | 1 HVP | 3 HVPs looped | 3 HVPs vmap | 12 HVPs looped | 12 HVPs vmap "
              "| load before / after |", "|---|---|---|---|---|---|---|---|"]
    for key, s in report["cases"].items():
        c, load = s["costs"], s["load_average_1min_before_after"]
        if c is None:
            continue
        lines.append(f"| {key} | {c['gradient_ms']:.1f} | {c['hvp_x1_loop_ms']:.1f} | {c['hvp_x3_loop_ms']:.1f} | "
                     f"{c['hvp_x3_vmap_ms']:.1f} | {c['hvp_x12_loop_ms']:.1f} | {c['hvp_x12_vmap_ms']:.1f} | "
                     f"{load[0]:.1f} / {load[1]:.1f} |")
    lines += ["", "HVP columns: the time on top of one gradient computed with its graph. Load: 1-minute load "
              "average of the 2-core machine (above 1 means other work shared it).", "",
              "## The exact pixel Hessian at 32² (why the blocks see little)", "",
              "| point | loss | eigenvalues min / median / max | negative | top 1 % share of ‖H‖² "
              "| patch | b | blocks' share of ‖H‖² | probe noise (median) | indefinite blocks "
              "| block-Jacobi preconditioned eigenvalues min / max |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for where, h in report["hessian_32"].items():
        for patch, p in h["patches"].items():
            pre = (f"{p['preconditioned_eig_min']:.3g} / {p['preconditioned_eig_max']:.3g}"
                   if "preconditioned_eig_min" in p else "blocks not all positive definite")
            lines.append(f"| {where} | {h['loss']:.4g} | {h['eig_min']:.3g} / {h['eig_median']:.3g} / "
                         f"{h['eig_max']:.3g} | {h['negative']} of {h['n']} | "
                         f"{h['top_1pct_share_of_frobenius']:.2f} | {patch} | {p['b']} | "
                         f"{p['block_share_of_frobenius']:.3f} | {p['probe_noise_median']:.2f} | "
                         f"{p['indefinite_blocks']:.3f} | {pre} |")
    lines += ["", "Probe noise: for each block, ‖rows of the block outside it‖ / ‖block‖, the relative error "
              "of one sign draw of the probe estimator (docs/contract.md §4). Pictures: `style.png` (loss against "
              "seconds and evaluations, target dotted), `style_<content>_<style>_<size>.png` (the images)."]
    notes = results / "style_notes.md"
    if notes.exists():
        lines += ["", notes.read_text()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128,256", help="comma list of image sizes (default: 128,256)")
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats per size (default: 1)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite style.md from style.json and style_notes.md, run nothing")
    add_results_flag(parser)
    args = parser.parse_args()
    if args.markdown_only:
        report = json.loads((args.results / "style.json").read_text())
        (args.results / "style.md").write_text(markdown(report, args.results))
    else:
        benchmark(comma_list(args.sizes, "--sizes", parse=int), args.repeats, args.results)


if __name__ == "__main__":
    main()
