// The kernel of hsc::solve on CUDA (launched from solve_cuda.cu): P = M^{-1} G per block from the
// packed, tiled factor (factor_layout.h). One thread per entry (block n, row i, column c) of P, with
// n fastest: the threads of a warp read entry (i, j) of consecutive blocks, which the tiled layout
// holds side by side, so every factor load is coalesced. Needs nothing from torch or the CUDA
// runtime: tests/cuda_emulation runs it on the host.
#pragma once

#include <cstdint>

#include "../factor_layout.h"

namespace hsc::cuda {

constexpr int kSolveThreads = 256;

template <class T>
__global__ void solve_kernel(const T* factor, const T* G, T* P, int64_t N, int b, int64_t r) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * b * r) return;
  const int64_t n = t % N, c = t / (N * b);
  const int i = static_cast<int>((t / N) % b);
  const int64_t entries = packed_size(b);
  T acc = T(0);
  for (int j = 0; j < b; ++j) {
    const int hi = i > j ? i : j, lo = i > j ? j : i;  // M^{-1} is symmetric: (i, j) = (j, i)
    acc += factor[tiled_offset(n, packed_index(hi, lo), entries)] * G[(n * b + j) * r + c];
  }
  P[(n * b + i) * r + c] = acc;
}

}  // namespace hsc::cuda
