"""Typed wrappers of the compiled ops, and their fake kernels for torch.compile.

The maths is docs/contract.md §2-4; `hsc.reference` is its float64 definition. The reference of
every op, with its errors and costs, is docs/ops.md.

Route to M^{-1} g, mode ``cholesky``: L L^T = A, A^{-1} = L^{-T} L^{-1}, M = A + mu^2 A^{-1},
L_M L_M^T = M, then two triangular solves. The damping delta_k is the first value of the sequence
delta, max(2 delta, tau), ... for which both factorisations succeed and every pivot of M is above
mu (M's eigenvalues are >= 2 mu: a smaller pivot means A is too ill-conditioned for the dtype at
that damping, so the damping is raised instead of returning a step destroyed by rounding).
Mode ``singular_safe``: L_C L_C^T = C = A^2 + mu^2 I (pivots above mu^2 / 2, else status 3),
then p = A C^{-1} g. float16/bfloat16 are computed in float32.

Error bound (measured in tests/test_ops.py over ~1e5 blocks): ||P - P_ref|| <= 8 sqrt(b) eps cond(A)
||P_ref|| in mode cholesky, and <= 8 sqrt(b) eps cond(A^2 + mu^2 I) ||G|| / (2 mu) in singular_safe.
"""
from __future__ import annotations

import enum
from typing import NamedTuple, Optional, Union

import torch

from . import _C  # loads the library that registers torch.ops.hsc

# The modes, read from the one table of them (csrc/block_rules.h: kModes, exported as _C.modes,
# rows (name, spectral, nonnegative)): "cholesky", "singular_safe", "spectral", "saddle_free",
# "saddle_free_root".
MODES = tuple(name for name, _, _ in _C.modes)
# The modes that take the eigenpairs of S (docs/contract.md §2): no damping, a multiplier f(lambda).
EIGH_MODES = tuple(name for name, spectral, _ in _C.modes if spectral)
# The spectral modes whose f(lambda) >= 0: correct_from_eigh_ takes power 0.5 (M^-1/2) in them.
NONNEGATIVE_MODES = tuple(name for name, _, nonnegative in _C.modes if nonnegative)
# The eigensolver's default sweep limit (spectral modes and eigh): cyclic Jacobi converges
# quadratically, in 4 to 10 sweeps on the blocks measured (docs/ops.md).
MAX_SWEEPS = 30
Damping = Union[float, torch.Tensor]


TILE = _C.factor_tile  # blocks per tile of a factor (csrc/factor_layout.h: kTile), 16


class Status(enum.IntEnum):
    """Per-block status of :func:`correct`, :func:`correct_` and :func:`precondition`
    (docs/contract.md §3)."""

    FACTORISED = 0       # factorised with the requested damping
    DAMPING_RAISED = 1   # factorised after raising the damping (mode cholesky)
    NON_FINITE = 2       # H_k has a NaN or Inf (on CUDA also: a bad damping entry): fallback
    FAILED = 3           # not factorised within max_tries (or pivots too small), or the
                         # eigensolver did not converge within max_sweeps (spectral modes): fallback


class Correction(NamedTuple):
    """The result of :func:`correct`.

    factor:  M^{-1} itself per block, packed and tiled: ``[ceil(N / 16), b (b + 1) / 2, 16]``.
             M^{-1} is symmetric, so its lower triangle (entry (i, j), j <= i, at
             i (i + 1) / 2 + j) says everything; blocks are innermost in tiles of 16, so that the
             factor :func:`solve` reads every step lies as SIMD lanes and GPU warps load it. Entry
             e of block k is ``factor[k // 16, e, k % 16]``; lanes past the last block are 0.
             :func:`unpack` gives ``[N, b, b]``, :func:`pack` the reverse. Kept in float32 for
             float16/bfloat16 inputs. Blocks with status 2 or 3 hold the fallback ``I / (1 + mu^2)``.
    damping: ``[N]``, the damping delta_k each block was factorised with (the input damping for
             status 2; the last value tried for status 3).
    status:  ``[N]`` int32, :class:`Status` (docs/contract.md §3): 0 factorised, 1 damping
             raised, 2 non-finite H, 3 failed.
    """

    factor: torch.Tensor
    damping: torch.Tensor
    status: torch.Tensor


def packed_size(b: int) -> int:
    """Entries of one block's packed factor: b (b + 1) / 2."""
    return b * (b + 1) // 2


def factor_shape(N: int, b: int) -> tuple:
    """The shape of the factor of N blocks of size b (see :class:`Correction`)."""
    return (-(-N // TILE), packed_size(b), TILE)


def pack(M: torch.Tensor) -> torch.Tensor:
    """``[N, b, b]`` symmetric blocks -> a factor laid out as :attr:`Correction.factor` (the lower
    triangles are kept)."""
    N, b = M.shape[0], M.shape[-1]
    rows, cols = torch.tril_indices(b, b, device=M.device)
    tiles, entries, _ = factor_shape(N, b)
    packed = M.new_zeros(tiles * TILE, entries)
    packed[:N] = M[:, rows, cols]
    return packed.view(tiles, TILE, entries).transpose(1, 2).contiguous()


def unpack(factor: torch.Tensor, N: int) -> torch.Tensor:
    """The symmetric ``[N, b, b]`` blocks of the factor of N blocks (:attr:`Correction.factor`)."""
    _check_tensor(factor, "factor")
    entries = factor.shape[1] if factor.dim() == 3 else -1
    b = int(round(((8 * max(entries, 0) + 1) ** 0.5 - 1) / 2))
    if factor.dim() != 3 or b < 1 or tuple(factor.shape) != factor_shape(N, b):
        raise ValueError(f"hsc: factor must have shape [ceil(N / {TILE}), b (b + 1) / 2, {TILE}] for "
                         f"N = {N} blocks, got {tuple(factor.shape)}")
    i = torch.arange(b, device=factor.device)
    hi, lo = torch.maximum(i[:, None], i[None, :]), torch.minimum(i[:, None], i[None, :])
    rows = factor.transpose(1, 2).reshape(-1, entries)[:N]
    return rows[:, hi * (hi + 1) // 2 + lo]  # csrc/factor_layout.h: packed_index(hi, lo)


def _damping_tensor(damping: Damping, H: torch.Tensor) -> torch.Tensor:
    if isinstance(damping, torch.Tensor):
        return damping
    if isinstance(damping, bool) or not isinstance(damping, (int, float)):
        raise TypeError(f"hsc: damping must be a float or a [N] tensor, got {type(damping).__name__}")
    if not 0 <= damping < float("inf"):
        raise ValueError(f"hsc: damping must be a finite float >= 0, got {damping}")
    dtype = H.dtype if H.dtype.is_floating_point else torch.float32
    return torch.full((H.shape[0] if H.dim() >= 1 else 0,), float(damping), dtype=dtype, device=H.device)


def _keep_failed_tensor(keep_failed, H: torch.Tensor) -> Optional[torch.Tensor]:
    if isinstance(keep_failed, torch.Tensor):
        return keep_failed
    if not isinstance(keep_failed, bool):
        raise TypeError(f"hsc: keep_failed must be a bool or a [N] bool tensor, got "
                        f"{type(keep_failed).__name__}")
    if not keep_failed:
        return None
    return torch.ones(H.shape[0] if H.dim() >= 1 else 0, dtype=torch.bool, device=H.device)


def _check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"hsc: {name} must be a torch.Tensor, got {type(x).__name__}")


def correct(
    H: torch.Tensor,
    *,
    damping: Damping = 1e-4,
    scale: float = 1.0,
    mode: str = "cholesky",
    max_tries: int = 32,
    max_sweeps: int = MAX_SWEEPS,
) -> Correction:
    """Factor the corrected preconditioner M = A + mu^2 A^{-1} of every block of ``H``.

    Args:
        H: ``[N, b, b]`` blocks (any real matrices; they are symmetrised).
        damping: delta >= 0, a float or a ``[N]`` tensor (one per block). On the CPU a damping
            tensor's values are checked; on CUDA they are not (that would synchronise with the
            host), and a block whose damping is negative, infinite or NaN gets status 2 and the
            fallback.
        scale: mu > 0.
        mode: ``"cholesky"`` (raise delta until A is positive definite), ``"singular_safe"``
            (M^{-1} = A (A^2 + mu^2 I)^{-1}, defined for any symmetric A), or a spectral mode
            (``"spectral"``, ``"saddle_free"``, ``"saddle_free_root"``: M^{-1} = V f(Lambda) V^T
            from the eigenpairs of S, no damping; docs/contract.md §2).
        max_tries: how many dampings of the sequence to try in mode ``cholesky``.
        max_sweeps: the eigensolver's sweep limit in the spectral modes (status 3 past it).
    Returns:
        A :class:`Correction`; pass it to :func:`solve`.
    """
    _check_tensor(H, "H")
    return Correction(*torch.ops.hsc.correct.default(
        H, _damping_tensor(damping, H), float(scale), mode, int(max_tries), int(max_sweeps)))


def correct_(
    factor: torch.Tensor,
    H: torch.Tensor,
    *,
    damping: Damping = 1e-4,
    scale: float = 1.0,
    mode: str = "cholesky",
    max_tries: int = 32,
    keep_failed: Union[bool, torch.Tensor] = False,
    max_sweeps: int = MAX_SWEEPS,
) -> Correction:
    """:func:`correct` writing the factor into ``factor`` in place.

    A caller that refactorises again and again (the preconditioner's refresh) reuses one buffer
    this way; a fresh ``[N, b, b]`` result would cost a page fault per 4 KiB on the CPU.

    Args:
        factor: shaped as :class:`Correction`'s (:func:`factor_shape`), contiguous, in H's
            compute dtype (float64 for float64 H, else float32), on H's device. Lanes past the
            last block are set to 0.
        keep_failed: which blocks leave their factor as it was when they fail (status 2 or 3)
            instead of receiving the fallback (docs/contract.md §5: a block whose refresh fails
            keeps its previous factor): a bool for every block, or a ``[N]`` bool tensor on H's
            device, one flag per block.
        The other arguments are those of :func:`correct`.
    Returns:
        ``Correction(factor, damping, status)``, with ``factor`` the tensor passed in.
    """
    _check_tensor(factor, "factor")
    _check_tensor(H, "H")
    damping_used, status = torch.ops.hsc.correct_.default(
        factor, H, _damping_tensor(damping, H), float(scale), mode, int(max_tries),
        _keep_failed_tensor(keep_failed, H), int(max_sweeps))
    return Correction(factor, damping_used, status)


def solve(correction: Correction, G: torch.Tensor) -> torch.Tensor:
    """P = M^{-1} G per block from the factor, for G of shape ``[N, b]`` or ``[N, b, r]``; P has
    G's dtype."""
    if not isinstance(correction, Correction):
        raise TypeError(f"hsc: correction must be the Correction returned by hsc.ops.correct, "
                        f"got {type(correction).__name__}")
    _check_tensor(G, "G")
    # The factor's tiles hold up to TILE blocks each: the block count is the correction's.
    N = correction.status.shape[0]
    if G.dim() in (2, 3) and G.shape[0] != N:
        raise ValueError(f"hsc: G must have shape [N, b] or [N, b, r] with N = {N} to match the "
                         f"correction, got {list(G.shape)}")
    return torch.ops.hsc.solve.default(correction.factor, G)


def precondition(
    H: torch.Tensor,
    G: torch.Tensor,
    *,
    damping: Damping = 1e-4,
    scale: float = 1.0,
    mode: str = "cholesky",
    max_tries: int = 32,
    max_sweeps: int = MAX_SWEEPS,
):
    """Fused one-shot path: P = M^{-1} G per block without materialising a factor.

    Same arguments as :func:`correct`, plus ``G`` (``[N, b]`` or ``[N, b, r]``).
    Returns ``(P, damping, status)`` with P in G's dtype.
    """
    _check_tensor(H, "H")
    _check_tensor(G, "G")
    return tuple(torch.ops.hsc.precondition.default(
        H, G, _damping_tensor(damping, H), float(scale), mode, int(max_tries), int(max_sweeps)))


class Eigh(NamedTuple):
    """The result of :func:`eigh`.

    eigenvalues:  ``[N, b]``, ascending per block.
    eigenvectors: ``[N, b, b]``; column j of block k is the eigenvector of ``eigenvalues[k, j]``.
    status:       ``[N]`` int32, :class:`Status`: 0 converged; 2 a NaN or Inf in H (eigenvalues and
                  eigenvectors NaN); 3 not converged within max_sweeps (the last iterate:
                  eigenvectors orthogonal to rounding, eigenvalues the diagonal it reached).
    Both in H's compute dtype (float32 for float16/bfloat16).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    status: torch.Tensor


def eigh(H: torch.Tensor, *, max_sweeps: int = MAX_SWEEPS) -> Eigh:
    """The eigen-decomposition of S = (H + H^T)/2 for every block of ``H`` (``[N, b, b]``, any real
    matrices), by cyclic Jacobi, many blocks at once (docs/ops.md: its accuracy and cost).

    Args:
        H: ``[N, b, b]`` blocks.
        max_sweeps: sweeps of Jacobi before a block is reported as not converged (status 3).
    Returns:
        An :class:`Eigh`.
    """
    _check_tensor(H, "H")
    return Eigh(*torch.ops.hsc.eigh.default(H, int(max_sweeps)))


def correct_from_eigh_(
    factor: torch.Tensor,
    eigen: Eigh,
    *,
    scale: float = 1.0,
    mode: str = "saddle_free_root",
    keep_failed: Union[bool, torch.Tensor] = False,
    power: float = 1.0,
) -> Correction:
    """The factor of a spectral mode from an eigen-decomposition, written into ``factor`` in place:
    M^{-1} = V f(Lambda) V^T per block (docs/contract.md §2), the fallback ``I / (1 + mu^2)`` where
    ``eigen.status`` is 2 or 3. With :func:`eigh` first, mu can be chosen from the eigenvalues
    (the preconditioner's relative scale) before the factor is formed.

    Args:
        factor: shaped as :class:`Correction`'s (:func:`factor_shape`), contiguous, in the
            eigenvalues' dtype, on their device. Lanes past the last block are set to 0.
        eigen: the :class:`Eigh` of the blocks.
        scale: mu > 0.
        mode: a spectral mode (:data:`EIGH_MODES`): ``"spectral"``, ``"saddle_free"`` or
            ``"saddle_free_root"``.
        keep_failed: as in :func:`correct_`.
        power: 1 (the factor is M^{-1}) or 0.5 (M^{-1/2} = V f(Lambda)^{1/2} V^T, fallback
            I / sqrt(1 + mu^2); the modes whose f >= 0, :data:`NONNEGATIVE_MODES`: saddle_free and
            saddle_free_root): two half factors give M^{-1}, and a coupled solve splits its matrix
            symmetrically with them.
    Returns:
        ``Correction(factor, damping, status)``: damping 0 (no damping in the spectral modes),
        status ``eigen.status``.
    """
    _check_tensor(factor, "factor")
    if not isinstance(eigen, Eigh):
        raise TypeError(f"hsc: eigen must be the Eigh returned by hsc.ops.eigh, got {type(eigen).__name__}")
    keep = _keep_failed_tensor(keep_failed, eigen.eigenvalues)
    torch.ops.hsc.correct_from_eigh_.default(factor, eigen.eigenvalues, eigen.eigenvectors, eigen.status,
                                             float(scale), mode, keep, float(power))
    return Correction(factor, eigen.eigenvalues.new_zeros(eigen.status.shape), eigen.status)


def correct_from_eigh(eigen: Eigh, *, scale: float = 1.0, mode: str = "saddle_free_root",
                      power: float = 1.0) -> Correction:
    """:func:`correct_from_eigh_` into a new factor."""
    if not isinstance(eigen, Eigh):
        raise TypeError(f"hsc: eigen must be the Eigh returned by hsc.ops.eigh, got {type(eigen).__name__}")
    N, b = eigen.eigenvectors.shape[0], eigen.eigenvectors.shape[-1]
    factor = eigen.eigenvalues.new_empty(factor_shape(N, b))
    return correct_from_eigh_(factor, eigen, scale=scale, mode=mode, power=power)


def accumulate_probes(
    state: torch.Tensor,
    hvps: torch.Tensor,
    signs: torch.Tensor,
    mask: torch.Tensor,
    *,
    ema: float,
    first: bool,
) -> torch.Tensor:
    """Fold sign-coded probe results into the running block-diagonal estimate, in place
    (docs/contract.md §4).

    Args:
        state: ``[N, b, b]`` running estimate (float32/float64, contiguous), updated in place.
        hvps: ``[S, b, N, b]`` Hessian-vector products of the probes, gathered into blocks:
            ``hvps[s, j, k]`` is block k of H v_j for sign draw s.
        signs: ``[S, N]`` the +-1 sign of each block in each draw.
        mask: ``[N, b]`` bool, False at padding slots (held at identity rows/columns).
        ema: weight of the previous state, in [0, 1).
        first: overwrite ``state`` instead of averaging (the first refresh).
    Returns:
        ``[N]`` bool, False for blocks whose estimate was not finite: their state is left as it
        was. A block whose state is not finite (nothing to keep: the first refresh, or a first
        estimate that was not finite) is overwritten, and ``correct`` reports it as status 2 until
        a finite estimate arrives.
    """
    return torch.ops.hsc.accumulate_probes.default(state, hvps, signs, mask, float(ema), bool(first))


def fold_estimate_(
    state: torch.Tensor,
    estimate: torch.Tensor,
    mask: torch.Tensor,
    *,
    ema: float,
    first: bool,
) -> torch.Tensor:
    """Fold assembled block estimates into the running estimate, in place, by the rules of
    :func:`accumulate_probes` (docs/contract.md §4): the estimate on the first refresh or where the
    state is not finite, else ``ema * state + (1 - ema) * estimate``; a non-finite estimate leaves a
    finite state as it was; padding slots (``mask`` False) are exactly the identity's entries.

    Args:
        state: ``[N, b, b]`` running estimate (float32/float64, contiguous), updated in place.
        estimate: ``[N, b, b]`` new estimates, state's dtype and device.
        mask: ``[N, b]`` bool, False at padding slots.
        ema: weight of the previous state, in [0, 1).
        first: overwrite ``state`` instead of averaging (the first refresh).
    Returns:
        ``[N]`` bool, False for blocks whose estimate was not finite.
    """
    return torch.ops.hsc.fold_estimate_.default(state, estimate, mask, float(ema), bool(first))


def graft_(P: torch.Tensor, G: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Per-segment norm grafting, in place: the rows of each segment of ``P`` (one parameter
    tensor's blocks, say) rescaled to the norm of the same rows of ``G``, so that a preconditioned
    gradient keeps the raw gradient's length per tensor and only its direction changes
    (docs/contract.md §8). Norms are square roots of sums of squares in float64; the divisor is at
    least 1e-30, so an all-zero segment of P stays zero.

    Args:
        P: ``[N, b]`` float32/float64, contiguous (e.g. ``solve``'s output), rescaled in place.
        G: ``[N, b]``, P's dtype and device (the raw gradient blocks).
        ends: ``[S]`` int64 on P's device: segment s is rows ``ends[s-1]:ends[s]`` (``0:ends[0]``
            for the first), non-decreasing, in [0, N]; rows after ``ends[-1]`` are left as they
            are. The CPU op checks this; the CUDA op instead clips each end to [0, N] and starts
            each segment at the largest earlier end (no wait for the device), so bad ends can
            neither touch memory outside P nor make segments overlap.
    Returns:
        ``[S]`` bool: whether every entry of segment s of P is finite after the rescaling (False
        where P or G held a NaN or Inf there, or where a float64 sum of squares overflows:
        entries above about 1e154).
    """
    return torch.ops.hsc.graft_.default(P, G, ends)


# ---- fake kernels: shapes and dtypes only, for torch.compile and meta tensors ----------------

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _same_device(**tensors: torch.Tensor) -> None:
    """The dispatcher sends a call to the fake kernel when any argument is a meta tensor, so the
    device check the real kernels make is repeated here."""
    (first, t0), *rest = tensors.items()
    for name, t in rest:
        if t.device != t0.device:
            raise ValueError(f"hsc: {name} is on {t.device} but {first} is on {t0.device}; all tensor "
                             "arguments must be on one device")


@torch.library.register_fake("hsc::correct")
def _correct_fake(H, damping, scale, mode, max_tries, max_sweeps):
    _same_device(H=H, damping=damping)
    N, b = H.shape[0], H.shape[1]
    factor = H.new_empty(factor_shape(N, b), dtype=_compute_dtype(H.dtype))
    return factor, H.new_empty((N,)), H.new_empty((N,), dtype=torch.int32)


@torch.library.register_fake("hsc::correct_")
def _correct_in_place_fake(factor, H, damping, scale, correction_mode, max_tries, keep_failed, max_sweeps):
    _same_device(factor=factor, H=H, damping=damping,
                 **({} if keep_failed is None else {"keep_failed": keep_failed}))
    N = H.shape[0]
    return H.new_empty((N,)), H.new_empty((N,), dtype=torch.int32)


@torch.library.register_fake("hsc::solve")
def _solve_fake(factor, G):
    _same_device(factor=factor, G=G)
    return G.new_empty(G.shape)


@torch.library.register_fake("hsc::precondition")
def _precondition_fake(H, G, damping, scale, mode, max_tries, max_sweeps):
    _same_device(H=H, G=G, damping=damping)
    N = H.shape[0]
    return G.new_empty(G.shape), H.new_empty((N,)), H.new_empty((N,), dtype=torch.int32)


@torch.library.register_fake("hsc::eigh")
def _eigh_fake(H, max_sweeps):
    N, b = H.shape[0], H.shape[1]
    dtype = _compute_dtype(H.dtype)
    return H.new_empty((N, b), dtype=dtype), H.new_empty((N, b, b), dtype=dtype), \
        H.new_empty((N,), dtype=torch.int32)


@torch.library.register_fake("hsc::correct_from_eigh_")
def _correct_from_eigh_fake(factor, eigenvalues, eigenvectors, status, scale, correction_mode, keep_failed,
                            power):
    _same_device(factor=factor, eigenvalues=eigenvalues, eigenvectors=eigenvectors, status=status,
                 **({} if keep_failed is None else {"keep_failed": keep_failed}))


@torch.library.register_fake("hsc::accumulate_probes")
def _accumulate_probes_fake(state, hvps, signs, mask, ema, first):
    _same_device(state=state, hvps=hvps, signs=signs, mask=mask)
    return state.new_empty((state.shape[0],), dtype=torch.bool)


@torch.library.register_fake("hsc::fold_estimate_")
def _fold_estimate_fake(state, estimate, mask, ema, first):
    _same_device(state=state, estimate=estimate, mask=mask)
    return state.new_empty((state.shape[0],), dtype=torch.bool)


@torch.library.register_fake("hsc::graft_")
def _graft_fake(P, G, ends):
    _same_device(P=P, G=G, ends=ends)
    return P.new_empty((ends.shape[0],), dtype=torch.bool)
