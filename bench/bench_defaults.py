"""The library's defaults: ``hsc.HSC(params)`` and ``hsc.Preconditioner(params)`` with no options.

Plain script (not collected by pytest)::

    python bench/bench_defaults.py            # bench/results/defaults.{md,json}

``HSC``'s learning rate is the one option without an obvious value: its step is M^-1 g with the
saddle-free root's M^-1 ~ 1/|lambda| on stiff directions and 1/mu on flat ones, so lr = 1 with no
momentum is a Newton step on the stiff directions. The grid runs ``HSC(params, lr=lr)`` (every
other option the library's default) for 300 steps on five problems, three seeds each, float64
and one torch thread, and records the final loss relative to the best any run reached on that
problem (1 = the best; steps skipped for non-finite values and divergence counted). Adam at its
default lr (1e-3) and at 1e-2 runs beside it for scale.

Problems (deterministic full-batch losses; the seed draws the network's init):
- ``regression``: an MLP 20 -> 64 -> 64 -> 1 (tanh) fitting a random teacher MLP on 512 points.
- ``logistic``: multinomial logistic regression on scikit-learn's 8x8 digits (convex).
- ``blocks``: bench_lbfgs.py's ill-conditioned quadratic with block structure and a quartic term.
- ``digits-mlp``: an MLP 64 -> 128 -> 10 (ReLU) classifying the 8x8 digits, cross entropy.
- ``autoencoder``: an MLP 64 -> 32 -> 8 -> 32 -> 64 (tanh) reconstructing the digits.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench_lbfgs import blocks_problem  # noqa: E402
from hsc import HSC, StepControl  # noqa: E402
from hsc.apps import machine, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DT = torch.float64
STEPS = 300
SEEDS = (0, 1, 2)
LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
TRUST_LRS = (0.01, 0.1, 1.0)  # with StepControl('trust'): deterministic losses only


def _digits() -> Tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data, dtype=DT) / 16.0, torch.tensor(data.target)


def regression(seed: int):
    g = torch.Generator().manual_seed(1000)
    x = torch.randn(512, 20, generator=g, dtype=DT)
    with torch.no_grad():
        torch.manual_seed(1000)
        teacher = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 1)).to(DT)
        y = teacher(x)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)).to(DT)
    return list(model.parameters()), lambda: nn.functional.mse_loss(model(x), y)


def logistic(seed: int):
    X, y = _digits()
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(0.01 * torch.randn(64, 10, generator=g, dtype=DT))
    b = torch.nn.Parameter(torch.zeros(10, dtype=DT))
    return [W, b], lambda: nn.functional.cross_entropy(X @ W + b, y) + 1e-4 * (W ** 2).sum()


def blocks(seed: int):
    f, x0, _ = blocks_problem(0)
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.Parameter(x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=DT))
    return [x], lambda: f(x)


def digits_mlp(seed: int):
    X, y = _digits()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(DT)
    return list(model.parameters()), lambda: nn.functional.cross_entropy(model(X), y)


def autoencoder(seed: int):
    X, _ = _digits()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 8), nn.Tanh(), nn.Linear(8, 32), nn.Tanh(),
                          nn.Linear(32, 64)).to(DT)
    return list(model.parameters()), lambda: nn.functional.mse_loss(model(X), X)


PROBLEMS: Dict[str, Callable[[int], Tuple[List[torch.Tensor], Callable[[], torch.Tensor]]]] = {
    "regression": regression, "logistic": logistic, "blocks": blocks, "digits-mlp": digits_mlp,
    "autoencoder": autoencoder}


def run(problem: str, method: str, lr: float, seed: int) -> dict:
    params, loss_fn = PROBLEMS[problem](seed)
    with torch.no_grad():
        initial = float(loss_fn())
    t0 = time.perf_counter()
    if method.startswith("hsc"):
        opt = HSC(params, lr=lr, step_control=StepControl() if method == "hsc trust" else None)
        for _ in range(STEPS):
            opt.step(loss_fn)
        skipped = sum(v for k, v in opt.counters.items() if k.startswith("skipped"))
    else:
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(STEPS):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
        skipped = 0
    with torch.no_grad():
        final = float(loss_fn())
    return {"problem": problem, "method": method, "lr": lr, "seed": seed, "initial_loss": initial,
            "final_loss": final, "diverged": not (math.isfinite(final) and final <= initial),
            "skipped": skipped, "seconds": time.perf_counter() - t0}


def summarise(rows: List[dict], variants) -> Tuple[dict, List[str]]:
    """Per variant: the mean final loss per problem, its mean rank among the variants (over problems
    and seeds; a diverged run ranks last) and the diverged runs."""
    summary = {}
    for method, lr in variants:
        summary[f"{method} {lr:g}"] = {"method": method, "lr": lr, "losses": {}, "ranks": [], "diverged": 0}
    for p in PROBLEMS:
        for seed in SEEDS:
            mine = [r for r in rows if r["problem"] == p and r["seed"] == seed]
            order = sorted(mine, key=lambda r: (r["diverged"], r["final_loss"]))
            for rank, r in enumerate(order, 1):
                summary[f"{r['method']} {r['lr']:g}"]["ranks"].append(rank)
        for key, entry in summary.items():
            runs = [r for r in rows if r["problem"] == p and f"{r['method']} {r['lr']:g}" == key]
            entry["diverged"] += sum(r["diverged"] for r in runs)
            finite = [r["final_loss"] for r in runs if not r["diverged"]]
            entry["losses"][p] = sum(finite) / len(finite) if len(finite) == len(runs) else None
    table = ["| method | lr | " + " | ".join(PROBLEMS) + " | mean rank | diverged runs |",
             "|---|---|" + "---|" * (len(PROBLEMS) + 2)]
    for key, e in summary.items():
        e["mean_rank"] = sum(e["ranks"]) / len(e["ranks"])
        cells = [f"{v:.4g}" if v is not None else "diverged" for v in e["losses"].values()]
        table.append(f"| {e['method']} | {e['lr']:g} | " + " | ".join(cells)
                     + f" | {e['mean_rank']:.2f} | {e['diverged']} |")
    return summary, table


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    variants = [("hsc", lr) for lr in LRS] + [("hsc trust", lr) for lr in TRUST_LRS] + \
        [("adam", 1e-3), ("adam", 1e-2)]
    for problem in PROBLEMS:
        for method, lr in variants:
            for seed in SEEDS:
                rows.append(run(problem, method, lr, seed))
                r = rows[-1]
                print(f"{problem} {method} lr {lr:g} seed {seed}: {r['final_loss']:.4g} "
                      f"({r['skipped']} skipped, {r['seconds']:.1f} s)", flush=True)
    summary, table = summarise(rows, variants)
    plain = [e for e in summary.values() if e["method"] == "hsc" and e["diverged"] == 0]
    chosen = min(plain, key=lambda e: e["mean_rank"]) if plain else None
    md = ["# The library's defaults: HSC's learning rate", "",
          f"- machine: {machine()}", "- command: `python bench/bench_defaults.py`",
          f"- {STEPS} steps, seeds {SEEDS}, float64, one thread; every HSC option but lr is the library's "
          "default (saddle_free_root, relative mu, b = 16, refresh every 50, momentum 0.9, no step "
          "control); `hsc trust` adds StepControl('trust')",
          "- cells: the mean final loss over the seeds (`diverged`: a run ended non-finite or above its "
          "initial loss); mean rank: the variant's rank among all rows on each problem and seed (1 the "
          "lowest final loss; diverged runs last), averaged", "", *table, "",
          f"Lowest mean rank of the plain HSC rows without a diverged run: lr {chosen['lr']:g} "
          f"(mean rank {chosen['mean_rank']:.2f})." if chosen else "Every plain HSC row diverged somewhere.", ""]
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "defaults.json", {"machine": machine(), "steps": STEPS, "seeds": SEEDS, "rows": rows,
                                           "summary": summary})
    (RESULTS / "defaults.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
