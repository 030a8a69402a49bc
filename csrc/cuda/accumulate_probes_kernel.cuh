// The kernel of hsc::accumulate_probes on CUDA (launched from accumulate_probes_cuda.cu): one
// thread block per diagonal block k assembles its probe estimate (probe_entry) and folds it into
// the state (fold_block.cuh). Needs nothing from torch or the CUDA runtime: tests/cuda_emulation
// runs it on the host.
#pragma once

#include <cstdint>

#include "../estimate_rules.h"
#include "fold_block.cuh"

namespace hsc::cuda {

template <class T>
__global__ void accumulate_probes_kernel(T* state, const T* hvps, const T* signs, const bool* mask,
                                         bool* accepted, int64_t S, int64_t N, int64_t b, T ema,
                                         bool first) {
  const int64_t k = blockIdx.x;
  fold_block(state + k * b * b, mask + k * b, b, ema, first, accepted + k,
             [&](int64_t i, int64_t j) { return probe_entry(hvps, signs, S, N, b, k, i, j); });
}

}  // namespace hsc::cuda
