"""Block layout of a parameter set: which parameter entry sits in which block slot (docs/contract.md §1).

A parameter set (one or more tensors) is flattened tensor by tensor and cut into blocks of
``block_size`` = b consecutive entries. Every tensor is one *segment* (or, with ``patch``, every
spatial tile of an image-like tensor is one segment); a segment's last block may be short and is
padded to b with inert slots: gradient 0, identity rows/columns of the Hessian, never written to a
parameter. Blocks never straddle two segments, hence never two tensors nor two tiles.

The layout is a fixed map ``index: [N, b] -> position in the concatenated flat parameter vector``
(``numel`` marks a padding slot). :meth:`BlockLayout.gather` is one indexing of the flat vector
(with a trailing zero for the padding slots); :meth:`BlockLayout.scatter` is one indexing of the
flat ``[N * b]`` blocks through the inverse permutation, so both round-trip exactly.

Pure torch; everything is built with torch ops on the parameters' device.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

__all__ = ["BlockLayout"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_block_size(block_size: object) -> int:
    if not _is_int(block_size):
        raise TypeError(f"hsc: block_size must be an int >= 1, got {type(block_size).__name__} "
                        f"{block_size!r}")
    if block_size < 1:
        raise ValueError(f"hsc: block_size must be an int >= 1, got {block_size}")
    return int(block_size)


def _check_patch(patch: object) -> Optional[Tuple[int, int]]:
    if patch is None:
        return None
    if not isinstance(patch, (tuple, list)):
        raise TypeError(f"hsc: patch must be None or a pair of ints (ph, pw) >= 1, "
                        f"got {type(patch).__name__} {patch!r}")
    if len(patch) != 2:
        raise ValueError(f"hsc: patch must be a pair of ints (ph, pw) >= 1, got {len(patch)} "
                         f"values: {patch!r}")
    if not all(_is_int(p) for p in patch):
        raise TypeError(f"hsc: patch must be a pair of ints (ph, pw) >= 1, got {patch!r}")
    if not all(p >= 1 for p in patch):
        raise ValueError(f"hsc: patch must be a pair of ints (ph, pw) >= 1, got {patch!r}")
    return (int(patch[0]), int(patch[1]))


def _check_params(params: object) -> List[torch.Tensor]:
    if isinstance(params, torch.Tensor):
        raise TypeError("hsc: params must be an iterable of tensors (e.g. model.parameters() or "
                        "[weight]), got a single Tensor")
    try:
        tensors = list(params)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"hsc: params must be an iterable of tensors, got "
                        f"{type(params).__name__}") from None
    if not tensors:
        raise ValueError("hsc: params must hold at least one tensor, got an empty iterable")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"hsc: params[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"hsc: params[{i}] must be a floating-point tensor, got dtype {t.dtype}")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"hsc: params must all be on one device, got "
                         f"{sorted(str(d) for d in devices)}")
    return tensors


def _segment_lengths(shape: torch.Size, patch: Optional[Tuple[int, int]]) -> List[int]:
    """Lengths of the segments one tensor is cut into, in layout order (empty for numel 0)."""
    numel = math.prod(shape)
    if numel == 0:
        return []
    if patch is None or len(shape) < 3:
        return [numel]
    ph, pw = patch
    height, width = shape[-2], shape[-1]
    lead = numel // (height * width)
    return [lead * min(ph, height - y0) * min(pw, width - x0)
            for y0 in range(0, height, ph) for x0 in range(0, width, pw)]


def _blocks_of(length: int, block_size: int) -> int:
    return -(-length // block_size)


class BlockLayout:
    """The block cut of a parameter set (docs/contract.md §1), reusable across steps.

    Args:
        params: the parameter tensors (floating point, all on one device), e.g.
            ``model.parameters()``. Only their shapes and device are kept, not their data.
        block_size: b, the number of entries per block (an int >= 1).
        patch: ``(ph, pw)`` to cut every tensor of dim >= 3 (shape ``[..., C, H, W]``) into
            spatial tiles of ph x pw pixels (edge tiles smaller), tiles in row-major order; a tile
            holds all its leading-dim and channel entries, ordered leading dims, then C, then y,
            then x, and is cut into blocks like a tensor is (padding at the end of the tile).
            Tensors of dim < 3 are cut plainly. ``None`` (default): every tensor is cut plainly,
            in ``torch.cat([p.reshape(-1) for p in params])`` order.

    Attributes:
        block_size: b.
        num_blocks: N.
        numel: the number of real (parameter) entries; ``N * b - numel`` slots are padding.
        shapes: the tensors' shapes (a tuple of ``torch.Size``).
        offsets: where each tensor starts in the concatenated flat parameter vector.
        device: the device of the parameters and of the index tensors.
        patch: the ``(ph, pw)`` tiling, or ``None``.
        index: ``[N, b]`` int64, for each block slot its position in the concatenated flat
            parameter vector, or ``numel`` for a padding slot.
        mask: ``[N, b]`` bool, True for the real entries.
        tensor_blocks: the ``(start, end)`` block range of each tensor (``end - start`` blocks,
            contiguous, in tensor order; empty for a tensor with no entries).
    """

    block_size: int
    num_blocks: int
    numel: int
    shapes: Tuple[torch.Size, ...]
    offsets: Tuple[int, ...]
    device: torch.device
    patch: Optional[Tuple[int, int]]
    index: torch.Tensor
    mask: torch.Tensor
    tensor_blocks: List[Tuple[int, int]]

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        block_size: int,
        *,
        patch: Optional[Tuple[int, int]] = None,
    ) -> None:
        block_size = _check_block_size(block_size)
        patch = _check_patch(patch)
        tensors = _check_params(params)

        self.block_size = block_size
        self.patch = patch
        self.shapes = tuple(t.shape for t in tensors)
        self.device = tensors[0].device
        numels = [t.numel() for t in tensors]
        del tensors  # keep no reference to the parameters
        self.offsets = tuple(sum(numels[:i]) for i in range(len(numels)))
        self.numel = sum(numels)

        pieces: List[torch.Tensor] = []
        self.tensor_blocks = []
        padded_blocks: List[int] = []  # blocks that end in padding, for identity_padding
        # Per block: (tile y, tile x, block within the tile) for blocks of spatial tiles, else
        # (-1, -1, -1): where blocks sit in an image, for block_colours.
        places: List[Tuple[int, int, int]] = []
        first_block = 0
        for shape, offset in zip(self.shapes, self.offsets):
            lengths = _segment_lengths(shape, patch)
            block_counts = [_blocks_of(n, block_size) for n in lengths]
            tiled = patch is not None and len(shape) >= 3
            tiles_x = _blocks_of(shape[-1], patch[1]) if tiled else 1
            cursor = first_block
            for t, (n, count) in enumerate(zip(lengths, block_counts)):
                cursor += count
                if n % block_size:
                    padded_blocks.append(cursor - 1)
                places += [(t // tiles_x, t % tiles_x, w) if tiled else (-1, -1, -1) for w in range(count)]
            if lengths:
                pieces.append(self._tensor_slots(shape, offset, lengths, block_counts))
            self.tensor_blocks.append((first_block, cursor))
            first_block = cursor
        self.num_blocks = first_block

        if pieces:
            self.index = torch.cat(pieces).view(self.num_blocks, block_size)
        else:
            self.index = torch.empty((0, block_size), dtype=torch.int64, device=self.device)
        self.mask = self.index < self.numel
        # inverse[j] = the slot (in the flat [N * b] blocks) holding flat parameter entry j.
        # Padding slots all write to the dropped trailing entry.
        inverse = torch.empty(self.numel + 1, dtype=torch.int64, device=self.device)
        inverse.index_put_((self.index.reshape(-1),),
                           torch.arange(self.index.numel(), dtype=torch.int64, device=self.device))
        self._inverse = inverse[: self.numel]
        self._padded_blocks = torch.tensor(padded_blocks, dtype=torch.int64, device=self.device)
        self._places = torch.tensor(places, dtype=torch.int64).reshape(-1, 3)
        # A tensor cut into one segment (no tiles, or one tile covering it: order lead, y, x) is
        # in flat order. If all are, gather is one concatenation and scatter takes views,
        # instead of an indexed copy each way.
        self._plain = all(len(_segment_lengths(shape, patch)) <= 1 for shape in self.shapes)

    def _tensor_slots(
        self,
        shape: torch.Size,
        offset: int,
        lengths: List[int],
        block_counts: List[int],
    ) -> torch.Tensor:
        """The flat positions of one tensor's slots, ``[sum(block_counts) * b]``, padding = numel."""
        b, device = self.block_size, self.device
        numel = math.prod(shape)
        total_slots = sum(block_counts) * b
        if len(lengths) == 1 and not (self.patch is not None and len(shape) >= 3):
            # Plain cut: the tensor's entries in order, then the padding of its last block.
            slots = torch.arange(offset, offset + total_slots, dtype=torch.int64, device=device)
            slots[numel:] = self.numel
            return slots
        # Spatial tiles: entry (l, y, x) of tile (ty, tx) with size th x tw goes to
        #   tile_start[ty, tx] + l * th * tw + (y mod ph) * tw + (x mod pw).
        ph, pw = self.patch  # type: ignore[misc]
        height, width = shape[-2], shape[-1]
        lead = numel // (height * width)
        tiles_x = _blocks_of(width, pw)
        tile_starts = [0]
        for count in block_counts[:-1]:
            tile_starts.append(tile_starts[-1] + count * b)
        tile_start = torch.tensor(tile_starts, dtype=torch.int64, device=device)

        ys = torch.arange(height, dtype=torch.int64, device=device)
        xs = torch.arange(width, dtype=torch.int64, device=device)
        tile_y, in_y = ys // ph, ys % ph
        tile_x, in_x = xs // pw, xs % pw
        tile_h = torch.clamp(height - tile_y * ph, max=ph)  # per row y: its tile's height
        tile_w = torch.clamp(width - tile_x * pw, max=pw)   # per column x: its tile's width
        start_yx = tile_start[tile_y[:, None] * tiles_x + tile_x[None, :]]          # [H, W]
        area_yx = tile_h[:, None] * tile_w[None, :]                                   # [H, W]
        within_yx = in_y[:, None] * tile_w[None, :] + in_x[None, :]                   # [H, W]
        ls = torch.arange(lead, dtype=torch.int64, device=device)[:, None, None]      # [L, 1, 1]
        destination = (start_yx + within_yx) + ls * area_yx                          # [L, H, W]

        slots = torch.full((total_slots,), self.numel, dtype=torch.int64, device=device)
        slots.index_put_((destination.reshape(-1),),
                         torch.arange(offset, offset + numel, dtype=torch.int64, device=device))
        return slots

    def block_colours(self, radius: int) -> torch.Tensor:
        """``[N]`` int64 colours such that blocks likely to couple strongly differ in colour (the
        coloured probe estimator, docs/contract.md §4): blocks of spatial tiles whose tile
        coordinates differ by at most ``radius`` in both directions, and blocks of one tile, never
        share a colour ((radius + 1)^2 x blocks-per-tile colours, by tile position modulo
        radius + 1); other blocks take the colours in turn (block index modulo the colour count),
        so neighbours in memory differ. Colours are 0..C-1, C = ``max + 1``."""
        if not (isinstance(radius, int) and radius >= 0):
            raise ValueError(f"hsc: radius must be an int >= 0, got {radius!r}")
        period = radius + 1
        ty, tx, within = self._places.unbind(1)
        per_tile = max(int(within.max()) + 1, 1) if self.num_blocks else 1
        count = period * period * per_tile
        tiled = ty >= 0
        colours = ((ty % period) * period + tx % period) * per_tile + within
        plain = torch.arange(self.num_blocks, dtype=torch.int64) % count
        return torch.where(tiled, colours, plain).to(self.device)

    # ---- moving data between parameter tensors and blocks -------------------------------------

    def _check_like_params(self, tensors: object, name: str) -> List[torch.Tensor]:
        if isinstance(tensors, torch.Tensor):
            raise TypeError(f"hsc: {name} must be a sequence of {len(self.shapes)} tensors shaped "
                            f"like the params, got a single Tensor")
        try:
            tensors = list(tensors)  # type: ignore[call-overload]
        except TypeError:
            raise TypeError(f"hsc: {name} must be a sequence of tensors, got "
                            f"{type(tensors).__name__}") from None
        if len(tensors) != len(self.shapes):
            raise ValueError(f"hsc: {name} must hold {len(self.shapes)} tensors (one per param), "
                             f"got {len(tensors)}")
        for i, (t, shape) in enumerate(zip(tensors, self.shapes)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"hsc: {name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
            if t.shape != shape:
                raise ValueError(f"hsc: {name}[{i}] must have shape {tuple(shape)} (params[{i}]), "
                                 f"got {tuple(t.shape)}")
            if t.device != self.device:
                raise ValueError(f"hsc: {name}[{i}] must be on {self.device} (the layout's device), "
                                 f"got {t.device}")
        return tensors

    def _check_blocks(self, blocks: object, name: str = "blocks") -> torch.Tensor:
        if not isinstance(blocks, torch.Tensor):
            raise TypeError(f"hsc: {name} must be a torch.Tensor, got {type(blocks).__name__}")
        expected = (self.num_blocks, self.block_size)
        if tuple(blocks.shape) != expected:
            raise ValueError(f"hsc: {name} must have shape [N, b] = {list(expected)}, "
                             f"got {list(blocks.shape)}")
        if blocks.device != self.device:
            raise ValueError(f"hsc: {name} must be on {self.device} (the layout's device), "
                             f"got {blocks.device}")
        return blocks

    def gather(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The entries of ``tensors`` (shaped like the params, e.g. their ``.grad``) as ``[N, b]``.

        Padding slots hold 0. The dtype is the tensors' dtype (``torch.cat``'s promotion if they
        differ). One concatenation (and one indexing for tiled layouts); differentiable.
        """
        tensors = self._check_like_params(tensors, "tensors")
        return self.gather_rows([t.unsqueeze(0) for t in tensors])[0]

    def scatter(self, blocks: torch.Tensor) -> List[torch.Tensor]:
        """The inverse of :meth:`gather`: ``[N, b]`` blocks -> tensors shaped like the params.

        Padding slots are ignored. The returned tensors are views into one flat tensor of
        ``blocks``' dtype: ``blocks`` itself when the layout is plain (no spatial tiles), else
        one new tensor (one indexing, no per-tensor copies); differentiable.
        """
        blocks = self._check_blocks(blocks)
        return [t[0] for t in self.scatter_rows(blocks.unsqueeze(0))]

    def scatter_(self, blocks: torch.Tensor, out: Sequence[torch.Tensor]) -> None:
        """Write ``blocks`` (``[N, b]``) into the existing tensors ``out`` (e.g. the params' grads).

        Padding slots are ignored; one ``copy_`` per tensor (converting to each tensor's dtype;
        ``out`` tensors may be non-contiguous), from views of ``blocks`` for plain layouts.
        """
        blocks = self._check_blocks(blocks)
        out = self._check_like_params(out, "out")
        for target, piece in zip(out, self.scatter_rows(blocks.unsqueeze(0))):
            target.copy_(piece[0])

    def gather_rows(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`gather` for B rows at once: tensors ``[B, *param_shape]`` -> ``[B, N, b]``.

        No argument checks (an internal fast path, e.g. for batches of HVPs)."""
        B = tensors[0].shape[0]
        rows = [t.reshape(B, -1) for t in tensors]
        if self._plain:  # torch.cat promotes dtypes as the indexed path does
            pieces = []
            for row, (start, end) in zip(rows, self.tensor_blocks):
                pieces.append(row)
                padding = (end - start) * self.block_size - row.shape[1]
                if padding:
                    pieces.append(row.new_zeros(B, padding))
            return torch.cat(pieces, 1).view(B, self.num_blocks, self.block_size)
        flat = torch.cat(rows + [rows[0].new_zeros(B, 1)], 1)
        return flat[:, self.index]

    def scatter_rows(self, blocks: torch.Tensor) -> List[torch.Tensor]:
        """:meth:`scatter` for B rows at once: ``[B, N, b]`` -> tensors ``[B, *param_shape]``
        (views of ``blocks`` for plain layouts). No argument checks."""
        B, b = blocks.shape[0], self.block_size
        flat = blocks.reshape(B, -1)
        if self._plain:
            return [flat[:, start * b:start * b + math.prod(shape)].reshape(B, *shape)
                    for shape, (start, _) in zip(self.shapes, self.tensor_blocks)]
        entries = flat[:, self._inverse]
        return [piece.reshape(B, *shape) for piece, shape in
                zip(entries.split([math.prod(s) for s in self.shapes], 1), self.shapes)]

    def identity_padding(self, H: torch.Tensor) -> torch.Tensor:
        """``H`` (``[N, b, b]``) with every padding row and column replaced by the identity's.

        Entry ``(k, i, j)`` becomes ``1 if i == j else 0`` where slot i or slot j of block k is
        padding (docs/contract.md §1's inert entries); real entries are copied unchanged. Returns a new tensor
        (``H`` is not modified); only the blocks that contain padding are touched after the copy.
        """
        if not isinstance(H, torch.Tensor):
            raise TypeError(f"hsc: H must be a torch.Tensor, got {type(H).__name__}")
        b = self.block_size
        expected = (self.num_blocks, b, b)
        if tuple(H.shape) != expected:
            raise ValueError(f"hsc: H must have shape [N, b, b] = {list(expected)}, "
                             f"got {list(H.shape)}")
        if H.device != self.device:
            raise ValueError(f"hsc: H must be on {self.device} (the layout's device), got {H.device}")
        result = H.clone()
        if self._padded_blocks.numel():
            real = self.mask[self._padded_blocks]                        # [P, b]
            real_pair = real[:, :, None] & real[:, None, :]              # [P, b, b]
            eye = torch.eye(b, dtype=H.dtype, device=H.device)
            result[self._padded_blocks] = torch.where(real_pair, H[self._padded_blocks], eye)
        return result

    # ---- work split, device, display ----------------------------------------------------------

    def ranges(self, num_workers: int) -> List[Tuple[int, int]]:
        """Split the N blocks into ``num_workers`` contiguous ``(start, end)`` ranges.

        Every block costs the same (b^3), so the ranges are balanced by count: their sizes differ
        by at most 1 (the larger ones first); they cover ``[0, N)`` in order, and some are empty
        when ``num_workers > N``.
        """
        if not _is_int(num_workers):
            raise TypeError(f"hsc: num_workers must be an int >= 1, got "
                            f"{type(num_workers).__name__} {num_workers!r}")
        if num_workers < 1:
            raise ValueError(f"hsc: num_workers must be an int >= 1, got {num_workers}")
        base, extra = divmod(self.num_blocks, num_workers)
        result = []
        start = 0
        for worker in range(num_workers):
            end = start + base + (1 if worker < extra else 0)
            result.append((start, end))
            start = end
        return result

    def to(self, device: torch.device | str) -> "BlockLayout":
        """A copy of this layout whose index tensors live on ``device``."""
        moved = copy.copy(self)
        moved.index = self.index.to(device)
        moved.mask = self.mask.to(device)
        moved._inverse = self._inverse.to(device)
        moved._padded_blocks = self._padded_blocks.to(device)
        moved.tensor_blocks = list(self.tensor_blocks)
        moved.device = moved.index.device
        return moved

    @property
    def num_padding(self) -> int:
        """The number of padding slots, ``N * b - numel``."""
        return self.num_blocks * self.block_size - self.numel

    def __repr__(self) -> str:
        slots = self.num_blocks * self.block_size
        fraction = self.num_padding / slots if slots else 0.0
        patch = f", patch={self.patch}" if self.patch is not None else ""
        return (f"BlockLayout(num_blocks={self.num_blocks}, block_size={self.block_size}, "
                f"tensors={len(self.shapes)}, numel={self.numel}, "
                f"padding={fraction:.1%}{patch}, device={self.device})")
