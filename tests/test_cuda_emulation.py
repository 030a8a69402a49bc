"""The CUDA kernels (csrc/cuda/*_kernel.cuh), run on the host without a GPU.

tests/cuda_emulation compiles the kernels of csrc/cuda/*_kernel.cuh with the host compiler and runs
them with one thread per CUDA thread (emulate.h), under AddressSanitizer and
UndefinedBehaviorSanitizer.
This checks what the CPU kernels cannot vouch for: the kernels' thread mappings (b <= 32: a
warp per matrix in registers, with shuffles, whole warps leaving early; larger b: a thread block
per matrix in shared memory, or in the global scratch), their indexing into shared memory and into
the packed, tiled factor, and that every thread reaches the same barriers and shuffles (a
mismatch deadlocks, caught by the timeout). The eigensolver's kernels (eigh_kernel.cuh: Jacobi in
a round-robin order, pairs rotating at once) and those that turn its result into a factor or a
step (correct_from_eigh_kernel.cuh) are run both on their own and chained as the spectral modes of
correct and precondition run them. Results are compared with the CPU op on the same
inputs, block by block (test_cuda.py's error model). Outputs start as sentinels (NaN, status -7),
not zeros, so that an entry a kernel does not write shows. What only hardware shows (speed, bank
conflicts, the weaker memory model, streams) is for tests/test_cuda.py on a GPU machine.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import generator, indefinite_blocks, spd_blocks
from hsc import ops
from hsc import reference as ref
from test_cuda import (assert_blocks_close, assert_eigh_matches_cpu, assert_fold_close,
                       assert_spectral_matches_cpu, fold_case)
from test_spectral import C_PRODUCT, diagonal_blocks, product_scale, random_blocks, rank_one_blocks

HERE = pathlib.Path(__file__).parent / "cuda_emulation"
COMPILER = shutil.which("g++") or shutil.which("c++")
MAX_SHARED = 227 * 1024  # an H100's opt-in shared memory per thread block
TIMEOUT = 300  # seconds; a team that misses a barrier hangs instead of failing

pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler to build the emulation")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> pathlib.Path:
    exe = tmp_path_factory.mktemp("emulator") / "run_kernel"
    subprocess.run([COMPILER, "-std=c++20", "-O1", "-g", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-pthread", f"-I{HERE}", str(HERE / "run_kernel.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def emulate(exe, tmp_path, H, *, G=None, factor=None, damping=1e-4, scale=1.0, mode="cholesky",
            max_tries=32, keep_failed=False, max_shared=MAX_SHARED):
    """The kernel's (out, damping, status): out is P (G given) or the factor (updated from
    ``factor``, or from NaN: the op's fresh factor holds anything but in the lanes past the last
    block, which the harness sets to 0 as the op's host side does). ``damping``: a float or one
    value per block, passed to the kernel unchecked as on CUDA; ``keep_failed``: False, True or a
    [N] bool mask."""
    N, b = H.shape[0], H.shape[1]
    dtype = H.dtype
    r = 0 if G is None else (G.shape[2] if G.dim() == 3 else 1)
    params = dict(N=N, b=b, r=r, fused=int(G is not None), itemsize=dtype.itemsize, scale=scale,
                  mode=0 if mode == "cholesky" else 1, max_tries=max_tries,
                  keep_failed=int(keep_failed is not False), max_shared=max_shared)
    (tmp_path / "params.txt").write_text("".join(f"{k} {v}\n" for k, v in params.items()))
    H.contiguous().numpy().tofile(tmp_path / "H.bin")
    if not isinstance(damping, torch.Tensor):
        damping = torch.full((N,), float(damping), dtype=dtype)  # as hsc.ops makes it
    damping.to(dtype).contiguous().numpy().tofile(tmp_path / "damping.bin")
    if G is not None:
        G.contiguous().numpy().tofile(tmp_path / "G.bin")
    else:
        start = torch.full(ops.factor_shape(N, b), float("nan"), dtype=dtype) if factor is None else factor
        start.contiguous().numpy().tofile(tmp_path / "factor.bin")
        if keep_failed is not False:
            keep = torch.ones(N, dtype=torch.bool) if keep_failed is True else keep_failed
            keep.to(torch.uint8).numpy().tofile(tmp_path / "keep_failed.bin")
    done = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    read = lambda name, dt: torch.from_numpy(np.fromfile(tmp_path / name, dtype=dt))  # noqa: E731
    d, s = read("damping_out.bin", np_dtype), read("status.bin", np.int32)
    out = (read("P.bin", np_dtype).reshape(G.shape) if G is not None
           else read("factor.bin", np_dtype).reshape(ops.factor_shape(N, b)))
    return out, d, s


def blocks(N: int, b: int, dtype, seed: int) -> torch.Tensor:
    """SPD and clearly indefinite blocks (no decision near a boundary, so CPU and emulated GPU
    take the same one), and a NaN block and an Inf block."""
    gen = generator(seed)
    H = torch.cat([spd_blocks(N - N // 2, b, gen), indefinite_blocks(N // 2, b, gen)]).to(dtype)
    H[1, 0, b - 1] = float("nan")
    H[N - 2, b - 1, 0] = float("inf")
    return H


def block_relative_errors(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_k - y_k|| / ||y_k|| for every block k (float64): a norm over the whole tensor would let a
    wrong block through beside larger ones."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    return (x - y).norm(dim=1) / y.norm(dim=1).clamp_min(1e-300)


TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
MODES = ("cholesky", "singular_safe")

# (b, dtype, N): the register warp kernel with 4 (b = 1, 3), 8 (b = 6, 8), 16 and 32 rows, thread-block
# teams of 64 and 128 threads (33, 64, 100). N = 9 leaves whole warps idle in the last thread
# block; N = 37 spans three 16-block tiles of the factor (the last one partly used), for each
# kernel (the emulation runs a host thread per CUDA thread: the large b stay at N = 9).
CASES = [(1, torch.float32, 9), (3, torch.float64, 37), (6, torch.float32, 37), (8, torch.float64, 9),
         (16, torch.float32, 9), (32, torch.float64, 9), (33, torch.float32, 37), (64, torch.float64, 9),
         (100, torch.float32, 9)]


def assert_matches_cpu(H, G, got, expected, *, scale, mode):
    """The emulated kernel's (out, damping, status) against the CPU op's: the same decisions for
    every block (the blocks are chosen away from any boundary), and every block's P (G given) or
    M^-1 (out is a factor) within test_cuda.py's per-block bound, and within TOL of the CPU's
    relative to its own norm."""
    (out, d, s), (out_cpu, d_cpu, s_cpu) = got, expected
    N = H.shape[0]
    assert torch.equal(s, s_cpu) and torch.equal(d, d_cpu)
    if G is None:
        out, out_cpu = ops.unpack(out, N), ops.unpack(out_cpu, N)
    assert torch.isfinite(out).all()
    checked = assert_blocks_close(H, G, d_cpu, s_cpu, scale, mode, out, out_cpu,
                                  torch.ones(N, dtype=torch.bool))
    errors = block_relative_errors(out, out_cpu)
    bad = ~(errors < TOL[H.dtype])
    assert not bad.any(), f"blocks {bad.nonzero().flatten().tolist()}: relative errors {errors[bad].tolist()}"
    return checked


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b,dtype,N", CASES, ids=[f"b{b}-{str(d)[6:]}-N{N}" for b, d, N in CASES])
def test_emulated_kernel_matches_cpu(emulator, tmp_path, b, dtype, N, mode):
    H = blocks(N, b, dtype, seed=b)
    G = torch.randn(N, b, 2, dtype=dtype, generator=generator(b + 1))
    P, d, s = emulate(emulator, tmp_path, H, G=G, scale=0.7, mode=mode)
    expected = ops.precondition(H, G, scale=0.7, mode=mode)
    checked = assert_matches_cpu(H, G, (P, d, s), expected, scale=0.7, mode=mode)
    assert s[1] == 2 and s[N - 2] == 2
    spd = torch.arange(N) < N - N // 2
    spd[1] = False
    assert checked[spd].all()  # the well-conditioned blocks are compared in every case
    F, d2, s2 = emulate(emulator, tmp_path, H, scale=0.7, mode=mode)
    c = ops.correct(H, scale=0.7, mode=mode)
    checked = assert_matches_cpu(H, None, (F, d2, s2), tuple(c), scale=0.7, mode=mode)
    assert checked[spd].all()
    if N % ops.TILE:
        assert (F[-1, :, N % ops.TILE:] == 0).all()  # lanes past the last block are not written


def assert_scratch_written(tmp_path, H: torch.Tensor) -> None:
    """The correct kernels' global workspace after a run holds, per block, S, A and M (b rows of
    b + 1 entries, the last one unused), then x, y and g (b entries each;
    csrc/cuda/correct_kernel.cuh). It starts as NaN: every block with a finite H must have
    written all of S and the lower triangles of A and M (factorised in place) in its own region."""
    N, b = H.shape[0], H.shape[1]
    ws = read_output(tmp_path, "scratch", H.dtype, (N, 3 * b * (b + 1) + 3 * b))
    ws = ws[:, : 3 * b * (b + 1)].reshape(N, 3, b, b + 1)[torch.isfinite(H).flatten(1).all(1), :, :, :b]
    lower = torch.ones(b, b, dtype=torch.bool).tril()
    assert not torch.isnan(ws[:, 0]).any(), "S not written"
    assert not torch.isnan(ws[:, 1:][..., lower]).any(), "A or M not written"


@pytest.mark.parametrize("b", [40, 70])
def test_emulated_global_scratch_fallback(emulator, tmp_path, b):
    """Workspaces that do not fit in shared memory go to the global scratch (forced here with a
    small shared-memory limit): same results, in both paths. The scratch starts as NaN (the op's
    is at::empty), so an entry read before it is written shows in the result; each block with a
    finite H writes all of S and the lower triangles of A and M (factorised in place) in its own
    region (a block writing another's would leave NaN in its own)."""
    N, dtype = 6, torch.float64
    H = blocks(N, b, dtype, seed=3 * b)  # blocks 1 and 4 not finite
    G = torch.randn(N, b, dtype=dtype, generator=generator(b))
    P, d, s = emulate(emulator, tmp_path, H, G=G, max_shared=4096)
    assert_scratch_written(tmp_path, H)
    assert_matches_cpu(H, G, (P, d, s), ops.precondition(H, G, mode="cholesky"), scale=1.0, mode="cholesky")
    F, d, s = emulate(emulator, tmp_path, H, max_shared=4096)
    assert_scratch_written(tmp_path, H)
    assert_matches_cpu(H, None, (F, d, s), tuple(ops.correct(H, mode="cholesky")), scale=1.0, mode="cholesky")


BAD_DAMPINGS = (-1.0, float("nan"), float("inf"), float("-inf"), -1e-30)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b,dtype", [(5, torch.float32), (33, torch.float64)], ids=["warp", "team"])
def test_emulated_bad_damping_entry(emulator, tmp_path, b, dtype, mode):
    """The rule only the CUDA kernels have (the CPU op refuses such a tensor): a block whose damping
    is negative, NaN or infinite gets status 2 and the fallback and reports its damping as given
    (docs/contract.md §3), in both paths; every other block is what the CPU gives it with its own
    damping."""
    N, scale = 12, 0.7
    H = blocks(N, b, dtype, seed=5 * b)  # non-finite H in blocks 1 and 10
    G = torch.randn(N, b, 2, dtype=dtype, generator=generator(b + 2))
    damping = torch.full((N,), 1e-3, dtype=dtype)
    bad = torch.tensor([0, 3, 6, 8, 11])  # SPD and indefinite blocks
    damping[bad] = torch.tensor(BAD_DAMPINGS, dtype=dtype)
    good = torch.ones(N, dtype=torch.bool)
    good[bad] = False
    clean = torch.where(good, damping, 1e-3)
    kw = dict(scale=scale, mode=mode)
    P_cpu, d_cpu, s_cpu = ops.precondition(H, G, damping=clean, **kw)
    c = ops.correct(H, damping=clean, **kw)
    for G_, (out, d, s), (out_cpu, _, _) in (
            (G, emulate(emulator, tmp_path, H, G=G, damping=damping, **kw), (P_cpu, d_cpu, s_cpu)),
            (None, emulate(emulator, tmp_path, H, damping=damping, **kw), tuple(c))):
        assert (s[bad] == 2).all()
        torch.testing.assert_close(d[bad], damping[bad], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(s[good], s_cpu[good]) and torch.equal(d[good], d_cpu[good])
        if G_ is None:
            out, out_cpu = ops.unpack(out, N), ops.unpack(out_cpu, N)
        # The bad blocks against the fallback, the others against the CPU.
        checked = assert_blocks_close(H, G_, d_cpu, torch.where(good, s_cpu, 2), scale, mode, out, out_cpu,
                                      torch.ones(N, dtype=torch.bool))
        assert checked[good & (s_cpu != 2)].all()


def test_emulated_keep_failed(emulator, tmp_path):
    """correct_ with keep_failed: blocks of status 2 and 3 keep the factor they held."""
    N, b, dtype = 7, 5, torch.float32
    gen = generator(11)
    H = torch.cat([spd_blocks(4, b, gen), -spd_blocks(3, b, gen)]).to(dtype)
    H[0, 1, 1] = float("nan")
    previous = torch.randn(ops.factor_shape(N, b), dtype=dtype, generator=gen)
    F, d, s = emulate(emulator, tmp_path, H, factor=previous.clone(), damping=0.0, max_tries=1,
                      keep_failed=True)
    expected = ops.correct(H, damping=0.0, max_tries=1, mode="cholesky")
    assert torch.equal(s, expected.status)
    failed = s >= 2
    assert failed[0] and failed[4:].all() and not failed[1:4].any()
    assert torch.equal(ops.unpack(F, N)[failed], ops.unpack(previous, N)[failed])
    # the refactorised blocks one by one against the CPU's: by test_cuda.py's per-block bound, and
    # each within 1e-4 of its own norm
    F_blocks, F_cpu = ops.unpack(F, N), ops.unpack(expected.factor, N)
    checked = assert_blocks_close(H, None, expected.damping, expected.status, 1.0, "cholesky", F_blocks, F_cpu,
                                  ~failed)
    assert checked[~failed].all()
    errors = block_relative_errors(F_blocks[~failed], F_cpu[~failed])
    assert (errors < 1e-4).all(), f"relative errors of the refactorised blocks {errors.tolist()}"
    assert (F[-1, :, N:] == 0).all()  # set by the host, left alone by the kernel


@pytest.mark.parametrize("b", [5, 33])  # warp kernel (8 rows), team kernel
def test_emulated_keep_failed_mask(emulator, tmp_path, b):
    """correct_ with a per-block keep_failed mask over three tiles of the factor: a failed block
    (status 2 or 3) keeps the factor it held where its flag is set and gets the fallback where not;
    the other blocks are refactorised whatever their flag; exactly as the CPU op."""
    N, dtype = 37, torch.float32
    gen = generator(13 + b)
    H = spd_blocks(N, b, gen)
    H[1::3] *= -1  # negative definite: status 3 at damping 0 with one try
    H = H.to(dtype)
    H[0, 1, 1] = float("nan")
    H[9, b - 1, 0] = float("inf")
    keep = torch.arange(N) % 2 == 0
    previous = torch.randn(ops.factor_shape(N, b), dtype=dtype, generator=gen)
    previous[-1, :, N % ops.TILE:] = float("nan")  # the host sets these lanes to 0
    F, d, s = emulate(emulator, tmp_path, H, factor=previous.clone(), damping=0.0, max_tries=1,
                      keep_failed=keep)
    F_cpu = previous.clone()
    d_cpu, s_cpu = ops.correct_(F_cpu, H, damping=0.0, max_tries=1, keep_failed=keep)[1:]
    assert torch.equal(s, s_cpu) and torch.equal(d, d_cpu)
    failed = s >= 2
    assert (failed & keep).any() and (failed & ~keep).any() and (~failed & keep).any()
    blocks_F, blocks_prev = ops.unpack(F, N), ops.unpack(previous, N)
    assert torch.equal(blocks_F[failed & keep], blocks_prev[failed & keep])
    assert torch.equal(blocks_F[failed], ops.unpack(F_cpu, N)[failed])  # kept, or the fallback
    fallback = torch.eye(b, dtype=dtype) / (1 + torch.tensor(1.0, dtype=dtype))
    assert torch.equal(blocks_F[failed & ~keep], fallback.expand(int((failed & ~keep).sum()), b, b))
    checked = assert_blocks_close(H, None, d_cpu, s_cpu, 1.0, "cholesky", blocks_F, ops.unpack(F_cpu, N),
                                  ~(failed & keep))
    assert checked[~failed].all()
    assert (F[-1, :, N % ops.TILE:] == 0).all()


def emulate_accumulate(exe, tmp_path, state, hvps, signs, mask, *, ema, first):
    """The accumulate_probes kernel: (new state, accepted)."""
    S, b, N = hvps.shape[0], hvps.shape[1], hvps.shape[2]
    params = dict(kernel=1, S=S, N=N, b=b, itemsize=state.dtype.itemsize, ema=ema, first=int(first))
    (tmp_path / "params.txt").write_text("".join(f"{k} {v}\n" for k, v in params.items()))
    for name, t in (("state", state), ("hvps", hvps), ("signs", signs), ("mask", mask.to(torch.uint8))):
        t.contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    done = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    np_dtype = np.float64 if state.dtype == torch.float64 else np.float32
    new = torch.from_numpy(np.fromfile(tmp_path / "state.bin", dtype=np_dtype)).reshape(state.shape)
    accepted = torch.from_numpy(np.fromfile(tmp_path / "accepted.bin", dtype=np.uint8))
    return new, accepted


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_accumulate_probes_matches_cpu(emulator, tmp_path, dtype, first):
    """The assembly kernel (one thread block per diagonal block, two __syncthreads_or): a block
    with an Inf HVP keeps its state, a block whose state holds a NaN starts afresh, padding slots
    hold the identity; the CPU op's result up to rounding (the same per-entry arithmetic, which
    compilers may fuse into multiply-adds differently)."""
    gen = generator(21)
    S, b, N = 2, 6, 11
    hvps = torch.randn(S, b, N, b, dtype=dtype, generator=gen)
    hvps[0, 1, 4, 2] = float("inf")
    signs = torch.randint(0, 2, (S, N), generator=gen).to(dtype) * 2 - 1
    mask = torch.ones(N, b, dtype=torch.bool)
    mask[-1, -2:] = False
    state = torch.randn(N, b, b, dtype=dtype, generator=gen)
    state[7, 0, 0] = float("nan")
    cpu = state.clone()
    accepted_cpu = ops.accumulate_probes(cpu, hvps, signs, mask, ema=0.8, first=first)
    new, accepted = emulate_accumulate(emulator, tmp_path, state, hvps, signs, mask, ema=0.8, first=first)
    assert torch.equal(accepted.bool(), accepted_cpu) and not accepted_cpu[4]
    torch.testing.assert_close(new, cpu, rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)


def emulate_fold(exe, tmp_path, state, estimate, mask, *, ema, first):
    """The fold_estimate_ kernel: (new state, accepted as bytes, 2 where not written)."""
    N, b = state.shape[0], state.shape[1]
    params = dict(kernel=3, N=N, b=b, itemsize=state.dtype.itemsize, ema=ema, first=int(first))
    (tmp_path / "params.txt").write_text("".join(f"{k} {v}\n" for k, v in params.items()))
    for name, t in (("state", state), ("estimate", estimate), ("mask", mask.to(torch.uint8))):
        t.contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    done = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    np_dtype = np.float64 if state.dtype == torch.float64 else np.float32
    new = torch.from_numpy(np.fromfile(tmp_path / "state.bin", dtype=np_dtype)).reshape(state.shape)
    accepted = torch.from_numpy(np.fromfile(tmp_path / "accepted.bin", dtype=np.uint8))
    return new, accepted


@pytest.mark.parametrize("b", [6, 17])  # 17: b^2 > 256 threads, each thread folds several entries
@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_fold_estimate_matches_cpu(emulator, tmp_path, dtype, first, b):
    """The fold_estimate_ kernel (one thread block per diagonal block, fold_block.cuh) against the
    CPU op (docs/contract.md §4), on test_cuda.py's fold_case: a non-finite estimate keeps a finite
    state, a non-finite state restarts (into a non-finite estimate too), non-finite values in
    padding slots count for nothing in the estimate, padding slots hold the identity; copies
    exact, averages within rounding."""
    N, ema = 11, 0.8
    state, estimate, mask = fold_case(N, b, dtype, seed=b)
    cpu = state.clone()
    accepted_cpu = ops.fold_estimate_(cpu, estimate, mask, ema=ema, first=first)
    new, accepted = emulate_fold(emulator, tmp_path, state, estimate, mask, ema=ema, first=first)
    assert torch.equal(accepted, accepted_cpu.to(torch.uint8))
    assert not accepted_cpu[4] and not accepted_cpu[2] and accepted_cpu[N - 1]
    assert_fold_close(new, cpu, state, estimate, ema)


@pytest.mark.parametrize("b,r", [(1, 1), (5, 3), (16, 1), (33, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_solve_matches_cpu(emulator, tmp_path, b, r, dtype):
    """The solve kernel (a thread per entry of P, reading the tiled factor) on a random factor,
    nonzero lanes past the last block included: the CPU op's result up to rounding."""
    N = 21
    gen = generator(b + r)
    F = torch.randn(ops.factor_shape(N, b), dtype=dtype, generator=gen)
    G = torch.randn(N, b, r, dtype=dtype, generator=gen)
    params = dict(kernel=2, N=N, b=b, r=r, itemsize=dtype.itemsize)
    (tmp_path / "params.txt").write_text("".join(f"{k} {v}\n" for k, v in params.items()))
    F.numpy().tofile(tmp_path / "factor.bin")
    G.numpy().tofile(tmp_path / "G.bin")
    done = subprocess.run([str(emulator), str(tmp_path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    P = torch.from_numpy(np.fromfile(tmp_path / "P.bin", dtype=np_dtype)).reshape(N, b, r)
    expected = ops.solve(ops.Correction(F, torch.zeros(N), torch.zeros(N, dtype=torch.int32)), G)
    # Entry by entry, as test_cuda.py checks the solve kernel: within twice the rounding of a
    # length-b dot product, b eps |M^-1| |g| (Higham, 3.5). A norm over the whole tensor would let
    # one wrong block among 21 through (and the NaN sentinel of an entry not written fails here).
    tol = 2 * b * torch.finfo(dtype).eps * (ops.unpack(F, N).double().abs() @ G.double().abs())
    bad = ~((P.double() - expected.double()).abs() <= tol)
    assert not bad.any(), f"entries {bad.nonzero().tolist()[:10]} off by more than the rounding"


# ---- eigh and the spectral modes ---------------------------------------------------------------

EIGH_MODE_CODES = {"spectral": 2, "saddle_free": 3, "saddle_free_root": 4}  # Mode of block_rules.h
EIGEN_NOT_WRITTEN = -7777.0  # run_kernel.cpp's sentinel for eigh's outputs (NaN is one of them)


def run_emulator(exe, tmp_path, params: dict, **inputs) -> None:
    (tmp_path / "params.txt").write_text("".join(f"{k} {v}\n" for k, v in params.items()))
    for name, t in inputs.items():
        t.contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    done = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]


def read_output(tmp_path, name: str, dtype: torch.dtype, shape) -> torch.Tensor:
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32}[dtype]
    return torch.from_numpy(np.fromfile(tmp_path / f"{name}.bin", dtype=np_dtype)).reshape(shape)


def emulate_eigh(exe, tmp_path, H, *, max_sweeps=ops.MAX_SWEEPS, max_shared=MAX_SHARED) -> ops.Eigh:
    """The eigh kernels (warp or team, as choose_eigh_mapping picks) on float32/float64 H."""
    N, b = H.shape[0], H.shape[1]
    run_emulator(exe, tmp_path, dict(kernel=4, N=N, b=b, itemsize=H.dtype.itemsize, max_sweeps=max_sweeps,
                                     max_shared=max_shared), H=H)
    e = ops.Eigh(read_output(tmp_path, "eigenvalues", H.dtype, (N, b)),
                 read_output(tmp_path, "eigenvectors", H.dtype, (N, b, b)),
                 read_output(tmp_path, "status", torch.int32, (N,)))
    # Every output written (the sentinel is finite: the error model alone might not single it out).
    assert not (e.eigenvalues == EIGEN_NOT_WRITTEN).any() and not (e.eigenvectors == EIGEN_NOT_WRITTEN).any()
    assert ((e.status == 0) | (e.status == 2) | (e.status == 3)).all()
    return e


def emulate_from_eigh(exe, tmp_path, eigen: ops.Eigh, *, mode, scale, G=None, factor=None,
                      keep_failed=None, rounding="correct", power=1.0):
    """The kernels that follow eigh, launched as the op does: P = M^-1 G (G given; the fused step
    of precondition), or the factor (M^-power), updated from ``factor`` (or from NaN, the fresh
    factor holding anything; the harness zeroes the lanes past the last block as the host does),
    with the fallback rounded as ``rounding`` says: "correct" (correct / correct_) or
    "from_eigh"."""
    N, b = eigen.eigenvectors.shape[0], eigen.eigenvectors.shape[-1]
    dtype = eigen.eigenvalues.dtype
    r = 0 if G is None else (G.shape[2] if G.dim() == 3 else 1)
    params = dict(kernel=5, N=N, b=b, r=r, fused=int(G is not None), itemsize=dtype.itemsize, scale=scale,
                  mode=EIGH_MODE_CODES[mode], keep_failed=int(keep_failed is not None),
                  fallback=0 if rounding == "correct" else 1, power=power)
    inputs = dict(eigenvalues=eigen.eigenvalues, eigenvectors=eigen.eigenvectors, status=eigen.status)
    if G is not None:
        inputs["G"] = G
    else:
        fresh = torch.full(ops.factor_shape(N, b), float("nan"), dtype=dtype)
        inputs["factor"] = fresh if factor is None else factor
        if keep_failed is not None:
            inputs["keep_failed"] = keep_failed.to(torch.uint8)
    run_emulator(exe, tmp_path, params, **inputs)
    if G is not None:
        return read_output(tmp_path, "P", dtype, G.shape)
    return read_output(tmp_path, "factor", dtype, ops.factor_shape(N, b))


def eigen_blocks(N: int, b: int, dtype, seed: int) -> torch.Tensor:
    """Block k of kind k % 8: Gaussian (not symmetric), NaN, indefinite, Inf, diagonal with a
    repeated entry, SPD, rank one, zero (N = 5 already has both non-finite kinds)."""
    gen = generator(seed)
    kinds = [random_blocks, random_blocks, indefinite_blocks, random_blocks, diagonal_blocks, spd_blocks,
             rank_one_blocks, lambda n, b, g: torch.zeros(n, b, b, dtype=torch.float64)]
    H = torch.cat([kinds[k % 8](1, b, gen) for k in range(N)])
    H[1::8, b - 1, 0] = float("nan")
    H[3::8, 0, b - 1] = float("inf")
    return H.to(dtype)


# (b, dtype, N, mode): the register kernel with 4 (b = 1, 3), 8, 16 and 32 rows (b = 25: padding
# rows; b = 32: none), thread-block teams of 64 (b = 33: odd, one padding index; b = 64) and 128
# threads. N = 9 leaves idle warps in the last thread block; the register kernels at large b cost
# the emulation most (a host thread per lane, warp barriers at every shuffle): N = 5 there.
EIGH_CASES = [(1, torch.float32, 9, "spectral"), (3, torch.float64, 9, "saddle_free"),
              (6, torch.float32, 9, "saddle_free_root"), (16, torch.float64, 5, "spectral"),
              (25, torch.float32, 5, "saddle_free"), (32, torch.float64, 5, "saddle_free_root"),
              (33, torch.float32, 9, "spectral"), (64, torch.float64, 3, "saddle_free"),
              (70, torch.float32, 3, "saddle_free_root")]


@pytest.mark.parametrize("b,dtype,N,mode", EIGH_CASES,
                         ids=[f"b{b}-{str(d)[6:]}-N{N}-{m}" for b, d, N, m in EIGH_CASES])
def test_emulated_eigh_and_spectral_modes_match_cpu(emulator, tmp_path, b, dtype, N, mode):
    """eigh's kernels against the CPU op (eigen_blocks: Gaussian, indefinite, SPD, diagonal,
    rank-one, zero and non-finite blocks), then, from their result, the factor and the fused step
    of a spectral mode as correct_cuda.cu chains them, against the CPU ops correct and
    precondition."""
    H = eigen_blocks(N, b, dtype, seed=b)
    e = emulate_eigh(emulator, tmp_path, H)
    assert_eigh_matches_cpu(H, e, ops.eigh(H))
    assert (e.status[torch.isfinite(H).flatten(1).all(1)] == 0).all()  # converged within the default limit
    scale = 0.7
    G = torch.randn(N, b, 2, dtype=dtype, generator=generator(b + 1))
    P = emulate_from_eigh(emulator, tmp_path, e, mode=mode, scale=scale, G=G)
    F = emulate_from_eigh(emulator, tmp_path, e, mode=mode, scale=scale)
    P_cpu, d_cpu, s_cpu = ops.precondition(H, G, scale=scale, mode=mode)
    assert torch.equal(s_cpu, e.status) and (d_cpu == 0).all()
    assert_spectral_matches_cpu(H, G, e.status, P, F, P_cpu, ops.correct(H, scale=scale, mode=mode).factor,
                                scale=scale, mode=mode)


@pytest.mark.parametrize("b,dtype,N", [(2, torch.float64, 9), (8, torch.float32, 9), (33, torch.float64, 3)],
                         ids=["b2-warp4", "b8-warp8", "b33-team"])
def test_emulated_eigh_sweep_limit(emulator, tmp_path, b, dtype, N):
    """max_sweeps = 1 and 2: status 3 with the last iterate (orthogonal, Rayleigh quotients as
    eigenvalues, ascending) where a block needs more, as on the CPU (the blocks keep clear of the
    edge: Gaussian blocks of b >= 3 need more than 2 sweeps in either order; a 2 x 2 block exactly
    2, a diagonal one 1; at b = 33 the CPU's tridiagonal route, whose limit counts each
    eigenvalue's QL iterations, needs more than 2 for some eigenvalue of a Gaussian block too);
    status 0 for diagonal blocks, 2 for the non-finite; the spectral modes give the fallback for
    status 3."""
    H = eigen_blocks(N, b, dtype, seed=50 + b)
    for max_sweeps in (2, 1):
        e = emulate_eigh(emulator, tmp_path, H, max_sweeps=max_sweeps)
        assert_eigh_matches_cpu(H, e, ops.eigh(H, max_sweeps=max_sweeps))
        if b > 2 or max_sweeps == 1:
            assert (e.status[0::8] == 3).all() and (e.status[2::8] == 3).all()
        else:
            assert (e.status[0::8] == 0).all()
        if N > 4:
            assert e.status[4] == 0  # diagonal
    G = torch.randn(N, b, dtype=dtype, generator=generator(b))
    mode = "saddle_free_root"
    P = emulate_from_eigh(emulator, tmp_path, e, mode=mode, scale=0.5, G=G)  # e: max_sweeps = 1
    F = emulate_from_eigh(emulator, tmp_path, e, mode=mode, scale=0.5)
    P_cpu, _, s_cpu = ops.precondition(H, G, scale=0.5, mode=mode, max_sweeps=1)
    assert torch.equal(s_cpu, e.status) and (s_cpu == 3).any()
    F_cpu = ops.correct(H, scale=0.5, mode=mode, max_sweeps=1).factor
    assert_spectral_matches_cpu(H, G, e.status, P, F, P_cpu, F_cpu, scale=0.5, mode=mode)


def test_emulated_eigh_global_scratch(emulator, tmp_path):
    """A and V that do not fit in shared memory go to the global scratch (forced with a small
    limit): the same arithmetic, so bit for bit the result of the shared-memory path, and the
    CPU's within the error model. Each block works in its own region of the scratch (which starts
    as a sentinel here): the emulation runs thread blocks one after another, where blocks sharing a
    region would not collide."""
    N, b, dtype = 5, 40, torch.float64
    H = eigen_blocks(N, b, dtype, seed=40)
    e = emulate_eigh(emulator, tmp_path, H, max_shared=4096)
    assert_eigh_matches_cpu(H, e, ops.eigh(H))
    n = b + b % 2  # A and V of n rows of n + 1 entries, the last entry of each row unused
    scratch = read_output(tmp_path, "scratch", dtype, (N, 2, n, n + 1))
    assert (scratch[..., :n] != EIGEN_NOT_WRITTEN).all()
    shared = emulate_eigh(emulator, tmp_path, H)
    for x, y in zip(e, shared):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("mode", sorted(EIGH_MODE_CODES))
@pytest.mark.parametrize("b,dtype", [(1, torch.float32), (5, torch.float64), (12, torch.float32)])
def test_emulated_correct_from_eigh_matches_cpu(emulator, tmp_path, b, dtype, mode):
    """The kernels after eigh on the CPU's eigen-decomposition (the same input to both), over three
    tiles of the factor (N = 37): correct_from_eigh_ (M^-1, and M^-1/2 in the modes whose f >= 0)
    into a used buffer with a keep_failed mask against the CPU op (statuses 0, 2 and 3; a failed
    block keeps its factor where its flag is set, gets the fallback, rounded as the CPU rounds it,
    where not; lanes past the last block 0), and the fused step (G [N, b] and [N, b, r]) against the
    product of the CPU's factor. Only the summation of the last product differs
    (tests/test_spectral.py: within C_PRODUCT b eps |V| |f| |V|^T, times |g| for the step)."""
    N, scale = 37, 0.3
    gen = generator(70 + b)
    H = torch.cat([random_blocks(N - 3, b, gen), torch.full((3, b, b), float("nan"), dtype=torch.float64)])
    H = H[torch.randperm(N, generator=gen)].to(dtype)
    e = ops.eigh(H)
    status = e.status.clone()
    status[torch.arange(N) % 5 == 2] = 3  # as eigh reports a block that did not converge: the last iterate
    e = e._replace(status=status)
    keep = torch.arange(N) % 2 == 0
    failed, ok = status >= 2, status == 0
    assert (failed & keep).any() and (failed & ~keep).any() and (status == 2).any()
    V = e.eigenvectors[ok].double()
    f = ref.spectral_multiplier(mode, e.eigenvalues[ok].double(), scale).abs()
    for power in (1.0, 0.5) if mode != "spectral" else (1.0,):
        previous = torch.randn(ops.factor_shape(N, b), dtype=dtype, generator=gen)
        previous[-1, :, N % ops.TILE:] = float("nan")  # the host sets these lanes to 0
        F = emulate_from_eigh(emulator, tmp_path, e, mode=mode, scale=scale, factor=previous.clone(),
                              keep_failed=keep, rounding="from_eigh", power=power)
        F_cpu = previous.clone()
        ops.correct_from_eigh_(F_cpu, e, scale=scale, mode=mode, keep_failed=keep, power=power)
        assert (F[-1, :, N % ops.TILE:] == 0).all()
        blocks_F, blocks_cpu = ops.unpack(F, N), ops.unpack(F_cpu, N)
        assert torch.equal(blocks_F[failed & keep], ops.unpack(previous, N)[failed & keep])
        assert torch.equal(blocks_F[failed], blocks_cpu[failed])
        unit = b * torch.finfo(dtype).eps * (V.abs() * f[:, None, :] ** power) @ V.abs().mT
        assert ((blocks_F[ok].double() - blocks_cpu[ok].double()).abs() <= C_PRODUCT * unit).all()
    unit = b * torch.finfo(dtype).eps * product_scale(ops.Eigh(*(t[ok] for t in e)), mode, scale)
    for shape in ((N, b), (N, b, 3)):
        G = torch.randn(*shape, dtype=dtype, generator=gen)
        P = emulate_from_eigh(emulator, tmp_path, e, mode=mode, scale=scale, G=G)
        assert torch.isfinite(P).all()
        mu2 = torch.tensor(scale * scale, dtype=dtype)  # as the op rounds mu^2
        Gm = G if G.dim() == 3 else G.unsqueeze(-1)
        assert torch.equal(P[failed], (G / (1 + mu2))[failed])
        F_cpu = ops.unpack(ops.correct_from_eigh(e, scale=scale, mode=mode).factor, N)
        expected = F_cpu[ok].double() @ Gm[ok].double()
        tol = C_PRODUCT * unit @ Gm[ok].double().abs()
        assert ((P[ok].double().reshape(expected.shape) - expected).abs() <= tol).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_graft_matches_cpu(emulator, tmp_path, dtype):
    """The graft_ kernel (one thread block per segment, warp shuffles and a shared-memory pass for
    the float64 norms, __syncthreads_or for finiteness) against the CPU op: segments longer than
    the 256 threads, an empty one, one with a NaN, one of zeros, rows left after the last end; the
    flags written for every segment (sentinel 2 otherwise), the rescaled rows within rounding (the
    sums run in another order), the rows after the last end untouched."""
    gen = generator(5)
    N, b = 200, 7  # segments 0 and 3 longer than the 256 threads
    ends = torch.tensor([80, 80, 81, 160, 180], dtype=torch.int64)
    P = torch.randn(N, b, dtype=dtype, generator=gen)
    G = torch.randn(N, b, dtype=dtype, generator=gen) * 3
    P[80, 3] = float("nan")
    P[160:180] = 0
    cpu = P.clone()
    finite_cpu = ops.graft_(cpu, G, ends)
    run_emulator(emulator, tmp_path, dict(kernel=6, N=N, b=b, S=len(ends), itemsize=dtype.itemsize),
                 P=P, G=G, ends=ends)
    got = read_output(tmp_path, "P", dtype, (N, b))
    finite = torch.from_numpy(np.fromfile(tmp_path / "finite.bin", dtype=np.uint8))
    assert torch.equal(finite, finite_cpu.to(torch.uint8)) and finite.tolist() == [1, 1, 0, 1, 1]
    ok = torch.arange(N) != 80
    torch.testing.assert_close(got[ok], cpu[ok], rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert torch.isnan(got[80]).all() and torch.isnan(cpu[80]).all()
    assert torch.equal(got[160:180], P[160:180]) and torch.equal(got[180:], P[180:])
