// The kernel of hsc::graft_ on CUDA (launched from graft_cuda.cu; mirrors cpu/graft_cpu.cpp): one
// thread block per segment sums the squares of G's and P's rows (float64, a fixed reduction tree,
// so the same every run), then rescales P's rows and reports whether they stayed finite. Needs
// nothing from torch or the CUDA runtime: tests/cuda_emulation runs it on the host.
#pragma once

#include <cstdint>

#include "../graft_rules.h"

#ifndef HSC_DYNAMIC_SHARED
#define HSC_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace hsc::cuda {

constexpr int kGraftThreads = 256;
// Dynamic shared memory of a launch: one (raw, new) pair per warp.
constexpr int kGraftSharedBytes = 2 * (kGraftThreads / 32) * sizeof(double);

template <class T>
__global__ void graft_kernel(T* P, const T* G, const int64_t* ends, bool* finite, int64_t N, int64_t b) {
  HSC_DYNAMIC_SHARED(smem);
  double* partial = reinterpret_cast<double*>(smem);
  const int64_t s = blockIdx.x;
  int64_t start, end;
  segment_rows(ends, s, N, &start, &end);
  T* p = P + start * b;
  const T* g = G + start * b;
  const int64_t n = (end - start) * b;
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  double raw = 0, now = 0;
  for (int64_t i = t; i < n; i += kGraftThreads) {
    raw += static_cast<double>(g[i]) * g[i];
    now += static_cast<double>(p[i]) * p[i];
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    raw += __shfl_xor_sync(0xffffffffu, raw, offset);
    now += __shfl_xor_sync(0xffffffffu, now, offset);
  }
  if (lane == 0) {
    partial[2 * warp] = raw;
    partial[2 * warp + 1] = now;
  }
  __syncthreads();
  raw = now = 0;
  for (int w = 0; w < kGraftThreads / 32; ++w) {  // every thread, in the same order
    raw += partial[2 * w];
    now += partial[2 * w + 1];
  }
  const double ratio = graft_ratio(raw, now);
  int non_finite = 0;
  for (int64_t i = t; i < n; i += kGraftThreads) {
    const T x = static_cast<T>(p[i] * ratio);
    p[i] = x;
    non_finite |= !(x - x == T(0));
  }
  non_finite = __syncthreads_or(non_finite);
  if (t == 0) finite[s] = non_finite == 0;
}

}  // namespace hsc::cuda
