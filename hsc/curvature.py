"""Block-diagonal curvature (docs/contract.md §4): from Hessian-vector products, or the exact
block diagonal of the generalised Gauss-Newton matrix from Jacobian-transpose products.

HVPs are taken by double backward through the graph of a gradient computed with
``create_graph=True``, several probe vectors at once with ``is_grads_batched`` (vmap over the
backward pass) or one at a time. Nothing hooks into modules, so a network called several times per
loss (a GAN's discriminator) is handled like any other function.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import torch

from .layout import BlockLayout

# Probe vectors per batched HVP on a GPU when no chunk_size is given: bounds the [chunk, n]
# buffers to about 2^26 entries.
_DEFAULT_CHUNK_ENTRIES = 1 << 26


def batched_chunk_size(numel: int) -> int:
    """Vectors per batched HVP call that keep the ``[chunk, n]`` buffers near 2^26 entries."""
    return max(1, _DEFAULT_CHUNK_ENTRIES // max(numel, 1))


# Jacobian-transpose products per backward on the CPU (the gauss_newton estimator). Measured, one
# thread, medians of refreshes alternating one and four a backward (bench/results/profile_gan_step.md):
# the digits MLPs' 32 sketches 145 -> 122 ms, MNIST's DCGAN generator's 16 products 745 -> 521 ms;
# 8 or 16 at a time were no better in a first timing. Batched HVPs were slower there (ring8 0.77x,
# Stacked MNIST 0.93x), so the probe estimator stays at one.
_CPU_PRODUCTS_PER_BACKWARD = 4


def default_chunk_size(numel: int, device: torch.device, *, first_order: bool = False) -> int:
    """Vectors per backward. On a GPU, batches, so that one launch serves many. On the CPU,
    Hessian-vector products one at a time: vmap's batched double backward copies more than it
    saves there (16 probes of a 0.92 M-parameter MLP, one thread: 36.8 ms an HVP batched against
    28.5 ms one by one; equal on a 34 k-parameter one; slower on the Stacked MNIST DCGAN players);
    ``first_order`` products (J^T v, one plain backward each) a few at a time, which pays."""
    if torch.device(device).type != "cpu":
        return batched_chunk_size(numel)
    return _CPU_PRODUCTS_PER_BACKWARD if first_order else 1


def hvp_rows(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
             tangents: Sequence[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """H v for B vectors v at once, per parameter: ``tangents[i]`` is ``[B, *params[i].shape]``;
    returns ``[B, *params[i].shape]`` per parameter, or ``None`` where H v has no entries (a
    parameter that does not require grad or that nothing reaches).

    ``grads`` must be the gradient of the loss with respect to ``params`` computed with
    ``create_graph=True``. A gradient with no graph (a parameter the loss does not use, or uses
    only linearly) contributes nothing to H v.
    """
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    wrt = [i for i, p in enumerate(params) if p.requires_grad]
    out: List[Optional[torch.Tensor]] = [None] * len(params)
    if not live or not wrt:
        return out
    outputs, grad_outputs = [grads[i] for i in live], [tangents[i] for i in live]
    inputs = [params[i] for i in wrt]
    if tangents[0].shape[0] == 1:  # no vmap for a single vector
        hv = torch.autograd.grad(outputs, inputs, grad_outputs=[t[0] for t in grad_outputs],
                                 retain_graph=True, allow_unused=True)
        for i, h in zip(wrt, hv):
            out[i] = None if h is None else h.unsqueeze(0)
        return out
    try:
        hv = torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, retain_graph=True,
                                 is_grads_batched=True, allow_unused=True)
    except RuntimeError as err:  # an op without a batching rule: one HVP at a time
        warnings.warn(f"hsc: batched HVP failed ({err}); falling back to one HVP per probe")
        B = tangents[0].shape[0]
        rows = [torch.autograd.grad(outputs, inputs, grad_outputs=[o[r] for o in grad_outputs],
                                    retain_graph=True, allow_unused=True) for r in range(B)]
        hv = [None if all(row[k] is None for row in rows) else
              torch.stack([row[k] if row[k] is not None else torch.zeros_like(inputs[k]) for row in rows])
              for k in range(len(inputs))]
    for i, h in zip(wrt, hv):
        out[i] = h
    return out


def batched_hvp(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                vectors: torch.Tensor) -> torch.Tensor:
    """H v for each row v of ``vectors`` ([B, n], the parameters flattened and concatenated);
    returns ``[B, n]`` (see :func:`hvp_rows`)."""
    B = vectors.shape[0]
    tangents = [v.reshape(B, *p.shape) for v, p in zip(vectors.split([p.numel() for p in params], 1), params)]
    hv = hvp_rows(grads, params, tangents)
    return torch.cat([(h if h is not None else t.new_zeros(t.shape)).reshape(B, -1)
                      for h, t in zip(hv, tangents)], 1)


def _with_padding_slot(rows: torch.Tensor) -> torch.Tensor:
    """Appends a zero column: the layout's padding slots index column n."""
    return torch.cat([rows, rows.new_zeros(rows.shape[0], 1)], dim=1)


def exact_blocks(layout: BlockLayout, grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                 *, chunk_size: Optional[int] = None) -> torch.Tensor:
    """The diagonal blocks of the Hessian, ``[N, b, b]``, from n HVPs with unit vectors (one per
    parameter entry), ``chunk_size`` at a time. Padding rows/columns are the identity."""
    N, b, n = layout.num_blocks, layout.block_size, layout.numel
    dtype, device = grads[0].dtype, grads[0].device
    blocks = torch.zeros(N, b, b, dtype=dtype, device=device)
    slots = layout.mask.nonzero()  # (block k, column j) of every real entry
    # exact is for small models, where batching many unit vectors pays on every device
    chunk = chunk_size or batched_chunk_size(n)
    for start in range(0, slots.shape[0], chunk):
        k, j = slots[start:start + chunk].unbind(1)
        C = k.shape[0]
        unit = torch.zeros(C, n, dtype=dtype, device=device)
        unit[torch.arange(C, device=device), layout.index[k, j]] = 1
        hv = _with_padding_slot(batched_hvp(grads, params, unit))
        # Column j of block k = the rows of H e_(k, j) that belong to block k.
        blocks[k, :, j] = torch.gather(hv, 1, layout.index[k])
    return layout.identity_padding(blocks)


def draw_signs(generator: torch.Generator, samples: int, num_blocks: int, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """``[samples, N]`` random signs +-1 for sign-coded probing, from ``generator`` (on the CPU,
    so that every rank and device draws the same signs from the same seed)."""
    signs = torch.randint(0, 2, (samples, num_blocks), generator=generator) * 2 - 1
    return signs.to(dtype=dtype, device=device)


def probe_hvps(layout: BlockLayout, grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
               signs: torch.Tensor, *, chunk_size: Optional[int] = None,
               colours: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sign-coded block probing: for each draw s of signs (``signs[s]``, one +-1 per block, see
    :func:`draw_signs`) and each j < b, the HVP of the probe whose block m is s_m e_j. Returns
    ``[samples, b, N, b]`` (draw, probe j, block, row), ready for ``ops.accumulate_probes``.

    ``colours`` (``[N]`` ints 0..C-1, e.g. ``BlockLayout.block_colours``): the coloured
    estimator. Each colour c has probes of its own, s_m e_j on the blocks m of colour c only, and a
    block's rows come from its colour's HVPs: blocks of one colour alias into each other's estimate,
    blocks of different colours never do. b C HVPs a draw instead of b.

    Probes are built as blocks and scattered to the parameters' shapes, and the HVPs gathered
    back into blocks, through the layout (views and one concatenation for plain layouts)."""
    N, b, n = layout.num_blocks, layout.block_size, layout.numel
    samples = signs.shape[0]
    dtype, device = grads[0].dtype, grads[0].device
    hvps = torch.empty(samples, b, N, b, dtype=dtype, device=device)
    chunk = min(b, chunk_size or default_chunk_size(n, device))
    groups = [None] if colours is None else [colours == c for c in range(int(colours.max()) + 1 if N else 0)]
    for s in range(samples):
        for members in groups:
            sign = signs[s] if members is None else torch.where(members, signs[s], 0)
            for j0 in range(0, b, chunk):
                B = min(b, j0 + chunk) - j0
                probe = torch.zeros(B, N, b, dtype=dtype, device=device)
                rows = torch.arange(B, device=device)
                probe[rows, :, j0 + rows] = sign  # probe r: sign s_m at slot j0 + r of every block m
                tangents = layout.scatter_rows(probe)
                hv = hvp_rows(grads, params, tangents)
                rows_of_blocks = layout.gather_rows(
                    [h if h is not None else t.new_zeros(t.shape) for h, t in zip(hv, tangents)])
                if members is None:
                    hvps[s, j0:j0 + B] = rows_of_blocks
                else:
                    hvps[s, j0:j0 + B, members] = rows_of_blocks[:, members]
    return hvps


def gauss_newton_blocks(layout: BlockLayout, outputs: torch.Tensor, loss: torch.Tensor,
                        params: Sequence[torch.Tensor], *, chunk_size: Optional[int] = None,
                        sketches: Optional[int] = None, generator: Optional[torch.Generator] = None) -> tuple:
    """The diagonal blocks of the generalised Gauss-Newton matrix G = J^T (d^2 loss / d outputs^2) J,
    ``[N, b, b]``, and the number of Jacobian-transpose products taken.

    ``outputs`` (``[n]`` or ``[n, ...]``: n rows, each depending on the params) and ``loss`` (a
    scalar computed from ``outputs`` alone, a sum of per-row terms, e.g. a mean of per-sample
    losses). Per row i the k x k Hessian of the loss in that row's outputs is H_i = V_i diag(lam_i)
    V_i^T (eigenvalues of either sign: a non-convex loss gives an indefinite G), and

        G_kk = sum_i sum_r lam_ir (J_i^T v_ir)_k (J_i^T v_ir)_k^T

    for every block k at once: n k Jacobian-transpose products (one backward each, ``chunk_size``
    at a time) and no aliasing between blocks, unlike sign-coded probing. G equals the Hessian
    where the outputs are linear in the params; for a network with piecewise-linear activations
    that holds within one layer's weights, so there G's blocks are the Hessian's.

    ``sketches`` (S): for outputs with too many rows for one product each (an image, the residuals
    of a perceptual loss), S random combinations of the products per sign of lam instead, each one
    backward: z_s = sum_ir eps_sir sqrt|lam_ir| v_ir with eps Rademacher signs from ``generator``,
    and G_kk ~= sum_s (J^T z_s)_k (J^T z_s)_k^T / S over the positive products minus the same over
    the negative ones. Unbiased, PSD for a convex loss, and, unlike sign-coded HVP probing, free of
    aliasing: the noise of a block's estimate comes from that block's own Jacobian only."""
    N, b, n = layout.num_blocks, layout.block_size, layout.numel
    rows = outputs.reshape(len(outputs), -1)
    count, k = rows.shape
    dtype, device = params[0].dtype, params[0].device
    blocks = torch.zeros(N, b, b, dtype=dtype, device=device)
    first, = torch.autograd.grad(loss, outputs, create_graph=True)
    first = first.reshape(count, k)
    if count * k == 0 or not first.requires_grad:  # no outputs, or a loss linear in them: G = 0
        return layout.identity_padding(blocks), 0
    hess = torch.stack([torch.autograd.grad(first[:, c].sum(), outputs, retain_graph=True)[0].reshape(count, k)
                        for c in range(k)], 1).detach()
    if k == 1:  # one output a row (residuals, logits): the Hessian is its own eigenvalue
        lam, vectors = hess.reshape(count, 1).double(), torch.ones_like(hess, dtype=torch.float64)
    else:
        lam, vectors = torch.linalg.eigh(((hess + hess.mT) / 2).double())
    lam, vectors = lam.to(dtype), vectors.to(dtype)
    # product (i, r): grad_outputs with row i = v_ir, zeros elsewhere; weight lam_ir
    weights = lam.reshape(-1)
    # products whose weight is within a k x k eigensolver's rounding of zero add nothing (cross
    # entropy's Hessian in the logits is singular in every row, for instance)
    live = weights.abs() > k * torch.finfo(dtype).eps * weights.abs().max()
    if sketches is not None:
        return _sketched_blocks(layout, rows, params, lam, vectors, live.reshape(count, k), sketches,
                                generator, chunk_size)
    directions = torch.zeros(count * k, count, k, dtype=rows.dtype, device=rows.device)
    index = torch.arange(count * k, device=rows.device)
    directions[index, index // k] = vectors.transpose(1, 2).reshape(count * k, k).to(rows.dtype)
    directions, weights = directions[live], weights[live]
    chunk = chunk_size or default_chunk_size(n, device, first_order=True)
    for start in range(0, len(weights), chunk):
        found = _jacobian_transpose_in_blocks(layout, rows, params, directions[start:start + chunk])
        blocks += torch.einsum("r,rki,rkj->kij", weights[start:start + chunk], found, found)
    return layout.identity_padding(blocks), int(live.sum())


def _jacobian_transpose_in_blocks(layout: BlockLayout, rows: torch.Tensor, params: Sequence[torch.Tensor],
                                  directions: torch.Tensor) -> torch.Tensor:
    """J^T e for each ``directions[r]`` (shaped like ``rows``), gathered into ``[R, N, b]`` blocks."""
    if len(directions) == 1:
        found = torch.autograd.grad(rows, params, grad_outputs=directions[0], retain_graph=True, allow_unused=True)
        found = [None if f is None else f.unsqueeze(0) for f in found]
    else:
        found = torch.autograd.grad(rows, params, grad_outputs=directions, retain_graph=True,
                                    is_grads_batched=True, allow_unused=True)
    return layout.gather_rows([f if f is not None else p.new_zeros(len(directions), *p.shape)
                               for f, p in zip(found, params)])


def _sketched_blocks(layout: BlockLayout, rows: torch.Tensor, params: Sequence[torch.Tensor], lam: torch.Tensor,
                     vectors: torch.Tensor, live: torch.Tensor, sketches: int,
                     generator: Optional[torch.Generator], chunk_size: Optional[int]) -> tuple:
    """:func:`gauss_newton_blocks` from ``sketches`` random combinations of the products per sign
    of lam (``lam``, ``vectors``: each row's output Hessian, ``[count, k]``, ``[count, k, k]``)."""
    N, b, n = layout.num_blocks, layout.block_size, layout.numel
    count, k = lam.shape
    blocks = torch.zeros(N, b, b, dtype=params[0].dtype, device=params[0].device)
    chunk = chunk_size or default_chunk_size(n, params[0].device, first_order=True)
    products = 0
    for sign in (1.0, -1.0):
        weight = torch.where(live & (lam * sign > 0), lam.abs().sqrt(), torch.zeros_like(lam))
        if not bool((weight > 0).any()):
            continue
        for start in range(0, sketches, chunk):
            S = min(sketches, start + chunk) - start
            eps = (torch.randint(0, 2, (S, count, k), generator=generator) * 2 - 1).to(lam)
            # z_s, row i = V_i (eps_si * sqrt|lam_i|), the products of the other sign left out
            z = torch.einsum("icr,sir->sic", vectors, eps * weight).to(rows.dtype)
            found = _jacobian_transpose_in_blocks(layout, rows, params, z)
            blocks += (sign / sketches) * torch.einsum("ski,skj->kij", found, found)
            products += S
    return layout.identity_padding(blocks), products
