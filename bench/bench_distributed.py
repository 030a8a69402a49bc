"""Sharded hsc at R = 1 and 2 ranks on this machine, against every rank doing all blocks itself.

    python -m pytest bench/bench_distributed.py

The bench_optim MLP (0.92 M parameters, float32), a global batch of 256 split over the ranks,
block sizes 16 and 32, gloo on loopback, one thread per rank (R = 1 is also run with two threads,
the whole machine). For each configuration, medians over REPEATS of:

- refresh: one ``Preconditioner.refresh`` on this rank's micro-batch, split into HVPs / assembly /
  communication / factorisation by the preconditioner's own timers (communication includes waiting
  for the slower rank);
- step: one ``precondition_`` (gather, solve, all-gather, scatter) of the same gradient each time;
  DDP's gradient all-reduce, the same in every variant, is not included;
- replicated: the alternative without ownership (:class:`ReplicatedPreconditioner`). Every rank
  refreshes all blocks from its micro-batch, an all-reduce (mean) of the whole estimate makes them
  agree, and every rank factorises and solves all N blocks; steps need no collective.

Both variants are measured the same way, in the same processes, alternating repeat by repeat:
the wall-clock (``time.perf_counter``) of the one ``refresh`` or ``precondition_`` call, from a
barrier that starts the ranks together to the call's return, on rank 0.

Bytes are payloads handed to the collectives per rank (``RankGroup.sent_bytes``). Writes
bench/results/distributed.{md,json}, with a projection to 8 and 64 GPUs from the measured costs of
each piece of a refresh and a step (one process, one thread) and the bandwidths named in the report.

A quick check of the script on small sizes, writing elsewhere:

    HSC_BENCH_DIST_WIDTHS=64,32,10 HSC_BENCH_DIST_BLOCK_SIZES=8 HSC_BENCH_DIST_REPEATS=1 \
        HSC_BENCH_RESULTS=/tmp/r python -m pytest bench/bench_distributed.py
"""
from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist

import hsc
from bench_optim import BATCH, make_batch, make_net
from conftest import RESULTS, machine
from hsc import ops
from hsc.curvature import draw_signs
from hsc.preconditioner import all_finite

REPEATS = int(os.environ.get("HSC_BENCH_DIST_REPEATS", 5))
BLOCK_SIZES = [int(b) for b in os.environ.get("HSC_BENCH_DIST_BLOCK_SIZES", "16,32").split(",")]
# MLP layer widths, input first; unset: the bench_optim MLP (256-1024-512-256-10).
WIDTHS = [int(w) for w in os.environ["HSC_BENCH_DIST_WIDTHS"].split(",")] if os.environ.get(
    "HSC_BENCH_DIST_WIDTHS") else None
VARIANTS = [  # (name, ranks, threads per rank)
    ("one process, 1 thread", 1, 1),
    ("one process, 2 threads", 1, 2),
    ("2 ranks, sharded", 2, 1),
]
JOIN_TIMEOUT_S = 900
PHASES = ("hvp", "assembly", "communication", "factorisation")

# Projection: all-reduce, reduce-scatter and all-gather take about (R - 1) / R x payload / bus
# bandwidth (ring or tree algorithms at large messages; an all-reduce counts twice).
PROJECTION = {
    "model_params": 100_000_000,
    "block_size": 32,  # the largest measured b when 32 is not measured
    "gpus": [8, 64],
    "bus_bandwidth_GBps": {8: 350.0, 64: 40.0},
    "bandwidth_note": "8 GPUs: one H100 SXM node, NVLink 4 (NCCL bus bandwidth about 350 GB/s); "
                      "64 GPUs: 8 such nodes, 8 x 400 Gb/s InfiniBand per node (about 40 GB/s per GPU "
                      "across nodes)",
}


class ReplicatedPreconditioner(hsc.Preconditioner):
    """The alternative without ownership: every rank keeps every block. A refresh estimates all
    blocks from this rank's micro-batch, all-reduces (mean) the whole estimate and factorises all
    of it; a step solves all blocks and needs no collective. One ``refresh`` call, as for the
    sharded preconditioner, so that both are timed the same way."""

    def __init__(self, params, group, **options):
        super().__init__(params, **options)  # no process group: this rank holds every block
        self.group = group

    def _factorise(self) -> None:
        # refresh() calls this once the local estimate is folded into the state (the mean of the
        # folded states is the fold of the means: the fold is linear). Its timers count all of
        # this as factorisation: move the all-reduce to communication.
        t0 = time.perf_counter()
        dist.all_reduce(self.estimate, group=self.group)
        self.estimate.div_(dist.get_world_size(self.group))
        elapsed = time.perf_counter() - t0
        self.ranks.sent_bytes["refresh"] += self.estimate.numel() * self.estimate.element_size()
        self.timings["communication"] += elapsed
        self.timings["factorisation"] -= elapsed
        super()._factorise()


def _median(xs):
    return statistics.median(xs)


def _problem(seed: int = 0):
    if WIDTHS is None:
        return make_net(seed), make_batch(seed, BATCH)
    torch.manual_seed(seed)
    layers = []
    for w_in, w_out in zip(WIDTHS[:-1], WIDTHS[1:]):
        layers += [torch.nn.Linear(w_in, w_out), torch.nn.ReLU()]
    g = torch.Generator().manual_seed(seed)
    return (torch.nn.Sequential(*layers[:-1]),
            (torch.randn(BATCH, WIDTHS[0], generator=g), torch.randint(0, WIDTHS[-1], (BATCH,), generator=g)))


def _timed(fn) -> float:
    """Median wall-clock of ``fn()`` over REPEATS calls, after one warm-up call."""
    fn()
    ts = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return _median(ts)


def _measure(rank: int, world: int, group, b: int) -> dict:
    """One configuration on this rank: sharded (with the group) and, with a group, replicated."""
    net, (X, y) = _problem(0)
    share = BATCH // world
    X, y = X[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    params = list(net.parameters())
    loss = torch.nn.functional.cross_entropy(net(X), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    step_grads = [g.detach().clone() for g in grads]
    for p, g in zip(params, step_grads):
        p.grad = g.clone()

    def barrier():
        if group is not None:
            dist.barrier(group)

    pres = {"sharded": hsc.Preconditioner(params, block_size=b, update_every=1, process_group=group)}
    if group is not None:
        pres["replicated"] = ReplicatedPreconditioner(params, group, block_size=b, update_every=1)
    refresh = {name: [] for name in pres}
    step = {name: [] for name in pres}
    split = {name: {k: [] for k in PHASES} for name in pres}
    for repeat in range(REPEATS + 1):  # the first is warm-up
        # Alternating the variants lets both see the shared machine in the same state.
        for name, pre in pres.items():
            # precondition_ rewrites .grad: without this each step would precondition the last
            # one's output, which shrinks towards subnormal numbers (slow on CPUs).
            for p, g in zip(params, step_grads):
                p.grad.copy_(g)
            before = dict(pre.timings)
            barrier()
            t0 = time.perf_counter()
            pre.refresh(grads)
            t1 = time.perf_counter()
            barrier()
            t2 = time.perf_counter()
            pre.precondition_()
            t3 = time.perf_counter()
            if repeat == 0:
                continue
            refresh[name].append(t1 - t0)
            step[name].append(t3 - t2)
            for k in PHASES:
                split[name][k].append(pre.timings[k] - before[k])

    out = {}
    for name, pre in pres.items():
        sent = pre.ranks.sent_bytes
        out[name] = {
            "refresh_s": _median(refresh[name]), "step_s": _median(step[name]),
            # the replicated variant holds every block: time both collectives on that payload
            "collectives_s": _collective_times(group, pre.estimate.numel()) if name == "replicated" else None,
            "split_s": {k: _median(v) for k, v in split[name].items()},
            "refresh_bytes": sent["refresh"] / (REPEATS + 1), "step_bytes": sent["step"] / (REPEATS + 1),
            "blocks": pre.layout.num_blocks, "owned_blocks": pre.shards.num_owned,
            "params": pre.layout.numel,
        }
    if group is None:
        out["sharded"]["pieces_s"] = _pieces(pres["sharded"], step_grads)
    return out


def _pieces(pre, grads) -> dict:
    """Median wall-clock of each piece of a refresh and a step, each op alone on all N blocks of
    one process: the inputs of the projection, which scales them by how they grow with R.

    Every rank, whatever R: ``assemble_all`` (every block's estimate from this rank's HVPs, as a
    sharded refresh assembles before its exchange), ``gather`` and ``scatter`` (n values), and when
    R does not divide N, ``pad_copy`` (the estimate into padded order) and ``reindex`` (the
    all-gathered blocks back into block order). Per owned block: ``fold`` (the exchanged mean into
    the estimate), ``factorise``, ``finite_check`` (of the gradient's owned blocks, as
    ``precondition_`` does) and ``solve``. ``assemble_fold_all``: the one-pass assembly into the
    state that a process holding every block does instead of ``assemble_all`` + ``fold``."""
    layout, cfg = pre.layout, pre.config
    N, b = layout.num_blocks, layout.block_size
    gen = torch.Generator().manual_seed(0)
    signs = draw_signs(gen, cfg.samples, N, grads[0].dtype, layout.device)
    hvps = torch.randn(cfg.samples, b, N, b, generator=gen)  # the values do not change the cost
    blocks = hvps.new_empty(N, b, b)
    ops.accumulate_probes(blocks, hvps, signs, layout.mask, ema=0.0, first=True)
    state = pre.estimate.clone()
    G = layout.gather(grads)
    P = ops.solve(pre.correction, G)
    out = [g.clone() for g in grads]
    rows = torch.arange(N)
    return {name: _timed(fn) for name, fn in {
        "assemble_all": lambda: ops.accumulate_probes(blocks, hvps, signs, layout.mask, ema=0.0, first=True),
        "assemble_fold_all": lambda: ops.accumulate_probes(state, hvps, signs, layout.mask, ema=cfg.ema,
                                                           first=False),
        "pad_copy": lambda: blocks.new_zeros(blocks.shape).copy_(blocks),
        "fold": lambda: ops.fold_estimate_(state, blocks, layout.mask, ema=cfg.ema, first=False),
        "factorise": pre._factorise,
        "gather": lambda: layout.gather(grads),
        "finite_check": lambda: all_finite([G]),
        "solve": lambda: ops.solve(pre.correction, G),
        "reindex": lambda: P[rows],
        "scatter": lambda: layout.scatter_(P, out),
    }.items()}


def _collective_times(group, numel: int) -> dict:
    """The same payload (the whole estimate) through gloo's all-reduce and reduce-scatter."""
    world = dist.get_world_size(group)
    x = torch.randn(numel - numel % world)
    out = torch.empty(x.numel() // world)
    times = {}
    for name, op in (("all_reduce", lambda: dist.all_reduce(x, group=group)),
                     ("reduce_scatter", lambda: dist.reduce_scatter_tensor(out, x, group=group))):
        ts = []
        for _ in range(REPEATS):
            dist.barrier(group)
            t0 = time.perf_counter()
            op()
            ts.append(time.perf_counter() - t0)
        times[name] = _median(ts)
    return times


def _worker(rank: int, world: int, threads: int, init: str, path: str) -> None:
    torch.set_num_threads(threads)
    group = None
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=300))
        group = dist.group.WORLD
    result = {b: _measure(rank, world, group, b) for b in BLOCK_SIZES}
    if group is not None:
        dist.barrier()  # tear down together (gloo may abort a rank that leaves first)
        dist.destroy_process_group()
    if rank == 0:
        torch.save(result, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, threads: int, path: str) -> dict:
    ctx = multiprocessing.get_context("spawn")
    init = f"tcp://127.0.0.1:{_free_port()}"
    procs = [ctx.Process(target=_worker, args=(r, world, threads, init, path)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_TIMEOUT_S)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return torch.load(path, weights_only=False)


PROJECTION_MODEL = (
    "Model, per rank and per refresh or step: time = exchange + per-block work x blocks this rank "
    "holds + whole-vector work. Only the per-block work shards: it is scaled by ceil(N / R) blocks "
    "(sharded) or N (replicated). Per-block work: at a refresh the fold of the exchanged mean into "
    "the owned estimate and the factorisation (sharded), or the factorisation alone (replicated); at "
    "a step the finiteness check of the gradient's owned blocks and the solve. Whole-vector work is "
    "what every rank does on all N blocks or n values whatever R: at a refresh the assembly of "
    "every block's estimate from this rank's HVPs (sharded; replicated: the one-pass assembly "
    "that also folds), and when R does not divide N the copy of the estimate into padded order; "
    "at a step the gather of the gradient into blocks and the scatter back, and when R does not "
    "divide N the reindexing of the all-gathered blocks. Each piece is timed alone on all N blocks "
    "of the measured model (one process, one thread, wall-clock median) and scaled by N / "
    "N_measured. Exchange = (R - 1) / R x payload / bus bandwidth (twice that for an all-reduce). "
    "HVPs are not in the table: each rank takes b of them on its own micro-batch in both variants."
)


def _projection(rows: list) -> list:
    """Per refresh and per step at 8 and 64 GPUs: sharded against replicated, from this machine's
    cost of each piece (one core) and the bandwidth assumptions (PROJECTION_MODEL)."""
    cfg = PROJECTION
    measured = [r for r in rows if r["variant"] == "one process, 1 thread"]
    b = cfg["block_size"] if any(r["b"] == cfg["block_size"] for r in measured) else max(r["b"] for r in measured)
    n = cfg["model_params"]
    N = -(-n // b)
    one = next(r for r in measured if r["b"] == b)["sharded"]
    scale = N / one["blocks"]  # every piece was timed on all of the measured model's blocks
    pc = {k: v * scale for k, v in one["pieces_s"].items()}  # seconds for all N projected blocks
    out = []
    for R in cfg["gpus"]:
        bw = cfg["bus_bandwidth_GBps"][R] * 1e9
        ring = (R - 1) / R
        estimate_bytes, vector_bytes = N * b * b * 4, N * b * 4
        owned = -(-N // R)
        padded = N % R != 0
        variants = {
            "sharded": {
                "refresh_comm_s": ring * estimate_bytes / bw,
                "refresh_per_block_s": (pc["fold"] + pc["factorise"]) * owned / N,
                "refresh_whole_s": pc["assemble_all"] + (pc["pad_copy"] if padded else 0.0),
                "step_comm_s": ring * vector_bytes / bw,
                "step_per_block_s": (pc["finite_check"] + pc["solve"]) * owned / N,
                "step_whole_s": pc["gather"] + pc["scatter"] + (pc["reindex"] if padded else 0.0),
                "refresh_bytes": estimate_bytes, "step_bytes": vector_bytes,
            },
            "replicated": {
                "refresh_comm_s": 2 * ring * estimate_bytes / bw,
                "refresh_per_block_s": pc["factorise"],
                "refresh_whole_s": pc["assemble_fold_all"],
                "step_comm_s": 0.0,
                "step_per_block_s": pc["finite_check"] + pc["solve"],
                "step_whole_s": pc["gather"] + pc["scatter"],
                "refresh_bytes": estimate_bytes, "step_bytes": 0,
            },
        }
        for m in variants.values():
            m["refresh_s"] = m["refresh_comm_s"] + m["refresh_per_block_s"] + m["refresh_whole_s"]
            m["step_s"] = m["step_comm_s"] + m["step_per_block_s"] + m["step_whole_s"]
        out.append({"gpus": R, "params": n, "b": b, "blocks": N, "blocks_per_rank": owned,
                    "padded": padded, "measured_blocks": one["blocks"],
                    "whole_gradient_check_s": pc["finite_check"], **variants})
    return out


def _report(rows: list, projection: list, info: dict) -> str:
    lines = [
        "# Distributed hsc: sharded blocks against every rank doing all blocks",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; gloo on loopback.",
        f"Command: `{info['command']}`. Model: {'the bench_optim MLP' if WIDTHS is None else 'an MLP'} "
        f"({rows[0]['sharded']['params']:,} parameters, float32), global batch {BATCH} split over the "
        f"ranks, estimator probe (1 draw). Medians of {REPEATS} repeats after a warm-up.",
        "How it was measured: both variants run in the same processes, alternating repeat by repeat. "
        "Refresh ms and step ms are rank 0's wall-clock (time.perf_counter) of one `refresh` call and "
        "one `precondition_` call (the same gradient each time), from a barrier that starts the ranks "
        "together to the call's return; the replicated variant is one `refresh` call too, whose "
        "all-reduce runs between its assembly and its factorisation. The split (HVPs, assembly, "
        "comm., factorisation) comes from the preconditioner's own perf_counter timers inside the "
        "same calls (the replicated all-reduce is timed there too and counts as comm.); comm. "
        "includes waiting for the slower rank.",
        "Bytes: payload this rank hands to collectives (a ring puts about (R - 1) / R of it on the wire). "
        "Replicated: every rank keeps every block; an all-reduce of the whole estimate per refresh, "
        "every rank factorises and solves all N blocks, steps need no collective. DDP's gradient "
        "all-reduce (4 bytes a parameter a step) is the same in every variant and not counted.",
        "",
        "| b | variant | blocks owned | refresh ms | HVPs | assembly | comm. | factorisation "
        "| step ms | MiB sent / refresh | MiB sent / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, m in ((k, r[k]) for k in ("sharded", "replicated") if k in r):
            label = r["variant"] if name == "sharded" else "2 ranks, replicated"
            s = m["split_s"]
            lines.append(
                f"| {r['b']} | {label} | {m['owned_blocks']} of {m['blocks']} | {1e3 * m['refresh_s']:.1f} | "
                f"{1e3 * s['hvp']:.1f} | {1e3 * s['assembly']:.1f} | {1e3 * s['communication']:.1f} | "
                f"{1e3 * s['factorisation']:.1f} | {1e3 * m['step_s']:.2f} | "
                f"{m['refresh_bytes'] / 2**20:.2f} | {m['step_bytes'] / 2**20:.2f} |")
    for r in rows:
        rep = r.get("replicated")
        if not rep or not rep.get("collectives_s"):
            continue
        c, sh = rep["collectives_s"], r["sharded"]

        def than(phase):  # the sharded refresh's time in a phase against the replicated one's
            d = sh["split_s"][phase] - rep["split_s"][phase]
            return f"{1e3 * abs(d):.1f} ms {'more' if d >= 0 else 'less'}"

        lines += ["", f"b = {r['b']}: the whole estimate ({rep['refresh_bytes'] / 2**20:.1f} MiB) through "
                      f"gloo's all-reduce takes {1e3 * c['all_reduce']:.1f} ms and through its reduce-scatter "
                      f"{1e3 * c['reduce_scatter']:.1f} ms (same run; a reduce-scatter moves half the bytes). "
                      f"The sharded refresh spends {than('communication')} on communication than the "
                      f"replicated one and {than('factorisation')} on factorisation; its whole refresh "
                      f"takes {1e3 * sh['refresh_s']:.1f} ms against {1e3 * rep['refresh_s']:.1f} ms, its "
                      f"step {1e3 * sh['step_s']:.2f} ms against {1e3 * rep['step_s']:.2f} ms."]
    p0 = projection[0]
    pieces = next(r for r in rows if r["variant"] == "one process, 1 thread" and r["b"] == p0["b"])["sharded"]
    lines += [
        "",
        f"## Projection: {p0['params'] / 1e6:.0f} M parameters, b = {p0['b']} ({p0['blocks']:,} blocks), float32",
        "",
        f"{PROJECTION_MODEL} Measured model: {p0['measured_blocks']:,} blocks of b = {p0['b']}; a GPU's "
        "per-block and whole-vector costs are far below this CPU core's (no GPU figure exists yet), "
        "which makes the exchange's share larger. "
        f"Bandwidths: {PROJECTION['bandwidth_note']}.",
        "",
        "Pieces, ms on all measured blocks (one process, one thread): "
        + ", ".join(f"{k} {1e3 * v:.2f}" for k, v in pieces["pieces_s"].items()) + ".",
        "",
        "| GPUs | variant | blocks per rank | refresh: exchange s | refresh: per-block s "
        "| refresh: whole-vector s | refresh s | step: exchange ms | step: per-block ms "
        "| step: whole-vector ms | step ms | GB sent / refresh | MB sent / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in projection:
        for name in ("sharded", "replicated"):
            m = p[name]
            per_rank = p["blocks_per_rank"] if name == "sharded" else p["blocks"]
            lines.append(
                f"| {p['gpus']} | {name} | {per_rank:,} | {m['refresh_comm_s']:.3f} | "
                f"{m['refresh_per_block_s']:.3f} | {m['refresh_whole_s']:.3f} | {m['refresh_s']:.3f} | "
                f"{1e3 * m['step_comm_s']:.2f} | {1e3 * m['step_per_block_s']:.1f} | "
                f"{1e3 * m['step_whole_s']:.1f} | {1e3 * m['step_s']:.1f} | "
                f"{m['refresh_bytes'] / 1e9:.2f} | {m['step_bytes'] / 1e6:.0f} |")
    padded = [str(p["gpus"]) for p in projection if p["padded"]]
    lines += [
        "",
        (f"R does not divide N at {' and '.join(padded)} GPUs: the sharded whole-vector columns there "
         "include the copies into and out of padded order. " if padded else "")
        + "`HSC.step` checks the "
        "whole gathered gradient for finiteness, not the owned blocks: through it the check "
        f"({1e3 * p0['whole_gradient_check_s']:.1f} ms on all N blocks) moves from the per-block to the whole-vector "
        "step column.",
    ]
    return "\n".join(lines) + "\n"


def test_distributed_refresh_and_step(tmp_path):
    rows = []
    for variant, world, threads in VARIANTS:
        result = _run(world, threads, str(tmp_path / f"{world}x{threads}.pt"))
        for b, measured in result.items():
            rows.append({"variant": variant, "world_size": world, "threads": threads, "b": b, **measured})
    info = machine()
    projection = _projection(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.json").write_text(
        json.dumps({"machine": info, "rows": rows, "projection": projection,
                    "projection_assumptions": PROJECTION, "projection_model": PROJECTION_MODEL},
                   indent=2, default=str) + "\n")
    text = _report(rows, projection, info)
    (RESULTS / "distributed.md").write_text(text)
    print("\n" + text)
    for r in rows:  # every variant ran and measured something
        assert r["sharded"]["refresh_s"] > 0 and r["sharded"]["step_s"] > 0
