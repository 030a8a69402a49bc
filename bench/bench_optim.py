"""Step time of the HSC optimizer against Adam on an MLP of about 1M parameters.

    python -m pytest bench/bench_optim.py

Times, per block size b, one refresh (split into HVPs / assembly / factorisation) and one
ordinary step (gradient, apply = gather + solve + scatter, momentum update), for the compiled ops
and for a pure-torch path doing the same assembly and factorisation with torch ops; then reports the
amortised step at update_every in {1, 10, 50, 100} against an Adam step measured in the same run,
for the Cholesky mode and the spectral mode saddle_free_root (relative mu), whose refresh takes an
eigen-decomposition instead.
Writes bench/results/cpu_optim.json and cpu_optim.md.
"""
from __future__ import annotations

import time

import pytest
import torch

from hsc import ops, reference
from hsc.optim import HSC

BLOCK_SIZES = [8, 16, 32, 64]
MODES = {"cholesky": {"scale_rule": "absolute"}, "saddle_free_root": {"scale_rule": "relative"}}
BATCH = 256
CURVATURE_ROWS = 64  # the subsampled-curvature variant: HVPs on a quarter of the batch


def make_net(seed: int = 0) -> torch.nn.Module:
    """The benchmark MLP: 256 -> 1024 -> 512 -> 256 -> 10, ReLU, 0.92 M parameters."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(256, 1024), torch.nn.ReLU(),
        torch.nn.Linear(1024, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 10))


def make_batch(seed: int = 0, batch: int = BATCH):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 256, generator=g), torch.randint(0, 10, (batch,), generator=g)


def make_problem(seed: int = 0):
    net = make_net(seed)
    X, y = make_batch(seed)
    return net, (lambda: torch.nn.functional.cross_entropy(net(X), y))


def torch_assembly(state, hvps, signs, mask, ema, first):
    """The pure-torch counterpart of ops.accumulate_probes."""
    est = torch.einsum("sk,sjki->kij", signs, hvps) / signs.shape[0]
    est = 0.5 * (est + est.mT)
    real = mask[:, :, None] & mask[:, None, :]
    eye = torch.eye(est.shape[-1], dtype=est.dtype).expand_as(est)
    est = torch.where(real, est, eye)
    state.copy_(est if first else ema * state + (1 - ema) * est)


def torch_correct(H, mode="cholesky"):
    """The pure-torch counterpart of ops.correct: the reference's definition (with its damping
    retries, or torch.linalg.eigh), run in H's dtype; M^{-1} as torch keeps it, [N, b, b] (not
    packed)."""
    return reference.corrected_inverse(H, mode=mode, dtype=H.dtype)[0]


def timed(fn, repeats=3):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_adam_step(benchmark, collector):
    net, loss_fn = make_problem()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    n = sum(p.numel() for p in net.parameters())
    collector.add("optim", ("adam",), "step", benchmark.stats.stats.median, params=n, batch=BATCH)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("b", BLOCK_SIZES)
def test_hsc_components(benchmark, collector, b, mode):
    net, loss_fn = make_problem()
    opt = HSC(net.parameters(), lr=1e-3, block_size=b, update_every=10 ** 9, mode=mode, **MODES[mode])
    pc = opt.preconditioners[0]
    opt.step(loss_fn)  # the first call refreshes: warm-up and a factor to apply

    # One refresh, compiled path, split by the preconditioner's own timers.
    before = dict(pc.timings)

    def refresh():
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(), pc.params, create_graph=True)
            pc.refresh(grads)

    runs = 4  # timed() calls refresh once to warm up and three times more
    timed(refresh)
    split = {k: (pc.timings[k] - before[k]) / runs for k in ("hvp", "assembly", "factorisation")}
    refresh_seconds = sum(split.values())

    # The same refresh with the HVPs on the first CURVATURE_ROWS rows (HSC.step's curvature_closure).
    X, y = make_batch(0)
    before = dict(pc.timings)

    def refresh_subsampled():
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(net(X[:CURVATURE_ROWS]), y[:CURVATURE_ROWS])
            pc.refresh(torch.autograd.grad(loss, pc.params, create_graph=True))

    timed(refresh_subsampled)
    split_subsampled = {k: (pc.timings[k] - before[k]) / runs for k in ("hvp", "assembly", "factorisation")}

    # The same assembly and factorisation with torch ops, on the same data.
    with torch.enable_grad():
        from hsc.curvature import draw_signs, probe_hvps
        grads = torch.autograd.grad(loss_fn(), pc.params, create_graph=True)
        signs = draw_signs(pc.generator, 1, pc.layout.num_blocks, grads[0].dtype, grads[0].device)
        hvps = probe_hvps(pc.layout, grads, pc.params, signs)
        hvps = hvps.detach()
    state = pc.estimate.clone()
    torch_split = {
        "assembly": timed(lambda: torch_assembly(state, hvps, signs, pc.layout.mask, 0.9, False)),
        "factorisation": timed(lambda: torch_correct(state, mode)),
    }
    G = pc.layout.gather([p.detach().clone() for p in pc.params])
    factor = torch_correct(state, mode)
    torch_split["solve"] = timed(lambda: torch.bmm(factor, G.unsqueeze(-1)))
    compiled_solve = timed(lambda: ops.solve(pc.correction, G))

    # An ordinary step: gradient, apply, momentum update (no refresh due).
    apply_before = pc.timings["apply"]
    steps = 10
    benchmark.pedantic(lambda: opt.step(loss_fn), rounds=steps, warmup_rounds=1)
    apply = (pc.timings["apply"] - apply_before) / (steps + 1)
    collector.add("optim", ("hsc", b, mode), "step", benchmark.stats.stats.median, b=b, mode=mode,
                  refresh=refresh_seconds,
                  split=split, split_subsampled=split_subsampled,
                  curvature_rows=CURVATURE_ROWS, apply=apply, torch_split=torch_split,
                  compiled_solve=compiled_solve, blocks=pc.layout.num_blocks)
