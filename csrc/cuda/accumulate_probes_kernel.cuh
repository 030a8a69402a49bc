// The kernel of hsc::accumulate_probes on CUDA (launched from accumulate_probes_cuda.cu): one
// thread block per diagonal block k. A first pass over the block's entries decides whether the
// estimate is finite; the second recomputes each entry and folds it into the state (re-reading
// the probe results, which the first pass left in L2, instead of holding b^2 values on chip).
// Needs nothing from torch or the CUDA runtime: tests/cuda_emulation runs it on the host.
#pragma once

#include <cstdint>

#include "../accumulate_probes.h"

namespace hsc::cuda {

constexpr int kThreads = 256;

template <class T>
__global__ void accumulate_probes_kernel(T* state, const T* hvps, const T* signs, const bool* mask,
                                         bool* accepted, int64_t S, int64_t N, int64_t b, T ema,
                                         bool first) {
  const int64_t k = blockIdx.x;
  const bool* real = mask + k * b;
  int non_finite = 0;
  for (int64_t e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int64_t i = e / b, j = e % b;
    if (real[i] && real[j] && !LaneOps<T>::finite(probe_entry(hvps, signs, S, N, b, k, i, j)))
      non_finite = 1;
  }
  T* st = state + k * b * b;
  int stale = 0;  // the state holds no finite estimate yet: start afresh, as on the first refresh
  for (int64_t e = threadIdx.x; e < b * b; e += blockDim.x)
    if (!LaneOps<T>::finite(st[e])) stale = 1;
  const bool finite = __syncthreads_or(non_finite) == 0;
  const bool fresh = first || __syncthreads_or(stale) != 0;
  if (threadIdx.x == 0) accepted[k] = finite;
  // A non-finite estimate leaves a finite state as it was; with nothing to keep it is written.
  if (!finite && !fresh) return;
  for (int64_t e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int64_t i = e / b, j = e % b;
    st[e] = folded_entry(st[e], probe_entry(hvps, signs, S, N, b, k, i, j), real[i] && real[j],
                         i == j, ema, fresh);
  }
}

}  // namespace hsc::cuda
