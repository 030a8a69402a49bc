"""Where a GAN training step's time goes: hsc's per-player method against Adam, per data set.

Plain script (not collected by pytest)::

    python bench/profile_gan_step.py            # bench/results/profile_gan_step.{md,json}
    python bench/profile_gan_step.py --data mnist --steps 20

For each data set (its players and batch, hsc gan's defaults; one torch thread), in one process:

- Adam's step (both players: gradients and Adam's update) and hsc's ordinary step (no refresh
  due), each the mean of ``--steps`` steps, measured in ROUNDS alternating rounds (medians), the latter
  split into the preconditioner's apply
  (``precondition_``: gather, solve, scatter and the per-tensor graft, timed inside it) and the
  rest (gradients, Adam's update, the refresh-schedule bookkeeping);
- the apply's pieces timed alone on the same gradients: gather, the solve op, the graft op
  against the same grafting composed of torch ops (its baseline), scatter;
- a refresh per player (the preconditioner's own timings, medians of ``--refreshes`` refreshes
  after the first, which also allocates and is kept apart in the JSON): HVPs, assembly of the
  estimate, eigensolver and factor;
- the refresh's products taken one and several to a backward (``chunk_size``), alternating refreshes:
  the measurement behind the CPU's defaults (hsc.curvature.default_chunk_size);
- hsc's amortised step at the data set's refresh period (``update_every``) and its ratio to Adam's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hsc import config, ops  # noqa: E402
from hsc.apps import machine, write_json  # noqa: E402
from hsc.curvature import default_chunk_size  # noqa: E402
from hsc.gan.train import Trainer, default_config  # noqa: E402
from graft_baseline import segment_owner, torch_graft  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DATA = ("ring8", "digits", "mnist", "stacked-mnist")


ROUNDS = 5  # alternating rounds of Adam's and hsc's steps


def mean_step(trainer: Trainer, steps: int, warm_up: int = 3) -> float:
    for _ in range(warm_up):
        trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - t0) / steps


def interleaved_steps(first: Trainer, second: Trainer, steps: int) -> tuple:
    """Mean step times of two trainers measured in ROUNDS alternating rounds of ``steps`` steps
    (medians over the rounds; the first round warms each up), so that a machine whose speed drifts
    during the profile slows both alike."""
    times = ([], [])
    for r in range(ROUNDS):
        for trainer, out in zip((first, second), times):
            out.append(mean_step(trainer, steps, warm_up=3 if r == 0 else 0))
    return tuple(sorted(t)[ROUNDS // 2] for t in times)


def median_seconds(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


REFRESH_PARTS = ("hvp", "assembly", "factorisation")


def steady_refresh(trainer: Trainer, players: dict, refreshes: int) -> dict:
    """Each player's refresh timings (medians of ``refreshes`` refreshes after the first, one a
    step): the first refresh also pays for allocating the estimate and factor and for first calls,
    which a run pays once, not once every ``update_every`` steps."""
    every = {name: pre.config.update_every for name, pre in players.items()}
    samples = {name: {k: [] for k in REFRESH_PARTS} for name in players}
    for pre in players.values():
        pre.config.update_every = 1
    for _ in range(refreshes):
        before = {name: dict(pre.timings) for name, pre in players.items()}
        trainer.train_step()
        for name, pre in players.items():
            for k in REFRESH_PARTS:
                samples[name][k].append(pre.timings[k] - before[name][k])
    for name, pre in players.items():
        pre.config.update_every = every[name]
    return {name: {k: sorted(v)[len(v) // 2] for k, v in parts.items()} for name, parts in samples.items()}


# the CPU's default for HVPs, and for Gauss-Newton products
PRODUCTS_PER_BACKWARD = (1, default_chunk_size(1, torch.device("cpu"), first_order=True))


def products_per_backward(trainer: Trainer, players: dict, refreshes: int) -> dict:
    """The refresh's products (HVPs or Jacobian-transpose products, all preconditioned players)
    taken each of PRODUCTS_PER_BACKWARD to a backward (``chunk_size``), medians of ``refreshes``
    refreshes alternating the two, so that a machine whose speed drifts slows both alike."""
    every = {name: (pre.config.update_every, pre.config.chunk_size) for name, pre in players.items()}
    for pre in players.values():
        pre.config.update_every = 1
    seconds = {chunk: [] for chunk in PRODUCTS_PER_BACKWARD}
    for r in range(refreshes):
        for chunk in (PRODUCTS_PER_BACKWARD if r % 2 == 0 else PRODUCTS_PER_BACKWARD[::-1]):
            for pre in players.values():
                pre.config.chunk_size = chunk
            before = sum(pre.timings["hvp"] for pre in players.values())
            trainer.train_step()
            seconds[chunk].append(sum(pre.timings["hvp"] for pre in players.values()) - before)
    for name, pre in players.items():
        pre.config.update_every, pre.config.chunk_size = every[name]
    return {str(chunk): sorted(v)[len(v) // 2] for chunk, v in seconds.items()}


def profile(data: str, steps: int, curvature_batch, refreshes: int = 5) -> dict:
    adam = Trainer(default_config(data, method="adam", steps=1))
    cfg = default_config(data, method="hsc", steps=1)  # the data set's own hsc settings
    if curvature_batch is not None:
        cfg = config.replace(cfg, curvature_batch=curvature_batch)
    curvature_batch = cfg.hsc.curvature_batch
    hsc = Trainer(cfg)
    hsc.train_step()  # the first refresh of both players
    # the preconditioned players (MNIST's default preconditions the generator only)
    players = {name: p.preconditioner for name, p in hsc.players.items() if p.preconditioner is not None}
    first_refresh = {name: {k: pre.timings[k] for k in REFRESH_PARTS} for name, pre in players.items()}
    refresh = steady_refresh(hsc, players, refreshes)
    batched = products_per_backward(hsc, players, refreshes)
    every = cfg.hsc.preconditioner.update_every
    for pre in players.values():  # from here on, ordinary steps only
        pre.config.update_every = 10 ** 9
        pre.timings["apply"] = 0.0
    adam_step, ordinary = interleaved_steps(adam, hsc, steps)
    apply = sum(pre.timings["apply"] for pre in players.values()) / (ROUNDS * steps + 3)
    pieces = {}
    for name, pre in players.items():
        grads = [torch.randn_like(p) for p in pre.params]
        G = pre.gather(grads)
        P = pre.solve_blocks(G, finite=True)
        ends = torch.tensor([end for _, end in pre.layout.tensor_blocks], device=G.device)
        owner = segment_owner(ends)
        pieces[name] = {"gather": median_seconds(lambda: pre.gather(grads)),
                        "solve": median_seconds(lambda: pre.solve_blocks(G, finite=True)),
                        "graft": median_seconds(lambda: bool(ops.graft_(P, G, ends).all())),
                        "graft_torch": median_seconds(lambda: torch_graft(P, G, owner, len(ends))),
                        "scatter": median_seconds(lambda: pre.scatter(P)),
                        "blocks": pre.layout.num_blocks, "parameters": pre.layout.numel}
    refresh_total = sum(sum(v.values()) for v in refresh.values())
    amortised = ordinary + refresh_total / every
    return {"data": data, "batch": hsc.batch_size, "curvature_batch": curvature_batch,
            "estimator": cfg.hsc.preconditioner.estimator, "adam_step": adam_step,
            "hsc_ordinary_step": ordinary, "apply": apply, "pieces": pieces, "refresh": refresh,
            "refresh_total": refresh_total, "first_refresh": first_refresh, "refreshes": refreshes,
            "products_per_backward": batched,
            "update_every": every, "hsc_amortised_step": amortised,
            "ratio": amortised / adam_step}


def markdown(rows: list, command: str) -> str:
    ms = lambda s: f"{1000 * s:.2f}"  # noqa: E731
    md = ["# Where a GAN step's time goes: hsc's per-player method against Adam", "",
          f"- machine: {machine()}", f"- command: `{command}`",
          "- one torch thread; each data set's players and batch, hsc gan's defaults for it (estimator, curvature batch, refresh period); times in ms; "
          "`apply` is precondition_ (gather, solve, graft, scatter) over the preconditioned players, the pieces are "
          "timed alone on one player's gradient (medians of 20); the graft baseline is the same "
          "grafting composed of torch ops, as the apply did it before `hsc.ops.graft_`", "",
          "| data | batch (refresh: estimator on samples) | Adam step | hsc ordinary step | of it: apply | rest (gradients, Adam, bookkeeping) | "
          "refresh (the preconditioned players, median of later refreshes): products / assembly / eigen + factor | refresh every | amortised | ÷ Adam |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hvp = sum(v["hvp"] for v in r["refresh"].values())
        asm = sum(v["assembly"] for v in r["refresh"].values())
        fac = sum(v["factorisation"] for v in r["refresh"].values())
        batch = f"{r['batch']} ({r['estimator']}" + (f" on {r['curvature_batch']})" if r["curvature_batch"] else ")")
        md.append(f"| {r['data']} | {batch} | {ms(r['adam_step'])} | {ms(r['hsc_ordinary_step'])} | {ms(r['apply'])} | "
                  f"{ms(r['hsc_ordinary_step'] - r['apply'])} | {ms(hvp)} / {ms(asm)} / {ms(fac)} | "
                  f"{r['update_every']} | {ms(r['hsc_amortised_step'])} | {r['ratio']:.2f} |")
    md += ["", "The refresh's products (HVPs for the probe estimator, Jacobian-transpose products for "
           "gauss_newton; all preconditioned players) taken one and several to a backward (`chunk_size`; "
           "the CPU's default is one for HVPs, several for Gauss-Newton products), ms, medians of "
           "refreshes alternating the two:", "",
           f"| data | estimator | one a backward | {PRODUCTS_PER_BACKWARD[1]} a backward | ÷ |",
           "|---|---|---|---|---|"]
    for r in rows:
        one, four = (r["products_per_backward"][str(c)] for c in PRODUCTS_PER_BACKWARD)
        md.append(f"| {r['data']} | {r['estimator']} | {ms(one)} | {ms(four)} | {one / four:.2f}× |")
    md += ["", "The apply's pieces, one player at a time (ms):", "",
           "| data | player | parameters | blocks | gather | solve op | graft op (`hsc.ops.graft_`) | "
           "graft in torch ops (the baseline) | ÷ | scatter |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, p in r["pieces"].items():
            md.append(f"| {r['data']} | {name} | {p['parameters']} | {p['blocks']} | {ms(p['gather'])} | "
                      f"{ms(p['solve'])} | {ms(p['graft'])} | {ms(p['graft_torch'])} | "
                      f"{p['graft_torch'] / p['graft']:.1f}× | {ms(p['scatter'])} |")
    return "\n".join(md) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=",".join(DATA))
    parser.add_argument("--steps", type=int, default=30, help=f"steps a round ({ROUNDS} alternating rounds a method)")
    parser.add_argument("--refreshes", type=int, default=5, help="refreshes timed after the first (median)")
    parser.add_argument("--curvature-batch", type=int, default=None,
                        help="HVPs on this many samples of the batch (default: the method's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for data in args.data.split(","):
        rows.append(profile(data, args.steps, args.curvature_batch, args.refreshes))
        print(f"{data}: Adam {1000 * rows[-1]['adam_step']:.1f} ms, hsc amortised "
              f"{1000 * rows[-1]['hsc_amortised_step']:.1f} ms ({rows[-1]['ratio']:.2f}x)", flush=True)
    command = " ".join(["python"] + sys.argv)
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "profile_gan_step.json", {"machine": machine(), "command": command, "rows": rows})
    (RESULTS / "profile_gan_step.md").write_text(markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
