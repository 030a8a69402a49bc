"""Style-transfer benchmark: hsc-lbfgs, hsc, L-BFGS and Adam over the pixels, at 128² and 256².

Plain script (not collected by pytest)::

    python bench/bench_style.py                  # the benchmark: bench/results/style.{md,json,png}
    python bench/bench_style.py --repeats 2      # two timing repeats instead of one
    python bench/bench_style.py --robustness     # every bundled pair at 64/128/256²: style_robustness.*
    python bench/bench_style.py --probes         # coloured vs plain probes against exact blocks at 32²
    python bench/bench_style.py --sweep          # the hsc settings grid at 128²: style_sweep.{md,json}
    python bench/bench_style.py --lbfgs-grid --sizes 128  # hsc-lbfgs settings, 3 pairs: style_lbfgs_grid_128.*
    python bench/bench_style.py --oracle         # exact block diagonal at 32²: style_oracle.md
    python bench/bench_style.py --markdown-only  # style.md again from style.json (after editing the notes)

The benchmark: three content/style pairs (PAIRS), the random multi-scale features, the default
loss weights, start from the content image, float32, one torch thread. Per pair and size: L-BFGS
runs 300 evaluations and sets the target, the loss it reaches; the others run for 3x L-BFGS's
wall-clock. Every optimizer gets an untimed warm-up run first (first-call costs: vmap, oneDNN
kernels). Losses per evaluation are deterministic; the wall-clock is measured ``--repeats`` times
(median). The report also measures what one gradient and one HVP cost, and, at 32², how much of
the exact Hessian the pixel blocks hold (the `why` section).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from conftest import machine  # noqa: E402
from hsc.curvature import batched_hvp  # noqa: E402
from hsc.layout import BlockLayout  # noqa: E402
from hsc.style.cli import finite_or_none  # noqa: E402
from hsc.style.features import make_extractor  # noqa: E402
from hsc.style.images import load_image  # noqa: E402
from hsc.style.objective import LossWeights, StyleObjective  # noqa: E402
from hsc.style.plots import plot_loss_grid, plot_side_by_side  # noqa: E402
from hsc.preconditioner import Preconditioner  # noqa: E402
from hsc.style.run import HSCSettings, LBFGSSettings, RunConfig, RunResult, run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONTENT, STYLE = "astronaut", "china"  # the pair of the sweeps and of the Hessian study
PAIRS = [("astronaut", "china"), ("chelsea", "flower"), ("coffee", "brick")]
OPTIMIZERS = ("lbfgs", "hsc-lbfgs", "hsc", "adam")
REFERENCE_EVALUATIONS = 300
TIME_FACTOR = 3.0  # the others run this many times L-BFGS's wall-clock
# The robustness matrix: every bundled photograph in the style of every bundled texture or painting.
ROBUST_CONTENTS = ("astronaut", "chelsea", "coffee", "rocket")
ROBUST_STYLES = ("brick", "grass", "gravel", "china", "flower")
ROBUST_SIZES = (64, 128, 256)
ROBUST_EVALUATIONS = 100

# name -> changes to HSCSettings (or RunConfig's adam_lr / optimizer); the grid of style_notes.md
SWEEP: Dict[str, dict] = {
    "adam lr 0.01": {"optimizer": "adam", "adam_lr": 0.01},
    "adam lr 0.02": {"optimizer": "adam", "adam_lr": 0.02},
    "adam lr 0.05": {"optimizer": "adam", "adam_lr": 0.05},
    "adam lr 0.1": {"optimizer": "adam", "adam_lr": 0.1},
    "adam lr 0.2": {"optimizer": "adam", "adam_lr": 0.2},
    # round 1: one change at a time from lr 0.1, momentum 0.9, every 10, mu 500, delta 1
    "r1 base": {"momentum": 0.9, "update_every": 10},
    "r1 mu 250": {"momentum": 0.9, "update_every": 10, "scale": 250.0},
    "r1 mu 1000": {"momentum": 0.9, "update_every": 10, "scale": 1000.0},
    "r1 mu 2000": {"momentum": 0.9, "update_every": 10, "scale": 2000.0},
    "r1 lr 0.05": {"momentum": 0.9, "update_every": 10, "lr": 0.05},
    "r1 lr 0.2": {"momentum": 0.9, "update_every": 10, "lr": 0.2},
    "r1 momentum 0.5": {"momentum": 0.5, "update_every": 10},
    "r1 momentum 0.95": {"momentum": 0.95, "update_every": 10},
    "r1 every 3": {"momentum": 0.9, "update_every": 3},
    "r1 every 30": {"momentum": 0.9, "update_every": 30},
    "r1 every 100": {"momentum": 0.9, "update_every": 100},
    "r1 samples 4": {"momentum": 0.9, "update_every": 10, "samples": 4},
    "r1 ema 0.5": {"momentum": 0.9, "update_every": 10, "ema": 0.5},
    "r1 ema 0.99": {"momentum": 0.9, "update_every": 10, "ema": 0.99},
    "r1 delta 10": {"momentum": 0.9, "update_every": 10, "damping": 10.0},
    "r1 delta 100": {"momentum": 0.9, "update_every": 10, "damping": 100.0},
    "r1 patch 2x2 every 30": {"momentum": 0.9, "update_every": 30, "patch": (2, 2)},
    "r1 singular_safe": {"momentum": 0.9, "update_every": 10, "mode": "singular_safe"},
    # round 2: from every 100
    "r2 every 100 ema 0.99": {"momentum": 0.9, "update_every": 100, "ema": 0.99},
    "r2 every 100 delta 100": {"momentum": 0.9, "update_every": 100, "damping": 100.0},
    "r2 every 100 lr 0.15": {"momentum": 0.9, "update_every": 100, "lr": 0.15},
    "r2 every 100 mu 350": {"momentum": 0.9, "update_every": 100, "scale": 350.0},
    "r2 every 100 mu 700": {"momentum": 0.9, "update_every": 100, "scale": 700.0},
    "r2 every 300": {"momentum": 0.9, "update_every": 300},
    "r2 every 100 momentum 0.95": {"momentum": 0.95, "update_every": 100},
    # control: delta 1e5 drowns the curvature, M^-1 = const I: momentum SGD through the same code
    "r2 identity lr 4": {"momentum": 0.9, "damping": 1e5, "lr": 4.0},
    "r2 identity lr 8": {"momentum": 0.9, "damping": 1e5, "lr": 8.0},
    # round 3: from every 100, momentum 0.95
    "r3 momentum 0.97 (default)": {},
    "r3 momentum 0.98": {"momentum": 0.98},
    "r3 momentum 0.99": {"momentum": 0.99},
    "r3 momentum 0.97 lr 0.07": {"lr": 0.07},
    "r3 momentum 0.97 samples 2": {"samples": 2},
    "r3 momentum 0.95 delta 100": {"momentum": 0.95, "damping": 100.0},
    "r3 momentum 0.95 mu 700 lr 0.15": {"momentum": 0.95, "scale": 700.0, "lr": 0.15},
    "r3 momentum 0.95 patch 2x2": {"momentum": 0.95, "patch": (2, 2)},
}


def make_objective(size: int, content: str = CONTENT, style: str = STYLE) -> StyleObjective:
    return StyleObjective(make_extractor("random"), load_image(content, size, "--content"),
                          load_image(style, size, "--style"), LossWeights())


def config_with(changes: dict, **budget) -> RunConfig:
    top = {k: v for k, v in changes.items() if k in ("optimizer", "adam_lr")}
    inner = {k: v for k, v in changes.items() if k not in top}
    return RunConfig(**{"optimizer": "hsc", **top, **budget},
                     hsc=HSCSettings().with_changes(**inner))


def warm_up(objective: StyleObjective) -> None:
    for name in OPTIMIZERS:
        run(objective, RunConfig(optimizer=name, steps=3))


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
    against the block, per block, median), and the spectrum after block-Jacobi preconditioning."""
    objective = make_objective(size)
    solution = run(objective, RunConfig(optimizer="lbfgs", evaluations=REFERENCE_EVALUATIONS)).image
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
            layout = BlockLayout([x], 3 * ph * ph, patch=(ph, ph))
            index = layout.index
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


def benchmark(args) -> None:
    torch.set_num_threads(1)
    info = machine()
    sizes = [int(s) for s in args.sizes.split(",")]
    report = {"machine": info, "pairs": PAIRS, "features": "random",
              "weights": dataclasses.asdict(LossWeights()), "dtype": "float32", "init": "content",
              "hsc": dataclasses.asdict(HSCSettings()), "hsc_lbfgs": dataclasses.asdict(LBFGSSettings()),
              "adam_lr": RunConfig().adam_lr, "lbfgs_history": RunConfig().lbfgs_history,
              "repeats": args.repeats, "time_factor": TIME_FACTOR, "cases": {}}
    curves: Dict[str, Dict[str, RunResult]] = {}
    targets: Dict[str, float] = {}
    for content, style in PAIRS:
        for size in sizes:
            objective = make_objective(size, content, style)
            warm_up(objective)
            load_before = os.getloadavg()[0]
            runs: Dict[str, List[RunResult]] = {name: [] for name in OPTIMIZERS}
            for _ in range(args.repeats):  # repeat-major: a change in the machine's load hits all alike
                reference = run(objective, RunConfig(optimizer="lbfgs", evaluations=REFERENCE_EVALUATIONS))
                runs["lbfgs"].append(reference)
                for name in OPTIMIZERS[1:]:
                    runs[name].append(run(objective, RunConfig(optimizer=name,
                                                               seconds=TIME_FACTOR * reference.seconds)))
            target = runs["lbfgs"][0].history[-1].loss
            reference_seconds = statistics.median(r.seconds for r in runs["lbfgs"])
            rows = {}
            for name, results in runs.items():
                hits = [time_to(r, target) for r in results]
                reached = [h for h in hits if h is not None]
                rows[name] = {
                    "reached": len(reached), "repeats": len(results),
                    "seconds_to_target": [h["seconds"] for h in reached],
                    "evaluations_to_target": reached[0]["evaluations"] if reached else None,
                    "hvps_to_target": reached[0]["hvps"] if reached else None,
                    "loss_at_reference_seconds": statistics.median(loss_at_seconds(r, reference_seconds)
                                                                   for r in results),
                    "budget_seconds": statistics.median(r.seconds for r in results),
                    "evaluations": statistics.median(r.evaluations for r in results),
                    "hvps": results[0].hvps, "last_loss": results[0].history[-1].loss,
                    "final_clamped_loss": results[0].final_loss, "diverged": any(r.diverged for r in results),
                    "ms_per_evaluation": 1e3 * statistics.median(r.seconds / r.evaluations for r in results),
                    "stats": results[0].stats,
                    "history": thinned([dataclasses.asdict(h) for h in results[0].history]),
                }
                print(f"  {content}/{style} {size}² {name}: {rows[name]['reached']}/{len(results)} reached "
                      f"{target:.4f} ({_seconds(rows[name]['seconds_to_target'])} s against L-BFGS's "
                      f"{reference_seconds:.1f} s)", flush=True)
            key = f"{content}/{style} {size}²"
            report["cases"][key] = {
                "content": content, "style": style, "size": size, "target": target,
                "reference_seconds": reference_seconds, "rows": rows,
                "costs": costs(objective) if (content, style) == PAIRS[0] else None,
                "load_average_1min_before_after": (load_before, os.getloadavg()[0])}
            curves[key] = {name: results[0] for name, results in runs.items()}
            targets[key] = target
            if size == max(sizes):
                plot_side_by_side(objective.content, load_image(style, size), curves[key],
                                  RESULTS / f"style_{content}_{style}_{size}.png",
                                  [f"{content} in the style of {style}, {size}², random features; L-BFGS 300 "
                                   f"evaluations, the others {TIME_FACTOR:g}x its wall-clock"])
    report["hessian_32"] = hessian_structure()
    RESULTS.mkdir(exist_ok=True)
    plot_loss_grid(curves, RESULTS / "style.png", targets)
    (RESULTS / "style.json").write_text(json.dumps(finite_or_none(report), indent=1))
    (RESULTS / "style.md").write_text(markdown(report))
    print(markdown(report))


def robustness(args) -> None:
    """Every optimizer the CLI offers, with its defaults, on every bundled photograph in the style
    of every bundled texture or painting at 64², 128² and 256², ROBUST_EVALUATIONS evaluations each
    (L-BFGS and hsc-lbfgs: that many evaluations; the others one per step). A run has converged when
    it did not diverge (hsc.style.run: final loss finite, no step skipped) and its final loss is below
    half the start's. Writes style_robustness.{md,json} and style_robustness_<size>.png (one row of
    results per optimizer for a few pairs)."""
    torch.set_num_threads(1)
    cases = {}
    failures = []
    for size in ROBUST_SIZES:
        pictures: Dict[str, Dict[str, RunResult]] = {}
        for content in ROBUST_CONTENTS:
            for style in ROBUST_STYLES:
                objective = make_objective(size, content, style)
                with torch.no_grad():
                    start = float(objective(objective.content))
                row = {}
                for name in OPTIMIZERS:
                    r = run(objective, RunConfig(optimizer=name, evaluations=ROBUST_EVALUATIONS))
                    converged = not r.diverged and r.final_loss < 0.5 * start
                    row[name] = {"final_loss": r.final_loss, "start_loss": start, "diverged": r.diverged,
                                 "converged": converged, "seconds": r.seconds, "evaluations": r.evaluations,
                                 "hvps": r.hvps}
                    if not converged:
                        failures.append(f"{content}/{style} {size}² {name}")
                    if style in ("china", "brick") and content in ("astronaut", "chelsea"):
                        pictures.setdefault(f"{content}/{style}", {})[name] = r
                cases[f"{content}/{style} {size}²"] = row
                print(f"  {content}/{style} {size}²: " + ", ".join(
                    f"{n} {v['final_loss']:.4g}{'' if v['converged'] else ' FAILED'}" for n, v in row.items()),
                    flush=True)
        for pair, results in pictures.items():
            content, style = pair.split("/")
            obj = make_objective(size, content, style)
            plot_side_by_side(obj.content, load_image(style, size), results,
                              RESULTS / f"style_robustness_{content}_{style}_{size}.png",
                              [f"{pair}, {size}², {ROBUST_EVALUATIONS} evaluations, every optimizer's defaults"])
    RESULTS.mkdir(exist_ok=True)
    report = {"machine": machine(), "evaluations": ROBUST_EVALUATIONS, "sizes": ROBUST_SIZES,
              "contents": ROBUST_CONTENTS, "styles": ROBUST_STYLES, "cases": cases, "failures": failures}
    (RESULTS / "style_robustness.json").write_text(json.dumps(finite_or_none(report), indent=1))
    m = report["machine"]
    lines = ["# Style transfer robustness: every optimizer's defaults on every bundled pair", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, one torch thread; command: "
             f"`{m['command']}`",
             f"- {len(ROBUST_CONTENTS)} photographs x {len(ROBUST_STYLES)} styles x sizes {ROBUST_SIZES}, "
             f"{ROBUST_EVALUATIONS} evaluations, random features, start from the content image",
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
    (RESULTS / "style_robustness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))


def probes(args) -> None:
    """The coloured probe estimator against plain sign probes at equal HVP count (samples = C),
    both against the exact 3 x 3 pixel blocks at 32² (the oracle), at the content image and after
    50 L-BFGS iterations, 8 seeds: relative Frobenius error of the blocks."""
    torch.set_num_threads(1)
    rows = []
    for content, style in PAIRS:
        objective = make_objective(32, content, style)
        image = objective.content.clone().requires_grad_(True)
        points = {"content image": image.detach().clone()}
        optimizer = torch.optim.LBFGS([image], max_iter=50, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = objective(image)
            loss.backward()
            return loss

        optimizer.step(closure)
        points["after 50 L-BFGS iterations"] = image.detach().clone()
        for where, point in points.items():
            x = point.clone().requires_grad_(True)
            exact = Preconditioner([x], block_size=3, patch=(1, 1), estimator="exact", ema=0.0)
            exact.update_curvature(lambda: objective(x))
            for radius in (1, 2):
                errors = {"coloured": [], "probe": []}
                colours = None
                for seed in range(8):
                    c = Preconditioner([x], block_size=3, patch=(1, 1), estimator="coloured", colour_radius=radius,
                                       ema=0.0, seed=seed)
                    c.update_curvature(lambda: objective(x))
                    colours = c.colour_count
                    p = Preconditioner([x], block_size=3, patch=(1, 1), estimator="probe", samples=colours,
                                       ema=0.0, seed=seed)
                    p.update_curvature(lambda: objective(x))
                    for name, pre in (("coloured", c), ("probe", p)):
                        errors[name].append(float((pre.estimate - exact.estimate).norm() / exact.estimate.norm()))
                rows.append({"pair": f"{content}/{style}", "point": where, "radius": radius, "colours": colours,
                             "hvps": 3 * colours, "coloured": statistics.median(errors["coloured"]),
                             "probe": statistics.median(errors["probe"])})
                print(rows[-1], flush=True)
    lines = ["# Coloured probes against plain sign probes at equal HVP count (32², exact blocks as the oracle)", "",
             f"- command: `{' '.join(sys.argv)}`; random features; blocks of one pixel's 3 colours (b = 3)",
             "- error: ‖estimate − exact blocks‖_F / ‖exact blocks‖_F over all blocks, median of 8 seeds; one "
             "refresh, no averaging across refreshes (ema 0); plain probes get samples = C sign draws, so both "
             "take 3 C HVPs", "",
             "| pair | point | radius r | colours C | HVPs | coloured error | plain probes error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['point']} | {r['radius']} | {r['colours']} | {r['hvps']} | "
                     f"{r['coloured']:.3f} | {r['probe']:.3f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "style_probes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _seconds(values: List[float]) -> str:
    if not values:
        return "not reached"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def markdown(report: dict) -> str:
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
    notes = RESULTS / "style_notes.md"
    if notes.exists():
        lines += ["", notes.read_text()]
    return "\n".join(lines) + "\n"


# The hsc-lbfgs grid: name -> changes to LBFGSSettings (history, keep_pairs, or PreconditionerConfig
# fields) on top of LBFGS_GRID_BASE, the first round's starting point (the default then); judged on
# every pair of PAIRS by evaluations to L-BFGS's 300-evaluation loss. Round 1 changes one thing;
# round 2 starts from ema 0, the one change that helped on every pair (now the default).
LBFGS_GRID_BASE = {"update_every": 60, "ema": 0.9, "scale": 1.0, "keep_pairs": True}
LBFGS_GRID: Dict[str, dict] = {
    "every 60, ema 0.9, rho 1, pairs kept": {},
    "every 20": {"update_every": 20},
    "every 200": {"update_every": 200},
    "ema 0 (the default)": {"ema": 0.0},
    "rho 0.3": {"scale": 0.3},
    "rho 3": {"scale": 3.0},
    "pairs reset at a refresh": {"keep_pairs": False},
    "saddle_free": {"mode": "saddle_free"},
    "patch 2x2": {"patch": (2, 2)},
    "samples 2": {"samples": 2},
    "ema 0, rho 3": {"ema": 0.0, "scale": 3.0},
    "ema 0, rho 2": {"ema": 0.0, "scale": 2.0},
    "ema 0, every 120": {"ema": 0.0, "update_every": 120},
}


def lbfgs_grid(args) -> None:
    """hsc-lbfgs settings over every pair of PAIRS at one size: evaluations and seconds to
    L-BFGS's 300-evaluation loss (each run stops at 600 evaluations). ``--only`` (names joined
    by ';') reruns some variants and keeps the other rows of an earlier run (deterministic)."""
    torch.set_num_threads(1)
    size = int(args.sizes.split(",")[0])
    chosen = args.only.split(";") if args.only else list(LBFGS_GRID)
    unknown = set(chosen) - set(LBFGS_GRID)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; the grid has {list(LBFGS_GRID)}")
    rows: Dict[str, dict] = {n: {} for n in chosen}
    targets = {}
    for content, style in PAIRS:
        pair = f"{content}/{style}"
        objective = make_objective(size, content, style)
        warm_up(objective)
        reference = run(objective, RunConfig(optimizer="lbfgs", evaluations=REFERENCE_EVALUATIONS))
        targets[pair] = {"loss": reference.history[-1].loss, "seconds": reference.seconds}
        for name in chosen:
            settings = LBFGSSettings().with_changes(**{**LBFGS_GRID_BASE, **LBFGS_GRID[name]})
            r = run(objective, RunConfig(optimizer="hsc-lbfgs", evaluations=600, hsc_lbfgs=settings))
            rows[name][pair] = {"to_target": time_to(r, targets[pair]["loss"]), "final_loss": r.final_loss,
                                "diverged": r.diverged}
            print(f"  {pair} {name}: {rows[name][pair]}", flush=True)
    path = RESULTS / f"style_lbfgs_grid_{size}.json"
    if args.only and path.exists():
        previous = json.loads(path.read_text())["rows"]
        rows = {n: rows[n] if n in rows else previous[n] for n in LBFGS_GRID if n in rows or n in previous}
    write_lbfgs_grid({"machine": machine(), "size": size, "targets": targets, "base": LBFGS_GRID_BASE,
                      "defaults": dataclasses.asdict(LBFGSSettings()), "grid": LBFGS_GRID, "rows": rows})


def write_lbfgs_grid(out: dict) -> None:
    """style_lbfgs_grid_<size>.{json,md} from the grid's results."""
    size, targets, rows = out["size"], out["targets"], out["rows"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"style_lbfgs_grid_{size}.json").write_text(json.dumps(finite_or_none(out), indent=1, default=str))
    pairs = [f"{c}/{s}" for c, s in PAIRS]
    lines = [f"# hsc-lbfgs settings over three pairs, {size}²: evaluations (seconds) to L-BFGS's "
             f"{REFERENCE_EVALUATIONS}-evaluation loss", "",
             f"- machine: {out['machine']['cpu']}, torch {out['machine']['torch']}, 1 thread; "
             f"command: `{out['machine']['command']}`",
             "- L-BFGS (history 100, strong Wolfe): " + ", ".join(
                 f"{p} {targets[p]['loss']:.4f} in {targets[p]['seconds']:.1f} s" for p in pairs),
             f"- each run at most 600 evaluations; every variant changes {out['base']} (the first round's "
             f"base) of hsc-lbfgs's settings {out['defaults']}",
             "- evaluations are deterministic; seconds were measured while other work may have shared the machine",
             "", "| variant | " + " | ".join(pairs) + " | evaluations, sum |", "|---|" + "---|" * (len(pairs) + 1)]
    for name, row in rows.items():
        cells, total = [], 0
        for p in pairs:
            hit = row[p]["to_target"]
            cells.append(f"{hit['evaluations']} ({hit['seconds']:.1f} s)" if hit else "not reached")
            total = total + hit["evaluations"] if hit and total is not None else None
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total if total is not None else '-'} |")
    (RESULTS / f"style_lbfgs_grid_{size}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _beats(case: dict) -> bool:
    times = case["rows"]["hsc-lbfgs"]["seconds_to_target"]
    return bool(times) and statistics.median(times) < case["reference_seconds"]


def sweep(args) -> None:
    """The hsc grid at one size: loss at 100 / 300 / 600 evaluations, at L-BFGS's time, time to target."""
    torch.set_num_threads(1)
    size = int(args.sizes.split(",")[0])
    objective = make_objective(size)
    warm_up(objective)
    reference = run(objective, RunConfig(optimizer="lbfgs", evaluations=REFERENCE_EVALUATIONS))
    target = reference.history[-1].loss
    names = [n for n in SWEEP if not args.only or n in args.only.split(",")]
    rows = {}
    for name in names:
        r = run(objective, config_with(SWEEP[name], evaluations=600, seconds=TIME_FACTOR * reference.seconds))

        def at(evaluations):
            return next((h.loss for h in r.history if h.evaluations >= evaluations), None)
        rows[name] = {"changes": {k: list(v) if isinstance(v, tuple) else v for k, v in SWEEP[name].items()},
                      "loss_at_100": at(100), "loss_at_300": at(300), "loss_at_600": at(600),
                      "loss_at_reference_seconds": loss_at_seconds(r, reference.seconds),
                      "to_target": time_to(r, target), "evaluations": r.evaluations, "hvps": r.hvps,
                      "seconds": r.seconds, "skipped_steps": sum(v for k, v in r.stats.items()
                                                                 if k.startswith("skipped"))}
        print(f"  {name}: {rows[name]}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": machine(), "size": size, "target": target, "reference_seconds": reference.seconds,
           "defaults": dataclasses.asdict(HSCSettings()), "rows": rows}
    (RESULTS / "style_sweep.json").write_text(json.dumps(finite_or_none(out), indent=1))

    def f(v):
        return "diverged" if v is None or v != v or v == float("inf") else f"{v:.4f}"
    lines = [f"# hsc settings grid, {size}², target {target:.4f} (L-BFGS, {REFERENCE_EVALUATIONS} evaluations, "
             f"{reference.seconds:.1f} s)", "", f"- machine: {out['machine']['cpu']}, torch {out['machine']['torch']}, "
             f"1 thread; command: `{out['machine']['command']}`",
             f"- each run: 600 evaluations or {TIME_FACTOR:g}x L-BFGS's time; changes to {out['defaults']}",
             "- `diverged`: the loss overflowed and every later step was skipped", "",
             "| variant | loss @100 | @300 | @600 | at L-BFGS's time | to target | HVPs | skipped steps |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        hit = r["to_target"]
        lines.append(f"| {name} | {f(r['loss_at_100'])} | {f(r['loss_at_300'])} | {f(r['loss_at_600'])} | "
                     f"{f(r['loss_at_reference_seconds'])} | "
                     f"{'%.1f s' % hit['seconds'] if hit else 'no'} | {r['hvps']} | {r['skipped_steps']} |")
    (RESULTS / "style_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def oracle(args) -> None:
    """Per evaluation at 32²: hsc with the exact 3 x 3 pixel blocks (n HVPs a refresh, not timed)
    against the probe estimator, the identity control, L-BFGS and Adam."""
    torch.set_num_threads(1)
    objective = make_objective(32)
    runs = {"lbfgs": RunConfig(optimizer="lbfgs", evaluations=REFERENCE_EVALUATIONS),
            "adam": RunConfig(optimizer="adam", evaluations=REFERENCE_EVALUATIONS),
            "hsc probe": config_with({}, evaluations=REFERENCE_EVALUATIONS),
            "hsc identity control": config_with({"damping": 1e5, "lr": 4.0}, evaluations=REFERENCE_EVALUATIONS)}
    rows = {}
    for name, config in runs.items():
        r = run(objective, config)
        rows[name] = {e: next(h.loss for h in r.history if h.evaluations >= e) for e in (10, 30, 100, 300)}
    for every in (30, 100):
        r = run(objective, config_with({"estimator": "exact", "update_every": every},
                                       evaluations=REFERENCE_EVALUATIONS))
        rows[f"hsc exact blocks, every {every}"] = {
            e: next(h.loss for h in r.history if h.evaluations >= e) for e in (10, 30, 100, 300)}
    lines = ["# Exact pixel blocks vs the probe estimator, per evaluation (32², not timed)", "",
             f"- hsc settings {dataclasses.asdict(HSCSettings())}; the exact rows swap the estimator "
             "(and the refresh interval) only",
             f"- command: `{' '.join(sys.argv)}`", "",
             "| run | loss @10 | @30 | @100 | @300 |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[e]:.4f}" if r[e] == r[e] and r[e] != float('inf') else "diverged"
                                                 for e in (10, 30, 100, 300)) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "style_oracle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128,256", help="comma list (the sweep uses the first)")
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats per size")
    parser.add_argument("--robustness", action="store_true", help="every bundled pair at 64/128/256²")
    parser.add_argument("--probes", action="store_true", help="coloured vs plain probes at 32²")
    parser.add_argument("--sweep", action="store_true", help="the hsc settings grid")
    parser.add_argument("--lbfgs-grid", action="store_true", help="the hsc-lbfgs settings grid over three pairs")
    parser.add_argument("--only", default="", help="sweep: comma list of variant names; lbfgs grid: names joined by ';'")
    parser.add_argument("--oracle", action="store_true", help="exact pixel blocks at 32², per evaluation")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite style.md from style.json and style_notes.md, run nothing")
    args = parser.parse_args()
    if args.markdown_only:
        report = json.loads((RESULTS / "style.json").read_text())
        (RESULTS / "style.md").write_text(markdown(report))
    elif args.robustness:
        robustness(args)
    elif args.probes:
        probes(args)
    elif args.lbfgs_grid:
        lbfgs_grid(args)
    elif args.sweep:
        sweep(args)
    elif args.oracle:
        oracle(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
