// The kernel of hsc::fold_estimate_ on CUDA (launched from fold_estimate_cuda.cu): one thread
// block per diagonal block folds the assembled estimate into the state (fold_block.cuh). Needs
// nothing from torch or the CUDA runtime: tests/cuda_emulation runs it on the host.
#pragma once

#include <cstdint>

#include "fold_block.cuh"

namespace hsc::cuda {

template <class T>
__global__ void fold_estimate_kernel(T* state, const T* estimate, const bool* mask, bool* accepted,
                                     int64_t b, T ema, bool first) {
  const int64_t k = blockIdx.x;
  const T* est = estimate + k * b * b;
  fold_block(state + k * b * b, mask + k * b, b, ema, first, accepted + k,
             [&](int64_t i, int64_t j) { return est[i * b + j]; });
}

}  // namespace hsc::cuda
