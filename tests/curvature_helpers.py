"""Independent pure-torch references shared by test_curvature.py, test_preconditioner.py and
test_optim.py (the curvature / preconditioner / optimizer layer of hsc).

Nothing here calls the code under test except ``BlockLayout``'s ``index`` and ``mask`` (tested on
their own in test_layout.py), which say which parameter entry sits in which block slot.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence

import torch
from torch.func import functional_call

from hsc.layout import BlockLayout

DT = torch.float64
# The Cholesky route with an absolute mu (the library defaults to the spectral root with a relative
# mu): the options of tests that compare with reference.correct's damping search.
CHOLESKY = {"mode": "cholesky", "scale_rule": "absolute"}


# ---- small float64 models --------------------------------------------------------------------

def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    """3 -> 5 -> 2 tanh MLP (32 parameters in 4 tensors of 15, 5, 10, 2 entries)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(DT)


def tiny_convnet(seed: int = 0) -> torch.nn.Module:
    """Conv(1->2, 3x3) -> tanh -> Linear(2*4*4 -> 1) on 6x6 images (18 + 2 + 32 + 1 = 53 params)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(2 * 4 * 4, 1)).to(DT)


def regression_data(model: torch.nn.Module, seed: int = 1):
    """A fixed batch (inputs, targets) matching ``model``'s input/output shapes."""
    g = torch.Generator().manual_seed(seed)
    first = next(iter(model.parameters()))
    if first.dim() == 4:  # conv net
        x = torch.randn(8, 1, 6, 6, generator=g, dtype=DT)
    else:
        x = torch.randn(16, first.shape[1], generator=g, dtype=DT)
    with torch.no_grad():
        y = torch.randn(model(x).shape, generator=g, dtype=DT)
    return x, y


def mse_loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The closure ``() -> mean squared error of model(x) against y``."""
    return lambda: ((model(x) - y) ** 2).mean()


def flat_loss(model: torch.nn.Module, loss_of_output: Callable[[Callable], torch.Tensor]):
    """``theta -> loss`` with the model's parameters replaced by the flat vector ``theta``.

    ``loss_of_output(forward)`` computes the loss given a forward function, so a closure may call
    the network several times (a GAN discriminator)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def f(theta: torch.Tensor) -> torch.Tensor:
        pieces = theta.split([math.prod(s) for s in shapes])
        params: Dict[str, torch.Tensor] = {n: t.view(s) for n, t, s in zip(names, pieces, shapes)}
        return loss_of_output(lambda inp: functional_call(model, params, (inp,)))

    return f


def flat_params(params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def full_hessian(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """The dense Hessian of ``f`` at ``theta`` by torch.autograd.functional.hessian."""
    return torch.autograd.functional.hessian(f, theta.detach().clone())


def diagonal_blocks(H: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """The ``[N, b, b]`` diagonal blocks of the dense ``H`` in ``layout``'s cut, with the identity's
    rows and columns at padding slots (docs/contract.md §1). Built by explicit loops."""
    N, b = layout.num_blocks, layout.block_size
    out = torch.zeros(N, b, b, dtype=H.dtype)
    index, mask = layout.index.tolist(), layout.mask.tolist()
    for k in range(N):
        for i in range(b):
            for j in range(b):
                if mask[k][i] and mask[k][j]:
                    out[k, i, j] = H[index[k][i], index[k][j]]
                else:
                    out[k, i, j] = 1.0 if i == j else 0.0
    return out


def off_diagonal_energy(H: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Per block k: sum over m != k of ||(H_km + H_km^T)/2||_F^2 (H_km uses the real slots only).

    docs/contract.md §4: the symmetrised probe estimate of block k from one sign draw is
    H_kk + sum_{m != k} eps_m Sym(H_km) with independent Rademacher eps_m, so this is the expected
    squared Frobenius error of one draw, and S averaged draws have 1/S of it."""
    N, b = layout.num_blocks, layout.block_size
    index, mask = layout.index, layout.mask
    out = torch.zeros(N, dtype=H.dtype)
    for k in range(N):
        rows = index[k][mask[k]]
        for m in range(N):
            if m == k:
                continue
            cols = index[m][mask[m]]
            # Sym(H_km) on the b x b slots (padding is a suffix in the plain cut): entry (i, j) is
            # (H[r_i, c_j] + H[r_j, c_i]) / 2, counted only where slots i and j of block k are real
            # (padding rows/columns of the estimate are the identity, exactly).
            Hkm = torch.zeros(b, b, dtype=H.dtype)
            Hkm[: rows.numel(), : cols.numel()] = H[rows][:, cols]
            real = mask[k][:, None] & mask[k][None, :]
            out[k] += torch.where(real, (Hkm + Hkm.T) / 2, 0.0).pow(2).sum()
    return out


# ---- reference of hsc::accumulate_probes ------------------------------------------------------

def einsum_accumulate(state: torch.Tensor, hvps: torch.Tensor, signs: torch.Tensor, mask: torch.Tensor,
                      ema: float, first: bool):
    """Pure-torch docs/contract.md §4 assembly: returns (new_state, accepted).

    estimate[k, i, j] = mean_s signs[s, k] * hvps[s, j, k, i], symmetrised; padding rows/cols set to
    the identity (exactly, whatever the state held there); folded by EMA (or written, on ``first``). Blocks whose estimate is non-finite at a
    real (mask) position keep ``state`` unless ``first``."""
    S, b, N, _ = hvps.shape
    raw = torch.einsum("sk,sjki->kij", signs.to(hvps.dtype), hvps) / S
    est = (raw + raw.transpose(1, 2)) / 2
    real = mask[:, :, None] & mask[:, None, :]
    accepted = torch.where(real, est, torch.zeros_like(est)).isfinite().flatten(1).all(1)
    eye = torch.eye(b, dtype=hvps.dtype).expand(N, b, b)
    est = torch.where(real, est, eye)
    new = est if first else torch.where(real, ema * state + (1 - ema) * est, eye)  # padding: exactly I
    if not first:
        new = torch.where(accepted[:, None, None], new, state)
    return new, accepted


# ---- block-separable losses ---------------------------------------------------------------------

def block_separable_loss(w: torch.Tensor, b: int, seed: int = 0) -> Callable[[], torch.Tensor]:
    """A non-quadratic loss of the flat parameter ``w`` that is a sum of independent terms, one per
    consecutive b-entry chunk, so its Hessian is exactly block diagonal in the plain cut."""
    g = torch.Generator().manual_seed(seed)
    n = w.numel()
    chunks = -(-n // b)
    A = torch.randn(chunks, b, b, generator=g, dtype=w.dtype)
    c = torch.randn(chunks, b, generator=g, dtype=w.dtype)

    def loss() -> torch.Tensor:
        padded = torch.cat([w, w.new_zeros(chunks * b - n)]).view(chunks, b)
        z = torch.einsum("kij,kj->ki", A, padded) + c
        return (torch.logsumexp(z, dim=1) + 0.25 * (padded ** 4).sum(1) + (z ** 2).sum(1)).sum()

    return loss


def ill_conditioned_block_quadratic(num_blocks: int = 4, b: int = 8, cond: float = 1e4, seed: int = 0):
    """A block-diagonal SPD H (n = num_blocks * b) with eigenvalues log-spaced over [1, cond], shuffled
    across blocks and rotated by a random orthogonal matrix inside each block; a minimiser x*; a
    start x0. Returns (H, x_star, x0)."""
    g = torch.Generator().manual_seed(seed)
    n = num_blocks * b
    eig = torch.logspace(0, math.log10(cond), n, dtype=DT)[torch.randperm(n, generator=g)]
    blocks: List[torch.Tensor] = []
    for k in range(num_blocks):
        Q, _ = torch.linalg.qr(torch.randn(b, b, generator=g, dtype=DT))
        blocks.append(Q @ torch.diag(eig[k * b:(k + 1) * b]) @ Q.T)
    H = torch.block_diag(*blocks)
    x_star = torch.randn(n, generator=g, dtype=DT)
    x0 = x_star + torch.randn(n, generator=g, dtype=DT)
    return H, x_star, x0
