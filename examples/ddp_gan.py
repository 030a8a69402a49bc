"""Data-parallel GAN training with hsc on torch.distributed: the ring8 mixture, CPU, gloo.

    torchrun --nproc_per_node=2 examples/ddp_gan.py --steps 2000

Each rank draws its own micro-batch (batch / world size rows). DDP averages the gradients in
backward; each player's ``hsc.Preconditioner`` has the process group, so every rank estimates the
curvature on its micro-batch, the block estimates are reduce-scattered to the blocks' owners, each
rank factorises only its blocks, and one all-gather per step hands every rank the preconditioned
gradient. Adam then takes the step on it, rescaled per tensor to the raw gradient's norm (the
``hsc gan`` defaults). Rank 0 shows progress and prints the mode coverage at the end; with
``--out`` it also saves a checkpoint (rank-independent: it loads on any number of ranks).
"""
from __future__ import annotations

import argparse
import gc
import os
import time

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import hsc
from hsc.gan.data import make_dataset
from hsc.gan.metrics import EVAL_SAMPLES, evaluate
from hsc.gan.models import latent_dim, make_players
from hsc.gan.train import HSCOptions
from hsc.preconditioner import all_finite


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch, split over the ranks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="save a checkpoint here (rank 0 writes it)")
    return parser.parse_args()


class DataParallelPlayer:
    """One player: DDP module for the gradient, preconditioner on the plain module for the HVPs
    (DDP does not take double backward), Adam on the grafted preconditioned gradient."""

    def __init__(self, module, options: HSCOptions, seed: int, group):
        self.module = module
        self.ddp = DistributedDataParallel(module)  # broadcasts rank 0's weights
        self.params = list(module.parameters())
        self.pre = hsc.Preconditioner(self.params, options.preconditioner_config(seed), process_group=group)
        self.opt = torch.optim.Adam(self.params, lr=options.lr, betas=(0.5, 0.999))
        self.skipped = 0

    def prepare(self, loss: torch.Tensor, loss_fn) -> None:
        """Averaged gradient of ``loss`` (computed through ``self.ddp``), preconditioned in place.
        The gradients are the same on every rank (averaged, then all-gathered), so every rank
        takes the same decision in :meth:`step`."""
        self.opt.zero_grad()
        loss.backward(inputs=self.params)  # DDP averages over the ranks here
        self.pre.update_curvature(loss_fn)  # a refresh once every update_every calls
        raw_norms = [p.grad.norm() for p in self.params]
        self.pre.precondition_()
        with torch.no_grad():
            for p, n in zip(self.params, raw_norms):
                p.grad.mul_(n / p.grad.norm().clamp_min(1e-30))

    def step(self) -> None:
        """Adam's step, skipped (and counted) when a gradient is not finite."""
        if all_finite([p.grad for p in self.params]):
            self.opt.step()
        else:
            self.skipped += 1


def main() -> None:
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the world size {world}")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dataset = make_dataset("ring8")
    torch.manual_seed(args.seed)
    G, D = make_players(dataset.dim)
    options = HSCOptions()
    group = dist.group.WORLD
    g_player = DataParallelPlayer(G, options, 2 * args.seed, group)
    d_player = DataParallelPlayer(D, options, 2 * args.seed + 1, group)
    sampler = torch.Generator().manual_seed(1 + args.seed + 1000 * rank)  # this rank's micro-batches
    n, latent = args.batch_size // world, latent_dim(dataset.dim)

    start = time.perf_counter()
    for _ in tqdm(range(args.steps), disable=rank != 0, desc=f"ring8 GAN, {world} ranks"):
        real = dataset.sample(n, sampler)
        z = torch.randn(n, latent, generator=sampler)
        with torch.no_grad():
            fake = G(z)

        def d_loss(disc=D):
            return F.softplus(-disc(real)).mean() + F.softplus(disc(fake)).mean()

        def g_loss():
            return F.softplus(-D(G(z))).mean()

        d_player.prepare(d_loss(d_player.ddp), d_loss)
        g_player.prepare(F.softplus(-D(g_player.ddp(z))).mean(), g_loss)
        d_player.step()
        g_player.step()
    seconds = time.perf_counter() - start

    if args.out:  # state_dict gathers every block from its owner: all ranks call it
        state = {"G": G.state_dict(), "D": D.state_dict(),
                 "preconditioners": [g_player.pre.state_dict(), d_player.pre.state_dict()]}
        if rank == 0:
            torch.save(state, args.out)
    if rank == 0:
        with torch.no_grad():
            samples = G(torch.randn(EVAL_SAMPLES, latent, generator=torch.Generator().manual_seed(10_000)))
        m = evaluate(samples, dataset)
        s = d_player.pre.stats()
        sent = s.get("sent_bytes", {"refresh": 0, "step": 0})
        print(f"{world} ranks, {args.steps} steps in {seconds:.1f} s: {m['modes']} of 8 modes, "
              f"{m['high_quality']:.1f} % high quality, {g_player.skipped + d_player.skipped} steps skipped. D: rank 0 owns blocks {s.get('owned', (0, s['blocks']))} "
              f"of {s['blocks']}; {s['refreshes']} refreshes; rank 0 sent {sent['refresh'] / 2**20:.2f} MiB "
              f"for refreshes and {sent['step'] / 2**20:.2f} MiB for steps")
    # DDP's reducers hold the process group: release them first, then leave together (a rank
    # torn down while a reducer or a peer still talks to it aborts).
    del g_player, d_player
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
