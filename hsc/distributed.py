"""Block ownership and the collectives of data-parallel hsc (torch.distributed; NCCL or gloo).

With a process group of R ranks, rank r owns the contiguous block range ``BlockLayout.ranges(R)[r]``
(balanced by cost: every block costs b^3, so by count). The preconditioner exchanges three things:

- refresh: each rank's block estimates from its own micro-batch are reduce-scattered (mean), so each
  owner holds the data-parallel average of its blocks only (N b^2 / R values per rank);
- step: each owner preconditions its blocks and one all-gather gives every rank all of M^-1 g;
- agreement: before any collective that follows local work that may fail, the ranks exchange one
  flag, so an error on one rank is raised on every rank instead of leaving the others waiting.

Collectives need equal-sized pieces, so every rank's range is padded to the largest one, C = ceil(N / R).
Without a process group (or with R = 1) every method is the identity and no collective is issued.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from .layout import BlockLayout

# torch >= 2.12 renamed the tensor collectives; older versions have only the second names.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class RankFailure(RuntimeError):
    """Raised on every rank when local work failed on one or more of them."""


def _payload_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class RankGroup:
    """A process group (or none) with the collectives hsc issues outside block exchange.

    Args:
        process_group: a ``torch.distributed`` process group, or ``None`` for one process
            (``torch.distributed.group.WORLD`` is the default group).

    Attributes:
        world_size: R (1 without a group).
        rank: this rank's index in the group (0 without a group).
        sent_bytes: payload bytes this rank handed to collectives, by phase ("refresh", "step",
            "checkpoint"): the input tensors' sizes, not the bytes on the wire, which depend on
            the backend's algorithm (a ring sends about (R - 1) / R of the payload).
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None):
        if process_group is not None and not dist.is_initialized():
            raise ValueError("hsc: process_group was given but torch.distributed is not initialised; "
                             "call torch.distributed.init_process_group first")
        self.group = process_group
        self.world_size = dist.get_world_size(process_group) if process_group is not None else 1
        self.rank = dist.get_rank(process_group) if process_group is not None else 0
        self.sent_bytes = {"refresh": 0, "step": 0, "checkpoint": 0}
        # NCCL averages in the reduction (no overflow of a float16 sum); gloo sums, then we divide.
        nccl = process_group is not None and dist.get_backend(process_group) == "nccl"
        self.average_op = dist.ReduceOp.AVG if nccl else dist.ReduceOp.SUM

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Collective: whether ``flag`` holds on every rank (``flag`` itself without a group)."""
        if not self.distributed:
            return flag
        failures = torch.tensor([0 if flag else 1], dtype=torch.int32, device=device)
        dist.all_reduce(failures, op=dist.ReduceOp.SUM, group=self.group)
        return int(failures) == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor], phase: str = "step") -> None:
        """Replace each tensor by its mean over ranks, in place, with one collective."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=self.average_op, group=self.group)
        self.sent_bytes[phase] += _payload_bytes(flat)
        if self.average_op != dist.ReduceOp.AVG:
            flat.div_(self.world_size)
        for t, piece in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(piece.view_as(t))

    def all_reduce_sum_(self, t: torch.Tensor, phase: str) -> None:
        """Sum ``t`` over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
            self.sent_bytes[phase] += _payload_bytes(t)

    def agree(self, error: Optional[BaseException], where: str, device: torch.device) -> None:
        """Collective: raise :class:`RankFailure` on every rank if ``error`` is set on any rank.

        Every rank must call it at the same point. Without a group it re-raises ``error``. The
        messages travel with ``all_gather_object``, which on NCCL needs ``torch.cuda.set_device``
        to have been called on each rank (as torchrun scripts do).
        """
        if not self.distributed:
            if error is not None:
                raise error
            return
        if self.all_true(error is None, device):
            return
        messages: List[Optional[str]] = [None] * self.world_size
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}",
                               group=self.group)
        failed = [f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None]
        raise RankFailure(f"hsc: {where} failed on {len(failed)} of {self.world_size} ranks "
                          f"({'; '.join(failed)})") from error


class BlockShards:
    """Which blocks this rank owns, and the collectives that move blocks between owners.

    Args:
        layout: the block layout (the same on every rank).
        ranks: the :class:`RankGroup` to exchange blocks in.

    Attributes:
        ranges: every rank's ``(start, end)`` block range, ``layout.ranges(R)``.
        start, end: this rank's range.
        chunk: C, the largest range's length, to which every piece is padded.
    """

    def __init__(self, layout: BlockLayout, ranks: RankGroup):
        self.ranks = ranks
        self.ranges: List[Tuple[int, int]] = layout.ranges(ranks.world_size)
        self.start, self.end = self.ranges[ranks.rank]
        self.chunk = max(end - start for start, end in self.ranges)
        self.even = self.chunk * ranks.world_size == layout.num_blocks  # no padding needed
        # Padded order: rank r's blocks at [r C, r C + its range's length), zeros up to (r + 1) C.
        # real_rows: the padded positions of blocks 0..N-1.
        real_rows = [i for r, (start, end) in enumerate(self.ranges)
                     for i in range(r * self.chunk, r * self.chunk + end - start)]
        self._real_rows = torch.tensor(real_rows, dtype=torch.int64, device=layout.device)

    @property
    def num_owned(self) -> int:
        return self.end - self.start

    def owned(self, blocks: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor holding every block along dim 0."""
        return blocks[self.start:self.end]

    def padded(self, blocks: torch.Tensor) -> torch.Tensor:
        """``blocks`` (all N, ``[N, ...]``) in padded order, ready for :meth:`reduce_scatter_mean`:
        local work, kept apart from the collective so that it can fail before the ranks agree."""
        if not self.ranks.distributed:
            return blocks
        if self.even:
            return blocks.contiguous()
        padded = blocks.new_zeros((self.ranks.world_size * self.chunk, *blocks.shape[1:]))
        for r, (start, end) in enumerate(self.ranges):
            padded[r * self.chunk:r * self.chunk + end - start] = blocks[start:end]
        return padded

    def reduce_scatter_mean(self, padded: torch.Tensor, phase: str = "refresh") -> torch.Tensor:
        """The mean over ranks of ``padded`` (from :meth:`padded`), for this rank's range only."""
        ranks = self.ranks
        if not ranks.distributed:
            return padded
        out = padded.new_empty((self.chunk, *padded.shape[1:]))
        _reduce_scatter(out, padded, op=ranks.average_op, group=ranks.group)
        ranks.sent_bytes[phase] += _payload_bytes(padded)
        out = out[:self.num_owned]
        return out if ranks.average_op == dist.ReduceOp.AVG else out.div_(ranks.world_size)

    def all_gather(self, owned: torch.Tensor, phase: str = "step") -> torch.Tensor:
        """Every rank's ``owned`` rows (``[end - start, ...]``) concatenated in block order, ``[N, ...]``."""
        ranks = self.ranks
        if not ranks.distributed:
            return owned
        if self.num_owned == self.chunk:
            piece = owned.contiguous()
        else:
            piece = owned.new_zeros((self.chunk, *owned.shape[1:]))
            piece[:self.num_owned] = owned
        gathered = owned.new_empty((ranks.world_size * self.chunk, *owned.shape[1:]))
        _all_gather(gathered, piece, group=ranks.group)
        ranks.sent_bytes[phase] += _payload_bytes(piece)
        return gathered if self.even else gathered[self._real_rows]
