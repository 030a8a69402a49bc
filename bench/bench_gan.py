"""GAN benchmark: hsc's modes against Adam and ACGD at equal wall-clock, and hsc option sweeps.

Plain script (not collected by pytest)::

    python bench/bench_gan.py                          # ring8 30 s, grid25 60 s, digits 60 s, 5 seeds
    python bench/bench_gan.py --data ring8 --seeds 3 --scale 0.5   # fewer seeds, half the seconds
    python bench/bench_gan.py --sweep spectral --data ring8 --seeds 3   # an hsc option grid
    python bench/bench_gan.py --markdown-only          # gan.md again from gan.json (after editing the notes)
    python bench/bench_gan.py --data stacked-mnist,mnist --report gan_images --snapshots 6 \
        --methods "hsc,hsc gauss_newton,adam,competitive,acgd"   # the image sets: gan_images.*
    python bench/bench_gan.py --data stacked-mnist --report gan_images_long --figures gan_long \
        --methods hsc,adam --seeds 2 --snapshots 5      # the full 15 minutes, figures gan_long_*
    python bench/bench_gan.py --data stacked-mnist --report gan_images_long --figures gan_long \
        --methods acgd --seeds 2 --snapshots 5 --add    # another method beside those runs

Runs go ``--workers`` at a time (default 2), each on one torch thread, so every method gets the
same wall-clock of one core; seed-major order, so a change in the machine's load hits every
method alike. Writes bench/results/<report>.json, <report>.md and <figures>_<data>.png (metrics
against seconds; default gan.json, gan.md, gan_<data>.png), or gan_sweep_<name>_<data>.* for a sweep.
Each run is also journalled as it finishes (``Journal``): the same command started again after
being killed runs only what it had not finished.
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
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hsc import config  # noqa: E402
from hsc.apps import machine, write_json  # noqa: E402
from hsc.gan.cli import format_table, summarise  # noqa: E402
from hsc.gan.data import DATASETS  # noqa: E402
from hsc.gan.metrics import protocol_of  # noqa: E402
from hsc.gan.train import HSCSettings, RunResult, Snapshot, TrainConfig, default_config, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# name -> changes to TrainConfig (method, adam_lr, ...), HSCSettings or PreconditionerConfig fields.
# "hsc" is the CLI's default configuration; the others name what they change.
METHODS: Dict[str, dict] = {
    "hsc": {},
    "adam": {"method": "adam"},
    "acgd": {"method": "acgd"},
    "hsc saddle_free": {"mode": "saddle_free"},
    "hsc spectral": {"mode": "spectral"},
    "hsc cholesky": {"mode": "cholesky", "scale_rule": "absolute", "scale": 1.0},
    "competitive": {"method": "competitive"},
    # the estimator the data set does not take by default (hsc.gan.data.DATASETS[...].settings)
    "hsc probe": {"estimator": "probe", "sketches": None},
    "hsc gauss_newton": {"estimator": "gauss_newton"},
    # steps with M^-1/2 g: the spread between stiff and flat directions halved on a log scale
    "hsc power 0.5": {"factor_power": 0.5},
}

# Option grids around the default (hsc: saddle_free_root, relative mu), judged on several seeds.
# A variant names every setting its sweep measured that a data set's default has changed since, so
# that running it again measures the same thing: MNIST steps with M^-1/2 and preconditions G only
# now; the digits take Gauss-Newton sketches over the whole batch.
_BOTH_WHOLE = {"players": "both", "factor_power": 1.0}
_EXACT_16 = {"curvature_batch": 16, "sketches": None}  # the digits' curvature before the sketches
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
    # mu relative to the blocks' median |eigenvalue|, widened: how much of the late-training gap to
    # Adam on the image sets is the correction's spread between stiff and flat directions
    "mu": {
        "root rho 1": {**_BOTH_WHOLE},
        "root rho 10": {**_BOTH_WHOLE, "scale": 10.0},
        "root rho 100": {**_BOTH_WHOLE, "scale": 100.0},
    },
    # the causes of the late-training gap on MNIST left after the "mu" sweep: the preconditioner's
    # spread (M^-1/2 halves it on a log scale), Adam's second moment seeing the preconditioned
    # gradient (graft-adam keeps Adam on the raw gradient), curvature 200 steps stale, the estimator
    "late": {
        "root": {**_BOTH_WHOLE, **_EXACT_16},
        "root power 0.5": {**_BOTH_WHOLE, **_EXACT_16, "factor_power": 0.5},
        "graft-adam": {**_BOTH_WHOLE, **_EXACT_16, "base": "graft-adam"},
        "root every 50": {**_BOTH_WHOLE, **_EXACT_16, "update_every": 50},
        "root probe": {**_BOTH_WHOLE, **_EXACT_16, "estimator": "probe"},
    },
    # the digits' late oscillation of simultaneous per-player play (hsc's FD falls to 4.6-8 and
    # rises again, the coupled step's does not): D stepping first, the optimistic step, or
    # sampling the averaged generator
    # (the variants without "average" sample G itself, as they did when measured, before the average
    # became the digits' default)
    "oscillation": {
        "root": {**_EXACT_16, "generator_average": 0.0},
        "root alternating": {"update": "alternating", **_EXACT_16, "generator_average": 0.0},
        "root optimism 0.5": {"optimism": 0.5, **_EXACT_16, "generator_average": 0.0},
        "root optimism 1": {"optimism": 1.0, **_EXACT_16, "generator_average": 0.0},
        "competitive": {"method": "competitive", **_EXACT_16, "generator_average": 0.0},
        # snapshots of the averaged generator (about the last tenth of each run's steps), both methods
        "root average": {**_EXACT_16, "generator_average": 0.999},
        "competitive average": {"method": "competitive", **_EXACT_16, "generator_average": 0.999},
    },
    # the Gauss-Newton blocks exact on 16 samples (16 products a player) against 16 sketches over
    # the whole batch (the same count of products, every sample's rows, sampling noise of the sketch
    # instead of the subsample's); the digits ran the first three, MNIST "root sketch..." and adam
    "sketch": {
        "root": {**_EXACT_16},
        "root sketch 16 whole batch": {"curvature_batch": None, "sketches": 16},
        "competitive": {"method": "competitive"},
        "adam": {"method": "adam"},
    },
    # the refresh period: on the digits the sketched refresh is a quarter of hsc's step time at
    # every 50 steps (bench/results/profile_gan_step.md); what a staler estimate costs
    "refresh": {
        "root": {},
        "root every 100": {"update_every": 100},
        "root every 200": {"update_every": 200},
    },
    # the base optimizer's lr (Adam's DCGAN 2e-4 by default): the digits' hsc runs are still
    # improving at the end of their 60 s while the competitive step has converged (the default,
    # "root", is in the refresh sweep of the same session)
    # HVPs on a subsample of the batch (ring8 and grid25 take them on all 256 samples): on the
    # mixtures' MLPs an HVP is compute-bound (~3.7 ms, ~50 GFLOP/s on one thread; torch.func's
    # vmapped forward-over-reverse took as long), so only fewer samples make the refresh cheaper;
    # what the noisier estimate costs in modes and quality
    "subsample": {
        "root": {},
        "root on 64 samples": {"curvature_batch": 64},
        "root on 32 samples": {"curvature_batch": 32},
    },
    "lr": {
        "root lr 4e-4": {"lr": 4e-4},
        "root lr 1e-3": {"lr": 1e-3},
    },
    # MNIST's late gap to Adam (hsc levels off after ~1,600 steps while Adam improves; the measured
    # cause is the discriminator's Gauss-Newton spectrum widening to ~1e6 around mu): which player
    # the correction serves, and the digits' remedy, sampling the generator's moving average. The
    # digits ran "root", "root G only", "root D only" and "root power 0.5" (M^-1/2 was measured there
    # only with exact blocks on 16 samples, "late"; the sketched blocks since see the whole batch)
    "play": {
        "root": {"players": "both"},
        "root G only": {"players": "G"},
        "root D only": {"players": "D"},
        "root power 0.5": {"players": "both", "factor_power": 0.5},
        "root average": {"players": "both", "generator_average": 0.999},
        "adam": {"method": "adam"},
        "adam average": {"method": "adam", "generator_average": 0.999},
    },
    # the digits' per-player gap to the coupled step (hsc drifts where the competitive step does
    # not, gan_notes.md): lookahead-minmax, both players pulled back jointly every k steps
    "lookahead": {
        "root": {},
        "root lookahead 5": {"lookahead": 5},
        "root lookahead 10": {"lookahead": 10},
        "competitive": {"method": "competitive"},
    },
}


def variant_config(changes: dict, seed: int, seconds: float, data: str = "ring8",
                   snapshots: int = 15) -> TrainConfig:
    """An hsc run on ``data`` (its default settings) with ``changes``: fields of TrainConfig
    (method, adam_lr, ...), of its HSCSettings or of the preconditioner, by name; ``snapshots``
    metric snapshots over the budget besides the first and the last."""
    return config.replace(default_config(data, method="hsc", seed=seed, seconds=seconds,
                                         eval_every_seconds=seconds / snapshots), **changes)


def _run(config: TrainConfig) -> RunResult:
    torch.set_num_threads(1)
    return train(config)


class Journal:
    """The runs of one command as each finishes, so that a command killed part-way (a 15-minute
    image run, 2 at a time, is hours for 5 seeds) and started again skips the runs it finished:
    one JSON line a run in ``bench/results/<stem>.partial.jsonl`` (not committed), keyed by the
    variant's name and its whole TrainConfig; removed when the command has written its results.
    Runs read back from it carry no samples, so they get no sample grid."""

    def __init__(self, stem: str):
        self.path = RESULTS / f"{stem}.partial.jsonl"

    @staticmethod
    def key(name: str, config: TrainConfig) -> str:
        return json.dumps([name, config.to_dict()], sort_keys=True)

    def finished(self) -> Dict[str, dict]:
        if not self.path.exists():
            return {}
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return {line["key"]: line["run"] for line in lines}

    def add(self, name: str, result: RunResult) -> None:
        RESULTS.mkdir(exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"key": self.key(name, result.config), "run": result.to_dict()}) + "\n")

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def run_all(configs: List[TrainConfig], workers: int, names: Optional[List[str]] = None,
            journal: Optional[Journal] = None) -> List[RunResult]:
    """Every config, ``workers`` at a time; ``names`` label the progress lines (default: the method)
    and the ``journal``'s entries."""
    names = names or [config.method for config in configs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        results = []
        for name, r in zip(names, pool.map(_run, configs)):
            print(f"  {r.config.data} {name} seed {r.config.seed}: {r.final} ({r.steps} steps)", flush=True)
            if journal is not None:
                journal.add(name, r)
            results.append(r)
        return results


def run_named(variants: Dict[str, dict], data: str, seeds: List[int], seconds: float,
              workers: int, snapshots: int = 15, done=frozenset(),
              journal: Optional[Journal] = None) -> Dict[str, List[RunResult]]:
    """Every variant on every seed but the (name, seed) pairs in ``done``, seed-major; name -> its
    new runs in seed order. Runs the ``journal`` holds for the same name and config are read back,
    not run again."""
    jobs = [(name, variant_config(variants[name], seed, seconds, data, snapshots))
            for seed in seeds for name in variants if (name, seed) not in done]
    earlier = journal.finished() if journal is not None else {}
    todo = [(name, config) for name, config in jobs if Journal.key(name, config) not in earlier]
    if len(todo) < len(jobs):
        print(f"  {len(jobs) - len(todo)} run(s) read back from {journal.path.name}", flush=True)
    results = iter(run_all([config for _, config in todo], workers, [name for name, _ in todo], journal))
    by_name: Dict[str, List[RunResult]] = {name: [] for name in variants}
    for name, config in jobs:
        key = Journal.key(name, config)
        by_name[name].append(stored_run(earlier[key]) if key in earlier else next(results))
    return by_name


def verdict(summary: dict, method: str = "hsc") -> str:
    """hsc's target against Adam and ACGD (mixtures): modes captured at least both means, % high
    quality at least twice the better of the two."""
    if "high_quality" not in summary.get(method, {}):  # not a mixture (Stacked MNIST counts modes too)
        return ""
    mean = lambda name, key: summary[name][key]["mean"]  # noqa: E731
    peers = [p for p in ("adam", "acgd") if p in summary]
    if not peers:
        return ""
    modes_ok = all(mean(method, "modes") >= mean(p, "modes") for p in peers)
    best_hq = max(mean(p, "high_quality") for p in peers)
    hq_ok = mean(method, "high_quality") >= 2 * best_hq
    return (f"Target ({method}): modes {mean(method, 'modes'):.2f} against "
            + ", ".join(f"{p} {mean(p, 'modes'):.2f}" for p in peers)
            + f" -> {'met' if modes_ok else 'missed'}; % high quality {mean(method, 'high_quality'):.1f} "
            f"against 2 x {best_hq:.1f} = {2 * best_hq:.1f} -> {'met' if hq_ok else 'missed'}.")


def image_verdict(data: str, summary: dict) -> str:
    """The image sets' targets for the best hsc row against Adam and ACGD. MNIST: a lower Frechet
    distance. Stacked MNIST: more modes and a lower reverse KL, at a confident-channel share and a
    per-channel Frechet distance no worse than theirs."""
    peers = [p for p in ("adam", "acgd") if p in summary]
    rows = [n for n in summary if n == "hsc" or n.startswith("hsc ")]
    if data not in ("mnist", "stacked-mnist") or not peers or not rows:
        return ""
    mean = lambda name, key: summary[name][key]["mean"]  # noqa: E731
    if data == "mnist":
        best = min(rows, key=lambda n: mean(n, "frechet"))
        ok = all(mean(best, "frechet") < mean(p, "frechet") for p in peers)
        return (f"Target (best hsc row, {best}): Frechet distance {mean(best, 'frechet'):.1f} against "
                + ", ".join(f"{p} {mean(p, 'frechet'):.1f}" for p in peers) + f" -> {'met' if ok else 'missed'}.")
    best = max(rows, key=lambda n: mean(n, "modes"))
    checks = {"modes": all(mean(best, "modes") > mean(p, "modes") for p in peers),
              "reverse KL": all(mean(best, "reverse_kl") < mean(p, "reverse_kl") for p in peers),
              "% confident channels": all(mean(best, "confident") >= mean(p, "confident") for p in peers),
              "per-channel Frechet distance": all(mean(best, "frechet") <= mean(p, "frechet") for p in peers)}
    keys = {"modes": "modes", "reverse KL": "reverse_kl", "% confident channels": "confident",
            "per-channel Frechet distance": "frechet"}
    parts = [f"{label} {mean(best, keys[label]):.2f} against " + ", ".join(f"{p} {mean(p, keys[label]):.2f}" for p in peers)
             + f" -> {'met' if ok else 'missed'}" for label, ok in checks.items()]
    return f"Target (best hsc row by modes, {best}): " + "; ".join(parts) + "."


def competitive_verdict(summary: dict) -> str:
    """The competitive step's target (mixtures): modes and % high quality at least both ACGD's and
    the best per-player hsc row's means."""
    if "high_quality" not in summary.get("competitive", {}) or "acgd" not in summary:
        return ""
    mean = lambda name, key: summary[name][key]["mean"]  # noqa: E731
    hsc_rows = [n for n in summary if n == "hsc" or n.startswith("hsc ")]
    parts = []
    for key, label in (("modes", "modes"), ("high_quality", "% high quality")):
        best = max(hsc_rows, key=lambda n: mean(n, key))
        ok = mean("competitive", key) >= mean("acgd", key) and mean("competitive", key) >= mean(best, key)
        parts.append(f"{label} {mean('competitive', key):.2f} against acgd {mean('acgd', key):.2f} and "
                     f"{best} {mean(best, key):.2f} -> {'met' if ok else 'missed'}")
    return "Target (competitive): " + "; ".join(parts) + "."


def competitive_cost(runs: dict) -> str:
    """CG iterations and mixed products (D_xy or D_yx times a vector) per step of the competitive
    runs, mean over seeds, beside ACGD's when its runs recorded them."""
    def per_step(name: str, key: str):
        values = [r["stats"]["game"][key] for r in runs.get(name, []) if "game" in r.get("stats", {})]
        return sum(values) / len(values) if values else None
    iterations, products = per_step("competitive", "cg_iterations_per_step"), per_step("competitive", "mixed_products_per_step")
    if iterations is None:
        return ""
    capped = sum(r["stats"]["game"]["cg_capped"] for r in runs["competitive"])
    return (f"Competitive cost: {iterations:.2f} CG iterations and {products:.2f} mixed products a step "
            f"(mean over seeds; {capped} steps over all seeds hit the iteration cap).")


def markdown(report: dict) -> str:
    """gan.md from gan.json's report, with gan_notes.md appended."""
    md = ["# GAN benchmark: hsc's modes against Adam and ACGD at equal wall-clock\n",
          f"- machine (of the last command; each data set names its own below): {report['machine']}; "
          f"{report['workers']} runs at a time, one torch thread each",
          f"- command: `{report['command']}`",
          f"- seeds: {next(iter(report['data'].values()))['seeds'] if report['data'] else []}",
          f"- hsc (the CLI's default): {report['hsc_defaults']}",
          "- the other rows change: " + "; ".join(f"{n}: {c}" for n, c in report["methods"].items() if c), ""]
    for data, entry in report["data"].items():
        names = protocol_of(data).names
        load = entry.get("load_average_1min_before_after")
        lines = [verdict(entry["summary"]), image_verdict(data, entry["summary"]),
                 competitive_verdict(entry["summary"]), competitive_cost(entry["runs"])]
        reference = entry.get("reference")
        settings = entry.get("settings", DATASETS[data].settings)
        measured = (f"Measured on {entry['machine']}: `{entry['command']}`.\n\n" if "machine" in entry
                    else "Measured on the machine and with the command above.\n\n")
        md += [f"## {data}: {entry['seconds']:g} s of training per run, {len(entry['seeds'])} seeds (mean ± std)", "",
               measured + (f"1-min load average before / after: {load[0]:.1f} / {load[1]:.1f} "
                           f"(2 cores; above 2 means other work shared the machine)" if load else ""), "",
               f"The data set's own settings when measured (`hsc gan --data {data}`'s "
               f"default then): {settings or 'none'}.", "",
               format_table(entry["summary"], names, reference), ""] + [x + "\n" for x in lines if x] + [
               f"Metrics against training seconds: `{entry.get('figures', f'gan_{data}')}.png`.", ""]
    notes = RESULTS / f"{report.get('name', 'gan')}_notes.md"
    if notes.exists():
        md += ["", notes.read_text()]
    return "\n".join(md) + "\n"


def stored_run(run: dict) -> RunResult:
    """A run read back from a report's JSON: what the summary and the curves need (no samples)."""
    return RunResult(config=TrainConfig(method=run["method"], seed=run["seed"]), steps=run["steps"],
                     seconds=run["seconds"], final=run["final"], history=[Snapshot(**s) for s in run["history"]],
                     samples=None, stats=run["stats"])


def added_to(entry: Optional[dict], methods: Dict[str, dict], seconds: float, seeds: List[int],
             where: str) -> Dict[str, list]:
    """--add: the runs of a report's entry that stay, by method. The new runs must match its budget;
    ``seeds`` may extend its seeds, and then every row is brought to them (no table mixes seed
    counts), so ``methods`` must name each of its methods; the (method, seed) pairs it holds are
    not run again."""
    if entry is None or entry["seconds"] != seconds or not set(entry["seeds"]) <= set(seeds):
        raise SystemExit(f"--add: {where} has no entry of {seconds:g} s on seeds within {seeds}")
    if set(entry["seeds"]) != set(seeds) and not set(entry["runs"]) <= set(methods):
        raise SystemExit(f"--add with more seeds than {entry['seeds']}: --methods must name every row of "
                         f"{where} ({', '.join(entry['runs'])})")
    return {n: rs for n, rs in entry["runs"].items() if n not in methods or set(entry["seeds"]) != set(seeds)}


def benchmark(args) -> None:
    from hsc.gan.plots import plot_curves

    from hsc.gan.cli import save_sample_grids

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    methods = {name: METHODS[name] for name in args.methods.split(",")}
    path = RESULTS / f"{args.report}.json"
    # data sets measured earlier into the same report stay in it (each is measured in one run)
    earlier = json.loads(path.read_text()) if path.exists() else {"data": {}, "methods": {}}
    report = {"name": args.report, "machine": machine(), "command": " ".join(sys.argv), "workers": args.workers,
              "hsc_defaults": dataclasses.asdict(HSCSettings()), "methods": {**earlier["methods"], **methods},
              "data": earlier["data"]}
    journal = Journal(args.report)
    for data in args.data.split(","):
        seconds = DATASETS[data].seconds * args.scale
        kept, command, settings = {}, " ".join(sys.argv), DATASETS[data].settings
        if args.add:
            entry = report["data"].get(data)
            kept = added_to(entry, methods, seconds, seeds, f"{path.name}'s {data}")
            # rows measured under other data-set settings go, unless those changed only hsc's fields
            # and the rows are another method's
            before = entry.get("settings", settings)
            changed = {k for k in {**before, **settings} if before.get(k) != settings.get(k)}
            hsc_fields = config.all_names(HSCSettings())
            stale = [n for n in kept if changed and (not changed <= hsc_fields
                                                     or METHODS.get(n, {}).get("method", "hsc") == "hsc")]
            if stale:
                raise SystemExit(f"--add: {data}'s settings changed since {path.name} was measured "
                                 f"({entry.get('settings')} -> {settings}); --methods must name {', '.join(stale)}")
            command = f"{entry['command']}; then {command}"
        load_before = os.getloadavg()[0]
        t0 = time.time()
        done = {(n, r["seed"]) for n, rs in kept.items() for r in rs}
        by_name = run_named(methods, data, seeds, seconds, args.workers, args.snapshots, done, journal)
        runs = {n: sorted(kept.get(n, []) + [r.to_dict() for r in by_name.get(n, [])], key=lambda r: r["seed"])
                for n in {**kept, **methods}}
        every = {n: [stored_run(r) for r in rs] for n, rs in runs.items()}
        spec = DATASETS[data]
        protocol, dataset = protocol_of(data), spec.load()
        summary = summarise(every, list(protocol.names))
        reference = protocol.reference(dataset) if dataset.held_out is not None else None
        report["data"][data] = {"seconds": seconds, "seeds": seeds, "summary": summary, "reference": reference,
                                "command": command, "machine": machine(), "settings": settings,
                                "runs": runs,
                                "elapsed": time.time() - t0, "figures": f"{args.figures}_{data}",
                                "load_average_1min_before_after": (load_before, os.getloadavg()[0])}
        RESULTS.mkdir(exist_ok=True)
        write_json(path, report)  # first, after every data set: a later failure keeps what was measured
        print(format_table(summary, protocol.names, reference) + "\n" + verdict(summary) + image_verdict(data, summary))
        plot_curves(every, protocol, RESULTS / f"{args.figures}_{data}.png")
        if not dataset.is_points:  # the new runs' samples (the JSON keeps no samples), one panel a seed
            ran = sorted({r.config.seed for rs in by_name.values() for r in rs})
            extra = "" if not ran or ran[0] == seeds[0] else f"_seeds{ran[0]}-{ran[-1]}"  # earlier grids stay
            sampled = {n: [r for r in rs if r.samples is not None] for n, rs in by_name.items()}
            save_sample_grids({n: rs for n, rs in sampled.items() if rs}, dataset, protocol, RESULTS,
                              f"{args.figures}_{data}{extra}")
        (RESULTS / f"{args.report}.md").write_text(markdown(report))
    journal.close()


def sweep(args) -> None:
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    variants = SWEEPS[args.sweep]
    if args.only:
        variants = {n: variants[n] for n in args.only.split(",")}
    for data in args.data.split(","):
        seconds = DATASETS[data].seconds * args.scale
        # seeds other than 0, 1, ... (held out from the choice the sweep informed) get files of their own
        held_out = f"_seeds{seeds[0]}-{seeds[-1]}" if seeds[0] else ""
        stem = f"gan_sweep_{args.sweep}_{data}{held_out}"
        path, command = RESULTS / f"{stem}.json", " ".join(sys.argv)
        runs: Dict[str, list] = {}
        # the variants measured earlier on the same seeds and budget stay beside the new ones
        earlier = json.loads(path.read_text()) if path.exists() else None
        if earlier and earlier["seconds"] == seconds and earlier["seeds"] == seeds:
            runs = {n: rs for n, rs in earlier["runs"].items() if n not in variants}
            variants = {**{n: earlier["variants"][n] for n in runs}, **variants}
            command = f"{earlier['command']}; then {command}" if runs else command
        journal = Journal(stem)
        by_name = run_named({n: c for n, c in variants.items() if n not in runs}, data, seeds, seconds,
                            args.workers, args.snapshots, journal=journal)
        runs.update({n: [r.to_dict() for r in rs] for n, rs in by_name.items()})
        names = protocol_of(data).names
        table = format_table(summarise({n: [stored_run(r) for r in rs] for n, rs in runs.items()}, list(names)), names)
        print(table)
        RESULTS.mkdir(exist_ok=True)
        out = {"data": data, "machine": machine(), "command": command, "seconds": seconds, "seeds": seeds,
               "settings": DATASETS[data].settings, "variants": variants, "runs": runs}
        path.write_text(json.dumps(out, indent=1))
        (RESULTS / f"{stem}.md").write_text(
            f"# hsc sweep '{args.sweep}' on {data}, {seconds:g} s, seeds {seeds}\n\n- machine: {machine()}\n"
            f"- command: `{command}`\n- variants (changes to {dataclasses.asdict(HSCSettings())} with the "
            f"data set's settings {DATASETS[data].settings}):\n"
            + "".join(f"  - {n}: {c}\n" for n, c in variants.items()) + "\n" + table + "\n")
        journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="ring8,grid25,digits")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds --first-seed, --first-seed + 1, ... (e.g. 5 for seeds held out from a choice)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the per-data seconds")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--report", default="gan", help="results file stem: bench/results/<report>.{json,md}")
    parser.add_argument("--figures", default="gan",
                        help="figure names: <figures>_<data>.png (metrics against seconds) and "
                             "<figures>_<data>-<method>.png (samples); another prefix keeps earlier figures")
    parser.add_argument("--snapshots", type=int, default=15, help="metric snapshots per run (besides the first)")
    parser.add_argument("--sweep", default="", help=f"run an option grid instead: one of {list(SWEEPS)}")
    parser.add_argument("--only", default="", help="sweep: comma list of variant names")
    parser.add_argument("--add", action="store_true",
                        help="keep the data set's runs already in the report and add --methods beside them "
                             "(same seconds and seeds)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="gan.md again from gan.json and gan_notes.md, running nothing")
    args = parser.parse_args()
    if args.markdown_only:
        (RESULTS / f"{args.report}.md").write_text(markdown(json.loads((RESULTS / f"{args.report}.json").read_text())))
    elif args.sweep:
        sweep(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
