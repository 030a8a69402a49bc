"""GAN benchmark: hsc's modes against Adam and ACGD at equal wall-clock, and hsc option sweeps.

Plain script (not collected by pytest)::

    python bench/bench_gan.py                          # ring8 30 s, grid25 60 s, digits 60 s, 5 seeds
    python bench/bench_gan.py --data ring8 --seeds 3 --scale 0.5   # fewer seeds, half the seconds
    python bench/bench_gan.py --sweep spectral --data ring8 --seeds 3   # an hsc option grid

Runs go ``--workers`` at a time (default 2), each on one torch thread, so every method gets the
same wall-clock of one core; seed-major order, so a change in the machine's load hits every
method alike. Writes bench/results/gan.json, gan.md and gan_<data>.png (metrics against seconds),
or gan_sweep_<name>_<data>.* for a sweep.
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
from hsc.gan.data import make_dataset  # noqa: E402
from hsc.gan.metrics import metric_names  # noqa: E402
from hsc.gan.train import HSCOptions, RunResult, TrainConfig, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SECONDS = {"ring8": 30.0, "grid25": 60.0, "digits": 60.0}

# name -> changes to TrainConfig (method, lr, ...), HSCOptions or PreconditionerConfig fields.
# "hsc" is the CLI's default configuration; the others name what they change.
METHODS: Dict[str, dict] = {
    "hsc": {},
    "adam": {"method": "adam"},
    "acgd": {"method": "acgd"},
    "hsc saddle_free": {"mode": "saddle_free"},
    "hsc spectral": {"mode": "spectral"},
    "hsc cholesky": {"mode": "cholesky", "scale_rule": "absolute", "scale": 1.0},
    "competitive": {"method": "competitive"},
}

# Option grids around the default (hsc: saddle_free_root, relative mu), judged on several seeds.
SWEEPS: Dict[str, Dict[str, dict]] = {
    "spectral": {
        "root rho 1": {},
        "root rho 0.3": {"scale": 0.3},
        "root rho 3": {"scale": 3.0},
        "root every 20": {"update_every": 20},
        "root every 100": {"update_every": 100},
        "root b 8": {"block_size": 8},
        "root b 32": {"block_size": 32},
        "saddle_free rho 1": {"mode": "saddle_free"},
        "saddle_free rho 0.3": {"mode": "saddle_free", "scale": 0.3},
        "root absolute mu 1": {"scale_rule": "absolute", "scale": 1.0},
        "root no graft": {"graft": False},
        "root G only": {"players": "G"},
    },
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


def run_named(variants: Dict[str, dict], data: str, seeds: List[int], seconds: float,
              workers: int) -> Dict[str, List[RunResult]]:
    """Every variant on every seed, seed-major; name -> its runs in seed order."""
    jobs = [(name, variant_config(variants[name], seed, seconds, data)) for seed in seeds for name in variants]
    results = run_all([config for _, config in jobs], workers)
    by_name: Dict[str, List[RunResult]] = {name: [] for name in variants}
    for (name, _), result in zip(jobs, results):
        by_name[name].append(result)
    return by_name


def verdict(summary: dict, method: str = "hsc") -> str:
    """The modes / high-quality target against Adam and ACGD (mixtures): modes captured at least
    both means, % high quality at least twice the better of the two."""
    if "modes" not in summary.get(method, {}):
        return ""
    mean = lambda name, key: summary[name][key]["mean"]  # noqa: E731
    peers = [p for p in ("adam", "acgd") if p in summary]
    modes_ok = all(mean(method, "modes") >= mean(p, "modes") for p in peers)
    best_hq = max(mean(p, "high_quality") for p in peers)
    hq_ok = mean(method, "high_quality") >= 2 * best_hq
    return (f"Target ({method}): modes {mean(method, 'modes'):.2f} against "
            + ", ".join(f"{p} {mean(p, 'modes'):.2f}" for p in peers)
            + f" -> {'met' if modes_ok else 'missed'}; % high quality {mean(method, 'high_quality'):.1f} "
            f"against 2 x {best_hq:.1f} = {2 * best_hq:.1f} -> {'met' if hq_ok else 'missed'}.")


def benchmark(args) -> None:
    from hsc.gan.plots import plot_curves

    seeds = list(range(args.seeds))
    methods = {name: METHODS[name] for name in args.methods.split(",")}
    defaults = dataclasses.asdict(HSCOptions())
    report = {"machine": machine(), "command": " ".join(sys.argv), "workers": args.workers,
              "hsc_defaults": defaults, "methods": methods, "data": {}}
    md = ["# GAN benchmark: hsc's modes against Adam and ACGD at equal wall-clock\n",
          f"- machine: {machine()}; {args.workers} runs at a time, one torch thread each",
          f"- command: `{' '.join(sys.argv)}`",
          f"- seeds: {seeds}",
          f"- hsc (the CLI's default): {defaults}",
          "- the other rows change: " + "; ".join(f"{n}: {c}" for n, c in methods.items() if c), ""]
    for data in args.data.split(","):
        seconds = SECONDS[data] * args.scale
        load_before = os.getloadavg()[0]
        t0 = time.time()
        by_name = run_named(methods, data, seeds, seconds, args.workers)
        dataset = make_dataset(data)
        names = metric_names(dataset)
        summary = summarise(by_name, list(names))
        table = format_table(summary, names)
        target = verdict(summary)
        print(table + "\n" + target)
        load = (load_before, os.getloadavg()[0])
        report["data"][data] = {"seconds": seconds, "seeds": seeds, "summary": summary,
                                "runs": {n: [r.to_dict() for r in rs] for n, rs in by_name.items()},
                                "elapsed": time.time() - t0, "load_average_1min_before_after": load}
        RESULTS.mkdir(exist_ok=True)
        plot_curves(by_name, dataset, RESULTS / f"gan_{data}.png")
        md += [f"## {data}: {seconds:g} s of training per run, {len(seeds)} seeds (mean ± std)", "",
               f"1-min load average before / after: {load[0]:.1f} / {load[1]:.1f} "
               f"(2 cores; above 2 means other work shared the machine)", "", table, "", target,
               "", f"Metrics against training seconds: `gan_{data}.png`.", ""]
    (RESULTS / "gan.json").write_text(json.dumps(report, indent=1))
    notes = RESULTS / "gan_notes.md"
    if notes.exists():
        md += ["", notes.read_text()]
    (RESULTS / "gan.md").write_text("\n".join(md) + "\n")


def sweep(args) -> None:
    seeds = list(range(args.seeds))
    variants = SWEEPS[args.sweep]
    if args.only:
        variants = {n: variants[n] for n in args.only.split(",")}
    for data in args.data.split(","):
        seconds = SECONDS[data] * args.scale
        by_name = run_named(variants, data, seeds, seconds, args.workers)
        names = metric_names(make_dataset(data))
        table = format_table(summarise(by_name, list(names)), names)
        print(table)
        RESULTS.mkdir(exist_ok=True)
        stem = f"gan_sweep_{args.sweep}_{data}"
        out = {"data": data, "machine": machine(), "command": " ".join(sys.argv), "seconds": seconds,
               "seeds": seeds, "variants": variants, "runs": {n: [r.to_dict() for r in rs] for n, rs in by_name.items()}}
        (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
        (RESULTS / f"{stem}.md").write_text(
            f"# hsc sweep '{args.sweep}' on {data}, {seconds:g} s, seeds {seeds}\n\n- machine: {machine()}\n"
            f"- command: `{' '.join(sys.argv)}`\n- variants (changes to {dataclasses.asdict(HSCOptions())}):\n"
            + "".join(f"  - {n}: {c}\n" for n, c in variants.items()) + "\n" + table + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="ring8,grid25,digits")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the per-data seconds")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--sweep", default="", help=f"run an option grid instead: one of {list(SWEEPS)}")
    parser.add_argument("--only", default="", help="sweep: comma list of variant names")
    args = parser.parse_args()
    sweep(args) if args.sweep else benchmark(args)


if __name__ == "__main__":
    main()
