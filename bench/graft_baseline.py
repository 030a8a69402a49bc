"""The baseline hsc.ops.graft_ is measured against (bench/profile_gan_step.py, bench/gpu_bench.py)."""
from __future__ import annotations

import torch


def segment_owner(ends: torch.Tensor) -> torch.Tensor:
    """``[N]``: the segment (tensor) each block row belongs to, from graft_'s segment ends; the
    baseline builds it once, as the apply cached it."""
    counts = ends.diff(prepend=ends.new_zeros(1))
    return torch.repeat_interleave(torch.arange(len(ends), device=ends.device), counts)


def torch_graft(P: torch.Tensor, G: torch.Tensor, owner: torch.Tensor, tensors: int):
    """The baseline of ``hsc.ops.graft_``: the same per-tensor grafting composed of torch ops
    (per-block squared norms, index_add per tensor, the ratio, a multiply into a new tensor), as
    the apply did it before the fused op. Returns (grafted P, whether it is finite)."""
    raw = G.new_zeros(tensors).index_add_(0, owner, G.square().sum(1)).sqrt()
    new = P.new_zeros(tensors).index_add_(0, owner, P.square().sum(1)).sqrt()
    finite = bool(torch.isfinite(new).all())
    return P * (raw / new.clamp_min(1e-30))[owner, None], finite
