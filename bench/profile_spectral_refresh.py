"""Where the spectral refresh's factorisation goes, against the fused routes, on the blocks of
bench_optim.py's 0.92 M-parameter MLP (one refresh's probe estimate, float32).

    python bench/profile_spectral_refresh.py [--threads 2] [--block-sizes 32,64]

The spectral modes with the relative mu (the Preconditioner's ``_factorise_spectral``) take
``ops.eigh`` of every block, mu from the median |eigenvalue|, then ``ops.correct_from_eigh_``; the
fused ``ops.correct_`` decomposes and composes in one pass but needs mu first. Prints the best of
5 calls of each piece in ms, and ``ops.eigh`` per block on every block against the first 2,048
(small outputs against the whole estimate's). No file is written: the figures are read in
bench/results/cpu_eigh_notes.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_optim import make_problem, timed  # noqa: E402
from hsc import ops  # noqa: E402
from hsc import preconditioner as precond  # noqa: E402
from hsc.optim import HSC  # noqa: E402


def best_ms(fn) -> float:
    return 1e3 * timed(fn, repeats=5)


def profile(b: int) -> dict:
    net, loss_fn = make_problem()
    opt = HSC(net.parameters(), lr=1e-3, block_size=b, update_every=10 ** 9, mode="saddle_free_root",
              scale_rule="relative")
    opt.step(loss_fn)  # the first call refreshes: an estimate and a factor
    pre = opt.preconditioners[0]
    cfg, H, factor = pre.config, pre.estimate, pre.correction.factor
    eigen = ops.eigh(H, max_sweeps=cfg.max_sweeps)
    failed = (eigen.status != ops.Status.FACTORISED)[:, None]
    values = precond.real_eigenvalues(eigen.eigenvalues.masked_fill(failed, float("nan")), pre.layout.mask)
    mu = precond.relative_statistic(values)
    small = H[:2048].clone()
    eigh_ms = best_ms(lambda: ops.eigh(H, max_sweeps=cfg.max_sweeps))
    return {
        "blocks": H.shape[0],
        "eigh": eigh_ms,
        "eigh us/block, all blocks": 1e3 * eigh_ms / H.shape[0],
        "eigh us/block, 2,048 blocks": 1e3 * best_ms(lambda: ops.eigh(small, max_sweeps=cfg.max_sweeps)) / 2048,
        "mu: real_eigenvalues + relative_statistic": best_ms(lambda: precond.relative_statistic(
            precond.real_eigenvalues(eigen.eigenvalues.masked_fill(failed, float("nan")), pre.layout.mask))),
        "spectrum_summary": best_ms(lambda: precond.spectrum_summary(values, mu)),
        "correct_from_eigh_": best_ms(lambda: ops.correct_from_eigh_(
            factor, eigen, scale=mu, mode=cfg.mode, keep_failed=pre.has_factor, power=cfg.factor_power)),
        "the whole _factorise_spectral": best_ms(pre._factorise_spectral),
        "fused correct_ (saddle_free_root, mu given)": best_ms(lambda: ops.correct_(
            factor, H, damping=cfg.damping, scale=mu, mode="saddle_free_root", keep_failed=pre.has_factor)),
        "fused correct_ (cholesky)": best_ms(lambda: ops.correct_(
            factor, H, damping=cfg.damping, scale=1e-3, mode="cholesky", keep_failed=pre.has_factor)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block-sizes", default="32,64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for b in (int(x) for x in args.block_sizes.split(",")):
        result = profile(b)
        print(f"b = {b}, {result.pop('blocks')} blocks, float32, {args.threads} threads (ms unless stated)")
        for name, value in result.items():
            print(f"  {name:45s} {value:8.2f}")


if __name__ == "__main__":
    main()
