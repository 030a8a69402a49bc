// The per-block fold of the curvature estimate on CUDA (estimate_rules.h), shared by the kernels
// of accumulate_probes and fold_estimate_: one thread block per diagonal block. A first pass over
// the block's entries decides whether the new estimate and the state are finite (two
// __syncthreads_or); the second recomputes each entry and folds it in (recomputing, or re-reading
// from L2, instead of holding b^2 values on chip). Needs nothing from torch or the CUDA runtime:
// tests/cuda_emulation runs it on the host.
#pragma once

#include <cstdint>

#include "../estimate_rules.h"

namespace hsc::cuda {

constexpr int kFoldThreads = 256;

// Folds the new estimate of one block, entry(i, j), into its state `st` ([b, b], row-major);
// `real` marks its real slots, and accepted gets whether the estimate was finite.
template <class T, class Entry>
__device__ void fold_block(T* st, const bool* real, int64_t b, T ema, bool first, bool* accepted,
                           Entry entry) {
  int non_finite = 0, stale = 0;
  for (int64_t e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int64_t i = e / b, j = e % b;
    if (real[i] && real[j] && !LaneOps<T>::finite(entry(i, j))) non_finite = 1;
    if (!LaneOps<T>::finite(st[e])) stale = 1;
  }
  const bool finite = __syncthreads_or(non_finite) == 0;
  const bool state_finite = __syncthreads_or(stale) == 0;
  if (threadIdx.x == 0) *accepted = finite;
  const Fold rule = fold_rule(first, state_finite, finite);
  if (rule == Fold::kKeep) return;
  for (int64_t e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int64_t i = e / b, j = e % b;
    st[e] = folded_entry(st[e], entry(i, j), real[i] && real[j], i == j, ema, rule);
  }
}

}  // namespace hsc::cuda
