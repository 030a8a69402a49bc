"""Preconditioned L-BFGS beyond style transfer: evaluations and seconds to a target loss.

Plain script (not collected by pytest; needs scipy, the [bench] extra)::

    python bench/bench_lbfgs.py          # bench/results/lbfgs.{md,json}

Two problems, float64, one torch thread:

- ``blocks``: f(x) = 1/2 x^T H x - c^T x + 1/4 sum_i w_i x_i^4 on n = 4096, with H = B + U U^T: B block
  diagonal (blocks of 8, each with eigenvalues log-spread over four decades and scaled by 1 to 100)
  and a rank-4 coupling U U^T holding about a tenth of B's norm. The block structure is known;
  the coupling is what L-BFGS's pairs catch.
- ``digits``: multinomial logistic regression on scikit-learn's bundled digits (1797 images of
  8 x 8 pixels, 10 classes, pixels scaled to [0, 1]), W [64, 10] and bias [10], L2 1e-4.

Methods, same strong-Wolfe line search and history: torch.optim.LBFGS; hsc.PreconditionedLBFGS
with the probe estimator's blocks (blocks: b = 8; digits: b = 10, one feature's weights over the
classes) in mode saddle_free_root with relative mu, refreshed every 20 iterations from the same
loss; scipy's L-BFGS-B (the same history, fun and jac from torch). Target: the optimum's loss
(from a long float64 run) plus 1e-8 of its magnitude, plus 1e-10. Reported: evaluations (one
loss + gradient each; the preconditioner's refresh evaluation counted) and seconds until the
target is first reached, and HVPs.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from conftest import machine  # noqa: E402
from hsc import PreconditionedLBFGS, PreconditionerConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DT = torch.float64
HISTORY = 20
MAX_EVALUATIONS = 3000


def blocks_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, b = 4096, 8
    N = n // b
    Q, _ = torch.linalg.qr(torch.randn(N, b, b, dtype=DT, generator=g))
    lam = 10 ** (4 * torch.rand(N, b, dtype=DT, generator=g) - 2) * (1 + 99 * torch.rand(N, 1, dtype=DT, generator=g))
    B = (Q * lam[:, None, :]) @ Q.mT
    U = torch.randn(n, 4, dtype=DT, generator=g)
    U *= (0.1 * B.norm() / (U @ U.T).norm()).sqrt()
    c = torch.randn(n, dtype=DT, generator=g)
    w = torch.rand(n, dtype=DT, generator=g) * 0.1

    def f(x: torch.Tensor) -> torch.Tensor:
        xb = x.view(N, b, 1)
        quad = 0.5 * (xb.mT @ B @ xb).sum() + 0.5 * ((U.T @ x) ** 2).sum()
        return quad - c @ x + 0.25 * (w * x ** 4).sum()

    return f, torch.zeros(n, dtype=DT), b


def digits_problem():
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.data, dtype=DT) / 16.0
    y = torch.tensor(data.target)

    def f(theta: torch.Tensor) -> torch.Tensor:
        W, bias = theta[:640].view(64, 10), theta[640:]
        logits = X @ W + bias
        return torch.nn.functional.cross_entropy(logits, y) + 1e-4 * (W ** 2).sum()

    return f, torch.zeros(650, dtype=DT), 10


class Recorder:
    """Counts evaluations and the time of the first one that reaches the target."""

    def __init__(self, target: float):
        self.target, self.evaluations, self.t0 = target, 0, time.perf_counter()
        self.hit: Optional[dict] = None
        self.best = float("inf")

    def seen(self, loss: float) -> None:
        self.evaluations += 1
        self.best = min(self.best, loss)
        if self.hit is None and loss <= self.target:
            self.hit = {"evaluations": self.evaluations, "seconds": time.perf_counter() - self.t0}


def run_torch(f: Callable, x0: torch.Tensor, target: float, preconditioner: Optional[PreconditionerConfig]) -> dict:
    x = x0.clone().requires_grad_(True)
    if preconditioner is None:
        opt = torch.optim.LBFGS([x], lr=1, max_iter=MAX_EVALUATIONS, max_eval=MAX_EVALUATIONS,
                                history_size=HISTORY, line_search_fn="strong_wolfe", tolerance_grad=0,
                                tolerance_change=0)
    else:
        opt = PreconditionedLBFGS([x], lr=1, max_iter=MAX_EVALUATIONS, max_eval=MAX_EVALUATIONS,
                                  history_size=HISTORY, tolerance_grad=0, tolerance_change=0,
                                  preconditioner=preconditioner)
    rec = Recorder(target)

    def closure():
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        rec.seen(float(loss))
        if rec.hit is not None:  # stop at the target: a NaN gradient ends torch's loop at once
            x.grad.fill_(0)
        return loss

    def curvature():
        rec.seen(float("inf"))  # the refresh's loss evaluation counts, but sets no record
        return f(x)

    if preconditioner is None:
        opt.step(closure)
    else:
        opt.step(closure, curvature)
    out = {"reached": rec.hit is not None, **(rec.hit or {}), "evaluations_total": rec.evaluations,
           "best": rec.best}
    if preconditioner is not None:
        out["hvps"] = opt.preconditioner.counters["hvps"]
    return out


def run_scipy(f: Callable, x0: torch.Tensor, target: float) -> dict:
    from scipy.optimize import minimize

    rec = Recorder(target)

    def fun(v: np.ndarray):
        x = torch.tensor(v, dtype=DT, requires_grad=True)
        loss = f(x)
        loss.backward()
        rec.seen(float(loss))
        return float(loss), x.grad.numpy()

    minimize(fun, x0.numpy(), jac=True, method="L-BFGS-B",
             options={"maxcor": HISTORY, "maxfun": MAX_EVALUATIONS, "maxiter": MAX_EVALUATIONS, "ftol": 0,
                      "gtol": 0})
    return {"reached": rec.hit is not None, **(rec.hit or {}), "evaluations_total": rec.evaluations,
            "best": rec.best}


def optimum(f: Callable, x0: torch.Tensor) -> float:
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=20000, max_eval=40000, history_size=100,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-14, tolerance_change=0)

    def closure():
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    opt.step(closure)
    return float(f(x))


def main() -> None:
    torch.set_num_threads(1)
    problems = {"blocks": blocks_problem(), "digits": digits_problem()}
    report = {"machine": machine(), "history": HISTORY, "max_evaluations": MAX_EVALUATIONS, "problems": {}}
    lines = ["# Preconditioned L-BFGS against torch.optim.LBFGS and scipy's L-BFGS-B", "",
             f"- machine: {report['machine']['cpu']}, torch {report['machine']['torch']}, one torch thread; "
             f"command: `{' '.join(sys.argv)}`",
             f"- float64; history {HISTORY}; strong-Wolfe line search for both torch methods; scipy L-BFGS-B with "
             "maxcor = the same history; target = the optimum's loss + 1e-8 |loss| + 1e-10", "",
             "| problem | method | evaluations to target | seconds to target | HVPs |",
             "|---|---|---|---|---|"]
    for name, (f, x0, b) in problems.items():
        best = optimum(f, x0)
        target = best + 1e-8 * abs(best) + 1e-10
        pre = PreconditionerConfig(block_size=b, update_every=20, mode="saddle_free_root", scale_rule="relative",
                                   ema=0.0)
        rows: Dict[str, dict] = {
            "torch.optim.LBFGS": run_torch(f, x0, target, None),
            "hsc.PreconditionedLBFGS": run_torch(f, x0, target, pre),
            "scipy L-BFGS-B": run_scipy(f, x0, target),
        }
        report["problems"][name] = {"optimum": best, "target": target, "rows": rows}
        for method, r in rows.items():
            lines.append(f"| {name} | {method} | {r['evaluations'] if r['reached'] else 'not reached'} | "
                         f"{r['seconds']:.3f} | {r.get('hvps', 0)} |" if r["reached"] else
                         f"| {name} | {method} | not reached in {r['evaluations_total']} (best {r['best']:.10g}) | - | "
                         f"{r.get('hvps', 0)} |")
            print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lbfgs.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "lbfgs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
