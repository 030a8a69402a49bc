"""GAN benchmark: hsc vs Adam vs ACGD at equal wall-clock on ring8 and grid25 (and an hsc sweep).

Plain script (not collected by pytest)::

    python bench/bench_gan.py                       # ring8 30 s, grid25 60 s, 5 seeds each
    python bench/bench_gan.py --seeds 3 --scale 0.5 # fewer seeds, half the seconds
    python bench/bench_gan.py --sweep --only "every 50,b 8"   # hsc option sweep (ring8, or --data grid25)

Runs go ``--workers`` at a time (default 2), each on one torch thread, so every method gets the
same wall-clock of one core. Writes bench/results/gan.json and gan.md (or gan_sweep.*).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hsc.gan.cli import format_table, machine, summarise  # noqa: E402
from hsc.gan.metrics import metric_names  # noqa: E402
from hsc.gan.data import make_dataset  # noqa: E402
from hsc.gan.train import HSCOptions, RunResult, TrainConfig, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SECONDS = {"ring8": 30.0, "grid25": 60.0}

# name -> changes to the hsc defaults; each is one lead from FINDINGS.md
SWEEP: Dict[str, dict] = {
    "default": {},
    "no graft": {"graft": False},
    "G only": {"players": "G"},
    "D only": {"players": "D"},
    "mu 0.1": {"scale": 0.1},
    "mu 0.01": {"scale": 0.01},
    "b 32": {"block_size": 32},
    "b 8": {"block_size": 8},
    "every 50": {"update_every": 50},
    "lr 1e-3": {"lr": 1e-3},
    "sgd 0.01": {"base": "sgd", "lr": 0.01},
    "damping 1e-2": {"damping": 1e-2},
    # round 2: Shampoo-style grafting and the controls
    "adam (control)": {"method": "adam"},
    "adam lr 1e-3 (control)": {"method": "adam", "lr": 1e-3},
    "acgd (control)": {"method": "acgd"},
    "graft-adam": {"base": "graft-adam"},
    "graft-adam mu 0.01": {"base": "graft-adam", "scale": 0.01},
    "graft-adam G only every 50": {"base": "graft-adam", "players": "G", "update_every": 50},
    "G only every 50": {"players": "G", "update_every": 50},
    "G only every 50 b 8": {"players": "G", "update_every": 50, "block_size": 8},
    # round 3: plain damped-Newton steps. With SGD lr <= 1 and no momentum the per-direction step
    # lr * lam^2 / (lam^2 + mu^2) of Newton's is stable on any quadratic block; mu is the floor.
    "newton lr 1 mu 1e-2": {"base": "sgd", "lr": 1.0, "momentum": 0.0, "graft": False, "scale": 1e-2},
    "newton lr 1 mu 1e-3": {"base": "sgd", "lr": 1.0, "momentum": 0.0, "graft": False, "scale": 1e-3},
    "newton lr 0.3 mu 1e-3": {"base": "sgd", "lr": 0.3, "momentum": 0.0, "graft": False, "scale": 1e-3},
    "newton lr 1 mu 1e-1": {"base": "sgd", "lr": 1.0, "momentum": 0.0, "graft": False, "scale": 1e-1},
    # round 4: the sign of indefinite blocks kept (no damping retries), more probe draws
    "singular_safe": {"mode": "singular_safe"},
    "G only samples 2": {"players": "G", "samples": 2},
    # round 5: rarer refreshes
    "every 100": {"update_every": 100},
    "every 200": {"update_every": 200},
    "every 50 mu 0.1": {"update_every": 50, "scale": 0.1},
    "every 50 b 32": {"update_every": 50, "block_size": 32},
    # round 6 (grid25): why does hsc lose grid25? Adam's second moment lags the refreshed M^-1?
    "graft-adam every 50": {"base": "graft-adam", "update_every": 50},
    "G only every 50 (grid)": {"players": "G", "update_every": 50},
    "D only every 50": {"players": "D", "update_every": 50},
}


def variant_config(changes: dict, seed: int, seconds: float, data: str = "ring8") -> TrainConfig:
    """An hsc run on ``data`` with ``changes``: TrainConfig fields (method, lr, ...) and HSCOptions fields."""
    top = {k: v for k, v in changes.items() if k in TrainConfig.__dataclass_fields__}
    inner = {k: v for k, v in changes.items() if k not in top}
    return TrainConfig(**{"data": data, "method": "hsc", "seed": seed, "seconds": seconds, **top,
                          "hsc": HSCOptions().with_changes(**inner)})


def _run(config: TrainConfig) -> RunResult:
    torch.set_num_threads(1)
    return train(config)


def run_all(configs: List[TrainConfig], workers: int) -> List[RunResult]:
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        results = []
        for r in pool.map(_run, configs):
            print(f"  {r.config.data} {r.config.method} seed {r.config.seed}: {r.final} "
                  f"({r.steps} steps)", flush=True)
            results.append(r)
        return results


def benchmark(args) -> None:
    seeds = list(range(args.seeds))
    report = {"machine": machine(), "command": " ".join(sys.argv), "workers": args.workers,
              "hsc_defaults": dataclasses.asdict(HSCOptions()), "data": {}}
    md = [f"# GAN benchmark: hsc vs Adam vs ACGD at equal wall-clock\n",
          f"- machine: {machine()}; {args.workers} runs at a time, one torch thread each",
          f"- command: `{' '.join(sys.argv)}`",
          f"- seeds: {seeds}", f"- hsc defaults: {dataclasses.asdict(HSCOptions())}", ""]
    for data in args.data.split(","):
        seconds = SECONDS[data] * args.scale
        # seed-major order: a change in the machine's load during the run hits every method alike
        configs = [TrainConfig(data=data, method=m, seed=s, seconds=seconds)
                   for s in seeds for m in ("hsc", "adam", "acgd")]
        load_before = os.getloadavg()[0]
        t0 = time.time()
        results = run_all(configs, args.workers)
        by_method: Dict[str, List[RunResult]] = {}
        for r in results:
            by_method.setdefault(r.config.method, []).append(r)
        names = metric_names(make_dataset(data))
        summary = summarise(by_method, list(names))
        table = format_table(summary, names)
        print(table)
        load = (load_before, os.getloadavg()[0])
        report["data"][data] = {"seconds": seconds, "seeds": seeds, "summary": summary,
                                "runs": [r.to_dict() for r in results], "elapsed": time.time() - t0,
                                "load_average_1min_before_after": load}
        md += [f"## {data}: {seconds:g} s of training per run, {len(seeds)} seeds (mean ± std)", "",
               f"1-min load average before / after: {load[0]:.1f} / {load[1]:.1f} "
               f"(2 cores; above 2 means other work shared the machine)", "", table, ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gan.json").write_text(json.dumps(report, indent=1))
    notes = RESULTS / "gan_notes.md"
    if notes.exists():
        md += ["", notes.read_text()]
    (RESULTS / "gan.md").write_text("\n".join(md) + "\n")


def sweep(args) -> None:
    seeds = list(range(args.seeds))
    data = args.data if args.data in SECONDS else "ring8"
    seconds = SECONDS[data] * args.scale
    names_to_run = [n for n in SWEEP if not args.only or n in args.only.split(",")]
    configs = [variant_config(SWEEP[n], s, seconds, data) for n in names_to_run for s in seeds]
    results = run_all(configs, args.workers)
    by_variant: Dict[str, List[RunResult]] = {}
    for n, r in zip([n for n in names_to_run for _ in seeds], results):
        by_variant.setdefault(n, []).append(r)
    names = metric_names(make_dataset(data))
    table = format_table(summarise(by_variant, list(names)), names)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    out = {"data": data, "machine": machine(), "command": " ".join(sys.argv), "seconds": seconds, "seeds": seeds,
           "variants": {n: SWEEP[n] for n in names_to_run},
           "runs": {n: [r.to_dict() for r in rs] for n, rs in by_variant.items()}}
    stem = args.tag or "gan_sweep"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{stem}.md").write_text(
        f"# hsc sweep on {data}, {seconds:g} s, seeds {seeds}\n\n- machine: {machine()}\n"
        f"- command: `{' '.join(sys.argv)}`\n- variants (changes to {dataclasses.asdict(HSCOptions())}):\n"
        + "".join(f"  - {n}: {SWEEP[n]}\n" for n in names_to_run) + "\n" + table + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="ring8,grid25")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the per-data seconds")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--only", default="", help="sweep: comma list of variant names")
    parser.add_argument("--tag", default="", help="sweep: output file stem")
    args = parser.parse_args()
    sweep(args) if args.sweep else benchmark(args)


if __name__ == "__main__":
    main()
