// The kernels that turn an eigen-decomposition S = V Lambda V^T (hsc::eigh) into the result of a
// spectral mode (docs/contract.md §2) on CUDA: launched from correct_from_eigh_cuda.cu
// (hsc::correct_from_eigh_) and, after the eigh kernels, from correct_cuda.cu (the spectral modes
// of hsc::correct, hsc::correct_, hsc::precondition).
//
// Thread mapping: one thread per output entry, 256 threads per thread block, the block index n
// fastest (as solve_kernel.cuh):
//   multiplier_kernel  f[n, k] = f(lambda_k) of spectral_multiplier (block_rules.h), or its square
//                      root (correct_from_eigh_'s power 0.5), once per eigenpair instead of once
//                      per entry that uses it;
//   compose_kernel     entry (i, j), j <= i, of M^-1 = V f(Lambda) V^T: the threads of a warp write
//                      entry e of consecutive blocks, which the tiled factor (factor_layout.h) holds
//                      side by side, so the writes are coalesced;
//   project_kernel, expand_kernel  the fused step of precondition without a factor:
//                      y = f(Lambda) V^T g, then p = V y (as the CPU's spectral_step), O(b^2) per
//                      column instead of the O(b^3) of forming M^-1.
// Blocks of status 2 or 3 get the fallback of docs/contract.md §3 (I / (1 + mu^2), or
// g / (1 + mu^2)) without reading their eigenpairs (NaN for status 2); correct_'s keep_failed
// leaves a failed block's factor as it was.
//
// This header needs nothing from torch or the CUDA runtime, so that tests/cuda_emulation can
// compile it for the host and run it with one host thread per CUDA thread (no GPU needed).
#pragma once

#include <cmath>
#include <cstdint>

#include "../block_rules.h"
#include "../factor_layout.h"

namespace hsc::cuda {

constexpr int kComposeThreads = 256;

// Whether a block's eigenpairs make a factor: status 0 (or 1, which eigh never gives).
HSC_HD bool decomposed(int32_t status) { return status <= kDampingRaised; }

// f[n, k] = f(lambda[n, k]) for the blocks that were decomposed, 0 for the others (not read);
// sqrt(f) where `half` (correct_from_eigh_'s power 0.5, M^-1/2, in the modes whose f >= 0).
template <class T>
__global__ void multiplier_kernel(const T* eigenvalues, const int32_t* status, T* f, int64_t N, int b,
                                  T mu, Mode mode, bool half) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * b) return;
  T x = T(0);
  if (decomposed(status[t / b])) {
    x = spectral_multiplier<T>(mode, eigenvalues[t], mu);
    if (half) x = LaneOps<T>::sqrt(x);
  }
  f[t] = x;
}

// factor entry (i, j) of block n = sum_k V(i, k) (f_k V(j, k)), summed in the CPU's order
// (cpu/lane_eigh.h, compose_spectral); `fallback` is the diagonal of I / (1 + mu^2) (or of its
// square root) as the calling op rounds it.
template <class T>
__global__ void compose_kernel(T* factor, const T* eigenvectors, const T* f, const int32_t* status,
                               const bool* keep_failed, int64_t N, int b, T fallback) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t entries = packed_size(b);
  if (t >= N * entries) return;
  const int64_t n = t % N, e = t / N;
  const bool ok = decomposed(status[n]);
  if (!ok && keep_failed != nullptr && keep_failed[n]) return;  // correct_: keeps its factor
  int i, j;
  packed_position(e, i, j);  // factor_layout.h
  T out = i == j ? fallback : T(0);
  if (ok) {
    const T* vi = eigenvectors + (n * b + i) * b;  // row i of V
    const T* vj = eigenvectors + (n * b + j) * b;
    const T* fn = f + n * b;
    out = vi[0] * (fn[0] * vj[0]);
    for (int k = 1; k < b; ++k) out += vi[k] * (fn[k] * vj[k]);
  }
  factor[tiled_offset(n, e, entries)] = out;
}

// y[n, k, c] = f_k sum_j V(j, k) g[n, j, c]: one thread per (n, k, c).
template <class T>
__global__ void project_kernel(const T* eigenvectors, const T* f, const int32_t* status, const T* G,
                               T* Y, int64_t N, int b, int64_t r) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * b * r) return;
  const int64_t n = t % N, c = t / (N * b);
  const int k = static_cast<int>((t / N) % b);
  T y = T(0);
  if (decomposed(status[n])) {
    const T* v = eigenvectors + n * b * b + k;  // column k of V
    const T* g = G + n * b * r + c;
    T acc = v[0] * g[0];
    for (int j = 1; j < b; ++j) acc += v[j * b] * g[j * r];
    y = f[n * b + k] * acc;
  }
  Y[(n * b + k) * r + c] = y;
}

// p[n, i, c] = sum_k V(i, k) y[n, k, c], or g / (1 + mu^2) for a block of status 2 or 3: one
// thread per (n, i, c).
template <class T>
__global__ void expand_kernel(const T* eigenvectors, const T* Y, const int32_t* status, const T* G, T* P,
                              int64_t N, int b, int64_t r, T mu2) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * b * r) return;
  const int64_t n = t % N, c = t / (N * b);
  const int i = static_cast<int>((t / N) % b);
  const int64_t at = (n * b + i) * r + c;
  T out;
  if (decomposed(status[n])) {
    const T* v = eigenvectors + (n * b + i) * b;  // row i of V
    const T* y = Y + n * b * r + c;
    out = v[0] * y[0];
    for (int k = 1; k < b; ++k) out += v[k] * y[k * r];
  } else {
    out = fallback_step(G[at], mu2);
  }
  P[at] = out;
}

}  // namespace hsc::cuda
