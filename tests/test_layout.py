"""Tests of hsc.layout.BlockLayout against docs/contract.md §1 (blocks, padding, spatial patches, round trip).

The expected layouts are built here independently, by explicit Python loops over tensors, tiles and
coordinates (see ``reference_rows``), and compared exactly with the vectorised index.
"""
from __future__ import annotations

import gc
import math
import weakref
from typing import List, Optional, Sequence, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hsc.layout import BlockLayout

BLOCK_SIZES = [1, 2, 3, 7, 8, 16, 32]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=60, deadline=None)

Shape = Tuple[int, ...]


# ---- independent reference -------------------------------------------------------------------

def reference_segments(shapes: Sequence[Shape], patch: Optional[Tuple[int, int]]) -> List[List[int]]:
    """Every segment (tensor, or spatial tile) as its list of flat positions, in layout order."""
    segments = []
    offset = 0
    for shape in shapes:
        numel = math.prod(shape)
        if patch is not None and len(shape) >= 3:
            ph, pw = patch
            height, width = shape[-2], shape[-1]
            lead = math.prod(shape[:-2])
            for y0 in range(0, height, ph):
                for x0 in range(0, width, pw):
                    segments.append([
                        offset + (l * height + y) * width + x
                        for l in range(lead)
                        for y in range(y0, min(y0 + ph, height))
                        for x in range(x0, min(x0 + pw, width))
                    ])
        elif numel:
            segments.append(list(range(offset, offset + numel)))
        offset += numel
    return [s for s in segments if s]


def reference_rows(shapes: Sequence[Shape], block_size: int,
                   patch: Optional[Tuple[int, int]]) -> List[List[int]]:
    """The expected index rows: each segment cut into blocks, its last block padded with numel."""
    numel = sum(math.prod(s) for s in shapes)
    rows = []
    for segment in reference_segments(shapes, patch):
        for start in range(0, len(segment), block_size):
            chunk = segment[start:start + block_size]
            rows.append(chunk + [numel] * (block_size - len(chunk)))
    return rows


def tensor_of_position(shapes: Sequence[Shape]) -> List[int]:
    """For each flat position, the number of the tensor it belongs to."""
    return [i for i, s in enumerate(shapes) for _ in range(math.prod(s))]


def tile_of_position(shapes: Sequence[Shape], patch: Tuple[int, int]) -> List[Tuple[int, int, int]]:
    """For each flat position, (tensor, tile row, tile column); tile = (-1, -1) for dim < 3."""
    ph, pw = patch
    result = []
    for i, shape in enumerate(shapes):
        for flat in range(math.prod(shape)):
            if len(shape) >= 3:
                y, x = (flat // shape[-1]) % shape[-2], flat % shape[-1]
                result.append((i, y // ph, x // pw))
            else:
                result.append((i, -1, -1))
    return result


def random_params(shapes: Sequence[Shape], seed: int, dtype=torch.float32,
                  device: str = "cpu") -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator, dtype=dtype).to(device) for s in shapes]


# ---- hypothesis strategies -------------------------------------------------------------------

dim = st.integers(1, 6)
shape_strategy = st.one_of(
    st.just(()),                                                    # scalar
    st.tuples(st.integers(1, 40)),                                  # bias
    st.tuples(dim, dim),                                            # linear weight
    st.tuples(st.integers(1, 3), dim, dim),                         # [C, H, W]
    st.tuples(st.integers(1, 4), st.integers(1, 3), dim, dim),      # conv weight / image batch
)
shapes_strategy = st.lists(shape_strategy, min_size=1, max_size=4)
patch_strategy = st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4)))
dtype_strategy = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


# ---- layout structure ------------------------------------------------------------------------

@SETTINGS
@given(shapes=shapes_strategy, block_size=st.sampled_from(BLOCK_SIZES), patch=patch_strategy)
def test_index_matches_reference(shapes, block_size, patch):
    layout = BlockLayout(random_params(shapes, 0), block_size, patch=patch)
    expected = reference_rows(shapes, block_size, patch)
    numel = sum(math.prod(s) for s in shapes)
    assert layout.numel == numel
    assert layout.num_blocks == len(expected)
    assert layout.block_size == block_size
    assert layout.shapes == tuple(torch.Size(s) for s in shapes)
    assert layout.index.dtype == torch.int64
    assert torch.equal(layout.index, torch.tensor(expected, dtype=torch.int64).view(-1, block_size))
    assert torch.equal(layout.mask, torch.tensor(expected).view(-1, block_size) < numel)
    # A fixed permutation of the flat entries plus padding.
    assert torch.equal(layout.index[layout.mask].sort().values, torch.arange(numel))


@SETTINGS
@given(shapes=shapes_strategy, block_size=st.sampled_from(BLOCK_SIZES), patch=patch_strategy)
def test_padding_count_and_position(shapes, block_size, patch):
    layout = BlockLayout(random_params(shapes, 0), block_size, patch=patch)
    segments = reference_segments(shapes, patch)
    expected_padding = sum((-len(s)) % block_size for s in segments)
    assert int((~layout.mask).sum()) == expected_padding
    assert layout.num_padding == expected_padding
    assert layout.num_blocks == sum(-(-len(s) // block_size) for s in segments)
    # Padding only at the end of a block: every mask row is True...True False...False,
    # and a block with padding is the last block of its segment.
    count = layout.mask.sum(dim=1)
    assert torch.equal(layout.mask, torch.arange(block_size)[None, :] < count[:, None])
    last_blocks = set(torch.tensor([-(-len(s) // block_size) for s in segments]).cumsum(0).sub(1)
                      .tolist())
    assert set(torch.nonzero(count < block_size).flatten().tolist()) <= last_blocks


@SETTINGS
@given(shapes=shapes_strategy, block_size=st.sampled_from(BLOCK_SIZES), patch=patch_strategy)
def test_no_block_straddles_tensors_or_tiles(shapes, block_size, patch):
    layout = BlockLayout(random_params(shapes, 0), block_size, patch=patch)
    owner = tensor_of_position(shapes)
    tile = tile_of_position(shapes, patch) if patch is not None else None
    numel = layout.numel

    ranges = layout.tensor_blocks
    assert len(ranges) == len(shapes)
    assert ranges[0][0] == 0 and ranges[-1][1] == layout.num_blocks
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))

    offsets = [sum(math.prod(s) for s in shapes[:i]) for i in range(len(shapes))]
    assert tuple(layout.offsets) == tuple(offsets)
    for k, row in enumerate(layout.index.tolist()):
        real = [p for p in row if p < numel]
        assert real, f"block {k} holds no parameter entry"
        tensor_ids = {owner[p] for p in real}
        assert len(tensor_ids) == 1, f"block {k} straddles tensors {tensor_ids}"
        (t,) = tensor_ids
        assert ranges[t][0] <= k < ranges[t][1]
        assert all(offsets[t] <= p < offsets[t] + math.prod(shapes[t]) for p in real)
        if tile is not None:
            tiles = {tile[p] for p in real}
            assert len(tiles) == 1, f"block {k} straddles tiles {tiles}"


@SETTINGS
@given(shapes=st.lists(st.one_of(st.just(()), st.tuples(st.integers(1, 40)), st.tuples(dim, dim)),
                       min_size=1, max_size=4),
       block_size=st.sampled_from(BLOCK_SIZES), patch=patch_strategy)
def test_patch_leaves_low_dim_tensors_plain(shapes, block_size, patch):
    plain = BlockLayout(random_params(shapes, 0), block_size)
    patched = BlockLayout(random_params(shapes, 0), block_size, patch=patch)
    assert torch.equal(plain.index, patched.index)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_plain_cut_follows_flat_order(block_size):
    shape = (5, 3, 7)  # dim 3, but patch is None: a plain cut
    param = torch.randn(shape)
    layout = BlockLayout([param], block_size)
    flat = param.reshape(-1)
    blocks = layout.gather([param])
    for i in range(layout.num_blocks):
        real = layout.mask[i]
        assert torch.equal(blocks[i][real], flat[i * block_size:(i + 1) * block_size])
        assert torch.equal(layout.index[i][real],
                           torch.arange(i * block_size, min((i + 1) * block_size, flat.numel())))
    # Several tensors: the real entries, read block by block, are torch.cat order.
    params = [torch.randn(4, 5), torch.randn(()), torch.randn(2, 3, 3, 3)]
    layout = BlockLayout(params, block_size)
    cat = torch.cat([p.reshape(-1) for p in params])
    assert torch.equal(layout.gather(params)[layout.mask], cat)
    assert torch.equal(layout.index[layout.mask], torch.arange(cat.numel()))


def test_patch_hand_example_full_tiles():
    # [1, 2, 4, 4], patch (2, 2), b = 8: entry (c, y, x) sits at 16c + 4y + x; each block is one
    # 2x2 tile across both channels, tiles in row-major order.
    param = torch.arange(32, dtype=torch.float32).view(1, 2, 4, 4)
    layout = BlockLayout([param], 8, patch=(2, 2))
    expected = torch.tensor([
        [0, 1, 4, 5, 16, 17, 20, 21],      # tile (0, 0)
        [2, 3, 6, 7, 18, 19, 22, 23],      # tile (0, 1)
        [8, 9, 12, 13, 24, 25, 28, 29],    # tile (1, 0)
        [10, 11, 14, 15, 26, 27, 30, 31],  # tile (1, 1)
    ])
    assert torch.equal(layout.index, expected)
    assert bool(layout.mask.all())
    assert torch.equal(layout.gather([param]), expected.float())
    assert layout.tensor_blocks == [(0, 4)]


def test_patch_hand_example_edge_tiles_and_padding():
    # [1, 1, 3, 3], patch (2, 2), b = 4: tiles of 4, 2, 2 and 1 pixels; padding slot = numel = 9.
    layout = BlockLayout([torch.zeros(1, 1, 3, 3)], 4, patch=(2, 2))
    assert torch.equal(layout.index, torch.tensor([
        [0, 1, 3, 4],
        [2, 5, 9, 9],
        [6, 7, 9, 9],
        [8, 9, 9, 9],
    ]))


def test_patch_hand_example_leading_dims_then_channels():
    # [2, 2, 2, 2], patch (1, 2), b = 4: a tile is one row y across all of (n, c), ordered n, c, x.
    # Entry (n, c, y, x) sits at 8n + 4c + 2y + x. Each tile holds 8 entries = two blocks.
    # Followed by a bias of 3 entries (positions 16..18), plain, padded with 19.
    layout = BlockLayout([torch.zeros(2, 2, 2, 2), torch.zeros(3)], 4, patch=(1, 2))
    assert torch.equal(layout.index, torch.tensor([
        [0, 1, 4, 5],      # tile y = 0: n=0 (c=0, c=1)
        [8, 9, 12, 13],    #             n=1 (c=0, c=1)
        [2, 3, 6, 7],      # tile y = 1
        [10, 11, 14, 15],
        [16, 17, 18, 19],  # bias
    ]))
    assert layout.tensor_blocks == [(0, 4), (4, 5)]


# ---- gather / scatter ------------------------------------------------------------------------

@SETTINGS
@given(shapes=shapes_strategy, block_size=st.sampled_from(BLOCK_SIZES), patch=patch_strategy,
       dtype=dtype_strategy, seed=st.integers(0, 2**31 - 1))
def test_round_trip_exact(shapes, block_size, patch, dtype, seed):
    params = random_params(shapes, seed, dtype)
    layout = BlockLayout(params, block_size, patch=patch)
    blocks = layout.gather(params)
    assert blocks.shape == (layout.num_blocks, block_size)
    assert blocks.dtype == dtype
    # Padding slots hold exactly 0, real slots the entry the index names.
    assert bool((blocks[~layout.mask] == 0).all())
    flat = torch.cat([p.reshape(-1) for p in params])
    assert torch.equal(blocks[layout.mask], flat[layout.index[layout.mask]])

    back = layout.scatter(blocks)
    assert len(back) == len(params)
    for original, restored in zip(params, back):
        assert restored.shape == original.shape and restored.dtype == dtype
        assert torch.equal(restored, original)

    # Whatever sits in the padding slots never reaches a tensor.
    dirty = blocks.clone()
    dirty[~layout.mask] = float("nan")
    for original, restored in zip(params, layout.scatter(dirty)):
        assert torch.equal(restored, original)

    out = [torch.full_like(p, 7.0) for p in params]
    assert layout.scatter_(dirty, out) is None
    for original, written in zip(params, out):
        assert torch.equal(written, original)

    # And back: gather(scatter(blocks)) reproduces the blocks (padding 0).
    assert torch.equal(layout.gather(back), blocks)


def test_scatter_into_non_contiguous_and_other_dtype():
    params = [torch.randn(3, 5), torch.randn(4)]
    layout = BlockLayout(params, 3)
    blocks = layout.gather(params)
    storage = torch.zeros(5, 3)
    out = [storage.t(), torch.zeros(4, dtype=torch.float64)]  # a transposed view; float64
    layout.scatter_(blocks, out)
    assert torch.equal(storage.t(), params[0])
    assert torch.equal(out[1], params[1].double())


def test_gather_and_scatter_are_differentiable():
    params = [torch.randn(2, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    layout = BlockLayout(params, 4)
    weights = torch.randn(layout.num_blocks, 4)
    (layout.gather(params) * weights).sum().backward()
    expected = layout.scatter(weights)
    for p, g in zip(params, expected):
        assert torch.equal(p.grad, g)


def test_empty_tensors_contribute_no_blocks():
    params = [torch.zeros(0, 3), torch.randn(5), torch.zeros(2, 0, 3, 3)]
    layout = BlockLayout(params, 2, patch=(2, 2))
    assert layout.numel == 5 and layout.num_blocks == 3
    assert layout.tensor_blocks == [(0, 0), (0, 3), (3, 3)]
    back = layout.scatter(layout.gather(params))
    assert [tuple(t.shape) for t in back] == [(0, 3), (5,), (2, 0, 3, 3)]
    assert torch.equal(back[1], params[1])


# ---- identity padding ------------------------------------------------------------------------

@SETTINGS
@given(shapes=shapes_strategy, block_size=st.sampled_from(BLOCK_SIZES), patch=patch_strategy,
       seed=st.integers(0, 2**31 - 1))
def test_identity_padding(shapes, block_size, patch, seed):
    layout = BlockLayout(random_params(shapes, 0), block_size, patch=patch)
    generator = torch.Generator().manual_seed(seed)
    H = torch.randn(layout.num_blocks, block_size, block_size, generator=generator,
                    dtype=torch.float64)
    # Garbage (NaN) in every padding row and column must not survive.
    H[~layout.mask] = float("nan")
    H.transpose(1, 2)[~layout.mask] = float("nan")
    original = H.clone()
    result = layout.identity_padding(H)
    assert torch.equal(torch.nan_to_num(H, 123.0), torch.nan_to_num(original, 123.0))  # untouched
    assert result.dtype == H.dtype and result.shape == H.shape
    assert not bool(result.isnan().any())
    rows = torch.tensor(reference_rows(shapes, block_size, patch)).view(-1, block_size)
    real = rows < layout.numel
    real_pair = real[:, :, None] & real[:, None, :]
    eye = torch.eye(block_size, dtype=H.dtype).expand_as(H)
    assert torch.equal(result[real_pair], H[real_pair])      # real entries exactly as they were
    assert torch.equal(result[~real_pair], eye[~real_pair])  # identity rows/columns at padding


def test_identity_padding_hand_example():
    layout = BlockLayout([torch.zeros(5)], 4)  # block 0 full, block 1 = one entry + 3 padding
    H = torch.full((2, 4, 4), 9.0)
    expected = H.clone()
    expected[1, 1:, :] = 0.0
    expected[1, :, 1:] = 0.0
    expected[1, 1, 1] = expected[1, 2, 2] = expected[1, 3, 3] = 1.0
    assert torch.equal(layout.identity_padding(H), expected)


# ---- ranges ----------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(num_blocks=st.integers(0, 120), num_workers=st.integers(1, 40))
def test_ranges_balanced_and_covering(num_blocks, num_workers):
    layout = BlockLayout([torch.zeros(num_blocks)], 1)
    assert layout.num_blocks == num_blocks
    ranges = layout.ranges(num_workers)
    assert len(ranges) == num_workers
    assert ranges[0][0] == 0 and ranges[-1][1] == num_blocks
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [end - start for start, end in ranges]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1
    assert sum(sizes) == num_blocks


def test_ranges_examples():
    layout = BlockLayout([torch.zeros(10)], 1)
    assert layout.ranges(1) == [(0, 10)]
    assert layout.ranges(3) == [(0, 4), (4, 7), (7, 10)]
    assert layout.ranges(12)[-2:] == [(10, 10), (10, 10)]


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("block_size, error", [
    (0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError), ("8", TypeError),
])
def test_bad_block_size(block_size, error):
    with pytest.raises(error, match=r"\bblock_size\b"):
        BlockLayout([torch.zeros(4)], block_size)


@pytest.mark.parametrize("params, error", [
    ([], ValueError),
    (iter([]), ValueError),
    (torch.zeros(4), TypeError),                                   # a bare tensor, not a list
    ([torch.zeros(4, dtype=torch.int64)], TypeError),
    ([torch.zeros(4), "weight"], TypeError),
    ([torch.zeros(4), torch.zeros(2, device="meta")], ValueError),  # two devices
    (3, TypeError),
])
def test_bad_params(params, error):
    with pytest.raises(error, match=r"\bparams\b"):
        BlockLayout(params, 4)


@pytest.mark.parametrize("patch, error", [
    ((0, 2), ValueError), ((2, -1), ValueError), ((2,), ValueError), ((2, 2, 2), ValueError),
    ((2.0, 2), TypeError), (2, TypeError), ((True, 2), TypeError),
])
def test_bad_patch(patch, error):
    with pytest.raises(error, match=r"\bpatch\b"):
        BlockLayout([torch.zeros(1, 4, 4)], 4, patch=patch)


def test_bad_gather_scatter_arguments():
    params = [torch.zeros(3, 4), torch.zeros(5)]
    layout = BlockLayout(params, 4)
    with pytest.raises(ValueError, match=r"\btensors\b"):
        layout.gather(params[:1])
    with pytest.raises(ValueError, match=r"\btensors\b"):
        layout.gather(params + [torch.zeros(1)])
    with pytest.raises(ValueError, match=r"\btensors\[0\]"):
        layout.gather([torch.zeros(4, 3), torch.zeros(5)])
    with pytest.raises(TypeError, match=r"\btensors\b"):
        layout.gather(torch.zeros(3, 4))
    blocks = layout.gather(params)
    with pytest.raises(ValueError, match=r"\bblocks\b"):
        layout.scatter(blocks[:-1])
    with pytest.raises(ValueError, match=r"\bblocks\b"):
        layout.scatter(blocks.reshape(-1))
    with pytest.raises(TypeError, match=r"\bblocks\b"):
        layout.scatter(blocks.tolist())
    with pytest.raises(ValueError, match=r"\bblocks\b"):
        layout.scatter_(blocks[:, :2], params)
    with pytest.raises(ValueError, match=r"\bout\b"):
        layout.scatter_(blocks, params[:1])
    with pytest.raises(ValueError, match=r"\bout\[1\]"):
        layout.scatter_(blocks, [torch.zeros(3, 4), torch.zeros(6)])
    with pytest.raises(ValueError, match=r"\bH\b"):
        layout.identity_padding(torch.zeros(layout.num_blocks, 4, 3))
    with pytest.raises(ValueError, match=r"\bnum_workers\b"):
        layout.ranges(0)
    with pytest.raises(TypeError, match=r"\bnum_workers\b"):
        layout.ranges(1.5)


# ---- reuse, devices, display -----------------------------------------------------------------

def test_keeps_no_reference_to_params():
    param = torch.randn(6, 5)
    ref = weakref.ref(param)
    layout = BlockLayout([param], 4)
    del param
    gc.collect()
    assert ref() is None
    later = [torch.randn(6, 5)]  # reusable for any tensors of the same shapes
    assert torch.equal(layout.scatter(layout.gather(later))[0], later[0])


def test_accepts_a_generator_of_parameters():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Linear(4, 2))
    layout = BlockLayout(model.parameters(), 8, patch=(2, 2))
    assert layout.shapes == tuple(p.shape for p in model.parameters())
    grads = [torch.randn_like(p) for p in model.parameters()]
    for g, back in zip(grads, layout.scatter(layout.gather(grads))):
        assert torch.equal(g, back)


@pytest.mark.parametrize("device", DEVICES)
def test_built_on_the_params_device(device):
    shapes = [(2, 3, 5, 5), (7,), ()]
    params = random_params(shapes, 1, device=device)
    layout = BlockLayout(params, 8, patch=(2, 3))
    assert layout.index.device.type == device and layout.mask.device.type == device
    assert torch.equal(layout.index.cpu(),
                       torch.tensor(reference_rows(shapes, 8, (2, 3))).view(-1, 8))
    for p, back in zip(params, layout.scatter(layout.gather(params))):
        assert back.device == p.device and torch.equal(back, p)
    H = torch.randn(layout.num_blocks, 8, 8, device=device)
    cpu_layout = layout.to("cpu")
    assert torch.equal(layout.identity_padding(H).cpu(), cpu_layout.identity_padding(H.cpu()))


def test_meta_device_plans_shapes_only():
    layout = BlockLayout([torch.empty(3, 4, 5, 5, device="meta")], 7, patch=(2, 3))
    assert layout.device.type == "meta" and layout.index.device.type == "meta"
    segments = reference_segments([(3, 4, 5, 5)], (2, 3))
    assert layout.num_blocks == sum(-(-len(s) // 7) for s in segments)
    assert layout.index.shape == (layout.num_blocks, 7)


def test_to_returns_a_copy_on_the_device():
    params = [torch.randn(3, 3), torch.randn(2)]
    layout = BlockLayout(params, 4)
    meta = layout.to("meta")
    assert meta is not layout
    assert meta.device.type == "meta" and meta.index.device.type == "meta"
    assert meta.mask.device.type == "meta"
    assert layout.device.type == "cpu" and layout.index.device.type == "cpu"
    assert (meta.num_blocks, meta.block_size, meta.shapes, meta.tensor_blocks) == \
        (layout.num_blocks, layout.block_size, layout.shapes, layout.tensor_blocks)
    copy_cpu = layout.to(torch.device("cpu"))
    assert copy_cpu is not layout and torch.equal(copy_cpu.index, layout.index)
    for p, back in zip(params, copy_cpu.scatter(copy_cpu.gather(params))):
        assert torch.equal(back, p)


def test_repr():
    layout = BlockLayout([torch.zeros(5), torch.zeros(2, 2)], 4)  # 2 + 1 blocks, 3 padding slots of 12
    text = repr(layout)
    assert text.startswith("BlockLayout(")
    for part in ("num_blocks=3", "block_size=4", "tensors=2", "numel=9", "padding=25.0%",
                 "device=cpu"):
        assert part in text, (part, text)
    assert "patch=(2, 2)" in repr(BlockLayout([torch.zeros(1, 3, 3)], 4, patch=(2, 2)))


# ---- block colours (the coloured estimator, docs/contract.md §4) ------------------------------

def block_places(layout: BlockLayout, shapes: Sequence[Shape], patch: Tuple[int, int]) -> List[Tuple[int, int, int]]:
    """(tensor, tile row, tile column) of each block, from its first real slot (tile -1 for plain)."""
    tiles = tile_of_position(shapes, patch)
    return [tiles[int(row[mask][0])] for row, mask in zip(layout.index, layout.mask)]


def check_colours(shapes: Sequence[Shape], block_size: int, patch: Tuple[int, int], radius: int) -> torch.Tensor:
    layout = BlockLayout(random_params(shapes, 0), block_size, patch=patch)
    colours = layout.block_colours(radius)
    assert colours.dtype == torch.int64 and colours.shape == (layout.num_blocks,)
    places = block_places(layout, shapes, patch)
    per_tile = max([sum(1 for q in places if q == p) for p in places if p[1] >= 0], default=0)
    count = (radius + 1) ** 2 * per_tile
    assert int(colours.min()) >= 0 and int(colours.max()) < count
    c = colours.tolist()
    for k, (tk, yk, xk) in enumerate(places):
        if yk < 0:
            continue
        for m, (tm, ym, xm) in enumerate(places):
            # every pair of blocks of one tile, or of tiles of one tensor within the radius
            if m != k and tm == tk and abs(ym - yk) <= radius and abs(xm - xk) <= radius:
                assert c[k] != c[m], (k, m, places[k], places[m], c[k])
    # plain tensors' blocks take the colours in turn (block index modulo the count)
    plain = [k for k, p in enumerate(places) if p[1] < 0]
    assert [c[k] for k in plain] == [k % count for k in plain]
    return colours


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_block_colours_hand_example(radius):
    # An image 2 x 5 x 7 in 2 x 2 tiles (edge tiles smaller: 3, 2 or 1 blocks of 3) and a bias of
    # 10 entries cut plainly; every pair of blocks is checked.
    colours = check_colours([(1, 2, 5, 7), (10,)], 3, (2, 2), radius)
    if radius <= 1:  # the 3 x 4 tiles hold every residue; at radius 2 the edge tiles miss the last colours
        assert int(colours.max()) + 1 == (radius + 1) ** 2 * 3


@SETTINGS
@given(shapes=st.lists(st.one_of(st.tuples(st.integers(1, 3), dim, dim), st.tuples(st.integers(1, 40))),
                       min_size=1, max_size=3).filter(lambda s: any(len(x) == 3 for x in s)),
       block_size=st.sampled_from([1, 2, 3, 7]), patch=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       radius=st.integers(0, 2))
def test_block_colours_separate_neighbouring_tiles(shapes, block_size, patch, radius):
    check_colours(shapes, block_size, patch, radius)


def test_block_colours_bad_radius():
    layout = BlockLayout([torch.zeros(1, 2, 4, 4)], 2, patch=(2, 2))
    for radius in (-1, 1.5, None):
        with pytest.raises(ValueError, match="radius"):
            layout.block_colours(radius)


def test_block_colours_of_a_layout_without_tiles():
    layout = BlockLayout([torch.zeros(10), torch.zeros(3, 4)], 4)
    colours = layout.block_colours(1)
    assert colours.shape == (layout.num_blocks,) and int(colours.min()) >= 0
    assert all(a != b for a, b in zip(colours.tolist(), colours.tolist()[1:]))  # neighbours differ
