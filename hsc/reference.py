"""The float64 pure-torch definition of every hsc op (docs/contract.md §2-3). Tests compare the compiled ops
to these functions; they favour clarity over speed.

Computation is in float64 whatever the input dtype (``dtype=`` selects another, for benchmarks
of a pure-torch path); only the floor of tau (the smallest normal number) follows the dtype the
compiled op computes in, as docs/contract.md §2 defines it.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from .ops import EIGH_MODES, Correction, Eigh, pack, unpack

Damping = Union[float, torch.Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a compiled op computes in for an input dtype (float16/bfloat16 -> float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def symmetrise(H: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """S = (H + H^T)/2, halved before the sum as the compiled ops do."""
    H = H.to(dtype)
    return 0.5 * H + 0.5 * H.mT


def tau(S: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """tau_k = 1e-6 max_ij |S_ij|, or the smallest normal number of `dtype` where that is 0."""
    t = 1e-6 * S.abs().amax(dim=(-1, -2)) if S.numel() else S.new_zeros(S.shape[0])
    return torch.where(t == 0, torch.finfo(dtype).tiny, t)


def _damping(damping: Damping, N: int, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(damping, torch.Tensor):
        return damping.to(dtype).reshape(N).clone()
    return torch.full((N,), float(damping), dtype=dtype)


def _eye(N: int, b: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.eye(b, dtype=dtype).expand(N, b, b).clone()


def _factorise(H: torch.Tensor, damping: Damping, scale: float, mode: str, max_tries: int,
               dtype: torch.dtype):
    """Shared by correct and precondition: returns (S_or_A, chol, damping, status, ok)."""
    if mode not in ("cholesky", "singular_safe"):
        raise ValueError(f"mode must be 'cholesky' or 'singular_safe' here, got {mode!r}")
    N, b = H.shape[0], H.shape[1]
    finite = torch.isfinite(H).flatten(1).all(dim=1) if N else torch.zeros(0, dtype=torch.bool)
    S = torch.where(finite[:, None, None], symmetrise(H, dtype), _eye(N, b, dtype))
    d0 = _damping(damping, N, dtype)
    status = torch.full((N,), 3, dtype=torch.int32)
    status[~finite] = 2
    used = d0.clone()
    eye = torch.eye(b, dtype=dtype)
    mu2 = float(scale) ** 2

    if mode == "cholesky":
        # delta_k: the first damping of the sequence for which both factorisations succeed, A's
        # with every pivot above b eps max_j A_jj (A nonsingular to the op's working precision)
        # and M's with every pivot above mu (its eigenvalues are >= 2 mu); csrc/block_rules.h.
        t = tau(S, compute_dtype(H.dtype))
        eps = torch.finfo(compute_dtype(H.dtype)).eps
        diagonal_max = S.diagonal(dim1=-2, dim2=-1).amax(-1) if b else S.new_zeros(N)
        LM = _eye(N, b, dtype)
        todo = finite.clone()
        d = d0.clone()
        for attempt in range(max_tries):
            if not bool(todo.any()):
                break
            idx = todo.nonzero().squeeze(1)
            used[idx] = d[idx]
            A = S[idx] + d[idx, None, None] * eye
            L, info = torch.linalg.cholesky_ex(A)
            floor = b * eps * (diagonal_max[idx] + d[idx])
            factorised = (info == 0) & _pivots_above(L, floor)
            M = A[factorised] + mu2 * torch.cholesky_inverse(L[factorised])
            Lt, info = torch.linalg.cholesky_ex(M)
            ok = (info == 0) & _pivots_above(Lt, torch.full((M.shape[0],), float(scale), dtype=dtype))
            good = idx[factorised][ok]
            LM[good] = Lt[ok]
            status[good] = 0 if attempt == 0 else 1
            todo[good] = False
            d = torch.maximum(2 * d, t)
            todo &= torch.isfinite(d)
        ok = (status == 0) | (status == 1)
        return S + used[:, None, None] * eye, LM, used, status, ok

    A = S + torch.where(finite, d0, 0.0)[:, None, None] * eye
    C = A @ A + mu2 * eye
    LC, info = torch.linalg.cholesky_ex(C)
    # C's eigenvalues are >= mu^2: a pivot below mu^2 / 2 means rounding has destroyed C.
    pivots_ok = _pivots_above(LC, torch.full((N,), 0.5 * mu2, dtype=dtype))
    status[finite & (info == 0) & pivots_ok] = 0
    ok = status == 0
    return A, LC, used, status, ok


def spectral_multiplier(mode: str, lam: torch.Tensor, scale: float) -> torch.Tensor:
    """f(lambda) of a spectral mode (docs/contract.md §2): lambda / (lambda^2 + mu^2) (spectral),
    |lambda| / (lambda^2 + mu^2) (saddle_free), 1 / sqrt(lambda^2 + mu^2) (saddle_free_root)."""
    h2 = lam ** 2 + float(scale) ** 2
    if mode == "spectral":
        return lam / h2
    if mode == "saddle_free":
        return lam.abs() / h2
    if mode == "saddle_free_root":
        return h2.rsqrt()
    raise ValueError(f"mode must be one of {EIGH_MODES}, got {mode!r}")


def eigh(H: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> Eigh:
    """Reference of hsc.ops.eigh: torch.linalg.eigh of S = (H + H^T)/2 (ascending); status 2 and
    NaN eigenpairs for blocks with a NaN or Inf, 0 for the others."""
    N, b = H.shape[0], H.shape[1]
    finite = torch.isfinite(H).flatten(1).all(dim=1) if N else torch.zeros(0, dtype=torch.bool)
    S = torch.where(finite[:, None, None], symmetrise(H, dtype), _eye(N, b, dtype))
    lam, V = torch.linalg.eigh(S) if N else (S.new_zeros(0, b), S.new_zeros(0, b, b))
    lam = torch.where(finite[:, None], lam, float("nan"))
    V = torch.where(finite[:, None, None], V, float("nan"))
    return Eigh(lam, V, torch.where(finite, 0, 2).to(torch.int32))


def corrected_inverse_from_eigh(eigen: Eigh, *, scale: float = 1.0, mode: str = "saddle_free_root",
                                dtype: torch.dtype = torch.float64, power: float = 1.0) -> torch.Tensor:
    """M^{-power} = V f(Lambda)^power V^T per block as ``[N, b, b]`` from an eigen-decomposition, the
    fallback (1 + mu^2)^{-power} I where its status is 2 or 3: hsc.ops.correct_from_eigh before
    packing (power 1 or 0.5)."""
    lam, V = eigen.eigenvalues.to(dtype), eigen.eigenvectors.to(dtype)
    N, b = V.shape[0], V.shape[-1]
    ok = eigen.status <= 1
    Minv = (V * spectral_multiplier(mode, lam, scale)[..., None, :] ** power) @ V.mT
    return torch.where(ok[:, None, None], Minv, _fallback(N, b, scale, dtype) ** power)


def _pivots_above(L: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """``[N]``: whether every pivot (the squared diagonal of the Cholesky factor) of each block is
    finite and above its floor, as the compiled ops test them."""
    pivots = L.diagonal(dim1=-2, dim2=-1) ** 2
    return (torch.isfinite(pivots) & (pivots > floor[:, None])).all(-1)


def _fallback(N: int, b: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    return _eye(N, b, dtype) / (1.0 + float(scale) ** 2)


def corrected_inverse(H: torch.Tensor, *, damping: Damping = 1e-4, scale: float = 1.0,
                      mode: str = "cholesky", max_tries: int = 32, dtype: torch.dtype = torch.float64):
    """M^{-1} of every block as ``[N, b, b]`` (the fallback where status >= 2), the damping used
    and the status: hsc.ops.correct before its factor is packed."""
    N, b = H.shape[0], H.shape[1]
    if mode in EIGH_MODES:  # no damping: the eigenpairs of S
        eigen = eigh(H, dtype=dtype)
        Minv = corrected_inverse_from_eigh(eigen, scale=scale, mode=mode, dtype=dtype)
        return Minv, torch.zeros(N, dtype=dtype), eigen.status
    A, chol, used, status, ok = _factorise(H, damping, scale, mode, max_tries, dtype)
    if mode == "cholesky":
        Minv = torch.cholesky_inverse(chol)
    else:
        # M^{-1} = A (A^2 + mu^2 I)^{-1}: in A's eigenbasis, lambda / (lambda^2 + mu^2).
        lam, Q = torch.linalg.eigh(A)
        Minv = (Q * (lam / (lam ** 2 + float(scale) ** 2))[..., None, :]) @ Q.mT
    return torch.where(ok[:, None, None], Minv, _fallback(N, b, scale, dtype)), used, status


def correct(H: torch.Tensor, *, damping: Damping = 1e-4, scale: float = 1.0, mode: str = "cholesky",
            max_tries: int = 32, dtype: torch.dtype = torch.float64) -> Correction:
    """Reference of hsc.ops.correct: factor = M^{-1} per block, laid out as hsc.ops.Correction's."""
    Minv, used, status = corrected_inverse(H, damping=damping, scale=scale, mode=mode,
                                           max_tries=max_tries, dtype=dtype)
    return Correction(pack(Minv), used, status)


def solve(correction: Correction, G: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Reference of hsc.ops.solve: P = M^{-1} G per block."""
    G = G.to(dtype)
    f = unpack(correction.factor.to(dtype), G.shape[0])
    return (f @ G.unsqueeze(-1)).squeeze(-1) if G.dim() == 2 else f @ G


def precondition(H: torch.Tensor, G: torch.Tensor, *, damping: Damping = 1e-4, scale: float = 1.0,
                 mode: str = "cholesky", max_tries: int = 32, dtype: torch.dtype = torch.float64):
    """Reference of hsc.ops.precondition: (P, damping, status), P = M^{-1} G per block."""
    Gd = G.to(dtype)
    Gm = Gd.unsqueeze(-1) if G.dim() == 2 else Gd
    if mode in EIGH_MODES:
        Minv, used, status = corrected_inverse(H, scale=scale, mode=mode, dtype=dtype)
        P = Minv @ Gm
        return (P.squeeze(-1) if G.dim() == 2 else P), used, status
    A, chol, used, status, ok = _factorise(H, damping, scale, mode, max_tries, dtype)
    if mode == "cholesky":
        P = torch.cholesky_solve(Gm, chol)
    else:
        lam, Q = torch.linalg.eigh(A)
        P = Q @ ((lam / (lam ** 2 + float(scale) ** 2))[..., :, None] * (Q.mT @ Gm))
    P = torch.where(ok[:, None, None], P, Gm / (1.0 + float(scale) ** 2))
    return (P.squeeze(-1) if G.dim() == 2 else P), used, status


def correct_from_eigh(eigen: Eigh, *, scale: float = 1.0, mode: str = "saddle_free_root",
                      dtype: torch.dtype = torch.float64, power: float = 1.0) -> Correction:
    """Reference of hsc.ops.correct_from_eigh: the factor of a spectral mode from an
    eigen-decomposition, damping 0, the decomposition's status."""
    Minv = corrected_inverse_from_eigh(eigen, scale=scale, mode=mode, dtype=dtype, power=power)
    return Correction(pack(Minv), torch.zeros(eigen.status.shape[0], dtype=dtype), eigen.status)


def graft(P: torch.Tensor, G: torch.Tensor, ends: torch.Tensor, *,
          dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference of hsc.ops.graft_: (P with the rows of each segment rescaled by
    ||G_s|| / max(||P_s||, 1e-30), in ``dtype``; [S] bool, whether each rescaled segment is finite
    in P's dtype). Norms from sums of squares in float64. Segments by the CUDA kernel's rule
    (csrc/graft_rules.h): ends clipped to [0, N], each segment from the largest earlier end, so
    valid ends give rows ends[s-1]:ends[s] and invalid ones what the CUDA op does (the CPU op
    refuses them)."""
    N = P.shape[0]
    out, finite, start = P.to(dtype).clone(), [], 0
    for end in ends.tolist():
        end = max(start, min(max(end, 0), N))
        rows = slice(start, end)
        raw = G[rows].double().square().sum().sqrt()
        new = P[rows].double().square().sum().sqrt()
        out[rows] = (P[rows].double() * (raw / new.clamp_min(1e-30))).to(dtype)
        finite.append(bool(torch.isfinite(out[rows].to(P.dtype)).all()))
        start = end
    return out, torch.tensor(finite, dtype=torch.bool)
