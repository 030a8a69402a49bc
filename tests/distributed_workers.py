"""What each rank runs in tests/test_distributed.py, and the same runs in one process.

A run trains a small tanh MLP in float64 on a fixed sequence of batches. Rank r of R takes rows
[r B / R, (r + 1) B / R) of every batch, so R ranks together see exactly the batch one process sees.
Each scenario returns tensors; the parent process compares them with the single-process run.
"""
from __future__ import annotations

import datetime
import gc
import os
import traceback
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import hsc
from hsc.distributed import RankFailure

BATCH = 12          # divisible by 1, 2 and 3
LAYER_SIZES = (3, 6, 2)
# block_size 5 cuts the 38 parameters into 10 blocks (4 + 2 + 3 + 1), split 5/5 on two ranks and
# 4/3/3 on three: uneven ranges exercise the padded collectives.
OPTIONS = dict(lr=0.2, momentum=0.5, block_size=5, update_every=2, damping=1e-3, scale=0.3, samples=2,
               ema=0.5, seed=7)
STEPS = 6


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(LAYER_SIZES[0], LAYER_SIZES[1]), nn.Tanh(),
                          nn.Linear(LAYER_SIZES[1], LAYER_SIZES[2]))
    return model.double()


def batch(step: int, rank: int = 0, world_size: int = 1):
    """Rows of batch ``step`` belonging to ``rank`` of ``world_size``."""
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(BATCH, LAYER_SIZES[0], dtype=torch.float64, generator=gen)
    y = torch.sin(3 * x[:, :LAYER_SIZES[2]]) + 0.1 * torch.randn(BATCH, LAYER_SIZES[2], dtype=torch.float64,
                                                                   generator=gen)
    share = BATCH // world_size
    return x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def curvature_rows(rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The rows of the whole batch whose HVPs the curvature_closure runs take: the even rows of
    this rank's share (every share starts at an even row and has as many, so R ranks together
    use the even rows of the batch, as one process does)."""
    share = BATCH // world_size
    return torch.arange(rank * share, (rank + 1) * share, 2)


def train_hsc(model, opt, steps: range, rank: int = 0, world_size: int = 1,
              fail_at: Optional[int] = None, nan_at: Optional[int] = None,
              subsampled_curvature: bool = False) -> None:
    """HSC with closures; ``fail_at``: the step at which this rank's closure raises; ``nan_at``: a
    step whose loss is NaN on the second half of the batch (on rank 1 only, of two);
    ``subsampled_curvature``: the HVPs on the rows :func:`curvature_rows` names."""
    for t in steps:
        x, y = batch(t, rank, world_size)
        if t == nan_at:  # NaN targets in the second half of the whole batch, each rank its share
            x, y = batch(t)
            y = y.clone()
            y[BATCH // 2:, 0] = float("nan")
            share = BATCH // world_size
            x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]

        def closure():
            if t == fail_at:
                raise ValueError(f"closure of step {t} cannot read its data")
            return F.mse_loss(model(x), y)

        curvature_closure = None
        if subsampled_curvature:
            full_x, full_y = batch(t)
            rows = curvature_rows(rank, world_size)

            def curvature_closure():
                return F.mse_loss(model(full_x[rows]), full_y[rows])

        opt.step(closure, curvature_closure=curvature_closure)


def hsc_run(estimator: str, group=None, rank: int = 0, world_size: int = 1, **train) -> torch.Tensor:
    model = make_model()
    opt = hsc.HSC(model.parameters(), estimator=estimator, process_group=group, **OPTIONS)
    train_hsc(model, opt, range(STEPS), rank, world_size, **train)
    return flat_params(model)


def spectral_run(group=None, rank: int = 0, world_size: int = 1) -> Dict[str, object]:
    """The saddle-free root with mu relative to the median |eigenvalue|: the median must come from
    every rank's blocks, so that all ranks (and one process) use one mu."""
    model = make_model()
    options = dict(OPTIONS, mode="saddle_free_root", scale_rule="relative", scale=0.5)
    opt = hsc.HSC(model.parameters(), estimator="probe", process_group=group, **options)
    train_hsc(model, opt, range(STEPS), rank, world_size)
    pre = opt.preconditioners[0]
    return {"params": flat_params(model), "scale": pre.scale,
            "spectrum": pre.stats()["spectrum"]}


def nan_loss_run(group=None, rank: int = 0, world_size: int = 1) -> Dict[str, object]:
    """A NaN loss at step 2 on rank 1's rows only: every rank skips the step."""
    model = make_model()
    opt = hsc.HSC(model.parameters(), estimator="probe", process_group=group, **OPTIONS)
    train_hsc(model, opt, range(STEPS), rank, world_size, nan_at=2)
    return {"params": flat_params(model), "counters": dict(opt.counters),
            "calls": opt.preconditioners[0].calls}


def more_ranks_than_blocks_run(group=None, rank: int = 0, world_size: int = 1) -> Dict[str, object]:
    """One block (3 parameters, block_size 5) on R ranks: the ranks beyond the first own none."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    opt = hsc.HSC(model.parameters(), estimator="exact", process_group=group, **OPTIONS)
    for t in range(STEPS):
        x, y = batch(t, rank, world_size)
        opt.step(lambda: F.mse_loss(model(x), y[:, :1]))
    pre = opt.preconditioners[0]
    return {"params": flat_params(model), "owned": (pre.shards.start, pre.shards.end),
            "estimate": pre.state_dict()["estimate"]}


def ddp_preconditioner_run(ddp_wrap: Optional[Callable] = None, rank: int = 0, world_size: int = 1,
                           group=None) -> torch.Tensor:
    """A torch optimizer stepping on gradients preconditioned by ``hsc.Preconditioner``, the model
    wrapped by DDP (which averages ``.grad`` in backward) when ``ddp_wrap`` is given."""
    model = make_model()
    wrapped = ddp_wrap(model) if ddp_wrap is not None else model
    pre = hsc.Preconditioner(model.parameters(), block_size=5, estimator="probe", update_every=2,
                             damping=1e-3, scale=0.3, samples=2, ema=0.5, seed=3, process_group=group)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    for t in range(STEPS):
        x, y = batch(t, rank, world_size)
        opt.zero_grad()
        F.mse_loss(wrapped(x), y).backward()
        # HVPs through the plain module: DDP does not take double backward.
        pre.update_curvature(lambda: F.mse_loss(model(x), y))
        pre.precondition_()
        opt.step()
    return flat_params(model)


def checkpoint_run(path: str, group=None, rank: int = 0, world_size: int = 1,
                   save: bool = False) -> Dict[str, torch.Tensor]:
    """Train 3 steps and save (``save``), or load the saved checkpoint; then train 3 more."""
    model = make_model()
    opt = hsc.HSC(model.parameters(), estimator="probe", process_group=group, **OPTIONS)
    if save:
        train_hsc(model, opt, range(3), rank, world_size)
        state = {"model": model.state_dict(), "opt": opt.state_dict()}  # every rank: a collective
        if rank == 0:
            torch.save(state, path)
        if group is not None:
            dist.barrier(group)
    else:
        state = torch.load(path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    train_hsc(model, opt, range(3, STEPS), rank, world_size)
    return {"params": flat_params(model)}


def failure_run(group, rank: int, world_size: int) -> Dict[str, str]:
    """Rank 1 raises in its closure at a refresh step, then rank 0 in a Preconditioner's loss_fn.
    Each rank records what it caught; the group stays usable after each failure."""
    caught = {}
    model = make_model()
    opt = hsc.HSC(model.parameters(), estimator="probe", process_group=group, **OPTIONS)
    try:
        train_hsc(model, opt, range(STEPS), rank, world_size, fail_at=2 if rank == 1 else None)
    except RankFailure as err:
        caught["closure"] = str(err)
    caught.update(refresh_failure_then_refresh(model, group, rank, world_size))
    dist.barrier(group)  # still usable
    caught["params_finite"] = str(bool(torch.isfinite(flat_params(model)).all()))
    return caught


def refresh_failure_then_refresh(model, group=None, rank: int = 0, world_size: int = 1) -> dict:
    """A refresh whose loss_fn raises on rank 0 (on the one process without a group), then one
    that succeeds: the ranks' probe signs must still agree (gathered estimate returned)."""
    out = {}
    pre = hsc.Preconditioner(model.parameters(), block_size=5, update_every=1, seed=5, process_group=group)

    def loss_fn():
        if rank == 0:
            raise RuntimeError("loss_fn ran out of memory")
        x, y = batch(0, rank, world_size)
        return F.mse_loss(model(x), y)

    try:
        pre.update_curvature(loss_fn)
    except RankFailure as err:
        out["refresh"] = str(err)
    except RuntimeError as err:  # one process: the error itself
        out["refresh"] = str(err)
    x, y = batch(1, rank, world_size)
    pre.update_curvature(lambda: F.mse_loss(model(x), y))
    out["estimate_after_failure"] = pre.state_dict()["estimate"]
    return out


def gan_run(group=None, rank: int = 0, world_size: int = 1, architecture: str = "dcgan-plain",
            method: str = "hsc", sketches: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Three steps of the MNIST GAN (hsc.gan.Trainer), data-parallel over ``group``: the hsc method
    with base SGD (an update linear in the averaged gradient) and a refresh every 2 steps;
    ``sketches``: Gauss-Newton sketches over each rank's whole batch instead of exact blocks."""
    from hsc import config
    from hsc.gan.train import HSCSettings, TrainConfig, Trainer

    settings = config.replace(HSCSettings(), base="sgd", lr=0.05, momentum=0.0, update_every=2)
    if sketches is not None:
        settings = config.replace(settings, sketches=sketches, curvature_batch=None)
    trainer = Trainer(TrainConfig(data="mnist", architecture=architecture, method=method, steps=3, batch_size=8,
                                  hsc=settings), group)
    for _ in range(3):
        trainer.train_step()
    stats = trainer.stats()
    out = {"G": flat_params(trainer.G), "D": flat_params(trainer.D),
           "refreshes": [stats[f"{p}_preconditioner"]["refreshes"] for p in "GD"] if method == "hsc" else []}
    if method == "hsc":  # the preconditioners' shared generators (the probe signs' and the sketches' seeds)
        out["generators"] = [trainer.players[p].preconditioner.generator.get_state()
                             for p in "GD" if trainer.players[p].preconditioner is not None]
    return out


def worker(rank: int, world_size: int, init_method: str, out_dir: str, scenarios: list) -> None:
    """Entry point of a spawned rank: runs ``scenarios`` and saves ``{name: result}`` to
    ``out_dir/rank<r>.pt``; on an unexpected error saves its traceback and exits with 1."""
    torch.set_num_threads(1)
    result = {}
    try:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=60))
        group = dist.group.WORLD

        def ddp_wrap(model):
            return nn.parallel.DistributedDataParallel(model)

        for name in scenarios:
            if name in ("exact", "probe"):
                result[name] = hsc_run(name, group, rank, world_size)
            elif name == "subsampled_curvature":
                result[name] = hsc_run("probe", group, rank, world_size, subsampled_curvature=True)
            elif name == "spectral":
                result[name] = spectral_run(group, rank, world_size)
            elif name == "nan_loss":
                result[name] = nan_loss_run(group, rank, world_size)
            elif name == "more_ranks_than_blocks":
                result[name] = more_ranks_than_blocks_run(group, rank, world_size)
            elif name == "ddp":
                result[name] = ddp_preconditioner_run(ddp_wrap, rank, world_size, group)
            elif name in ("save", "load"):
                result[name] = checkpoint_run(os.path.join(out_dir, "..", "checkpoint.pt"), group, rank,
                                              world_size, save=name == "save")
            elif name == "gan":
                result[name] = gan_run(group, rank, world_size)
            elif name == "gan_sketches":
                result[name] = gan_run(group, rank, world_size, sketches=3)
            elif name == "gan_batch_norm":
                result[name] = gan_run(group, rank, world_size, architecture="dcgan", method="adam")
            elif name == "failure":
                result[name] = failure_run(group, rank, world_size)
            else:
                raise ValueError(f"unknown scenario {name!r}")
        # DDP's reducer (scenario "ddp") sits in reference cycles that hold the process group:
        # collect them, then leave together (a rank torn down while a peer talks to it aborts).
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as f:
            f.write(traceback.format_exc())
        raise SystemExit(1)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
