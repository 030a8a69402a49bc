// Per-block arithmetic of the probe estimator's assembly (SPEC §4), shared by every backend.
#pragma once

#include <cstdint>

#include "block_math.h"

namespace hsc {

// The symmetrised estimate of diagonal block k from `S` sign draws:
//   E_ij = (1/S) sum_s signs[s, k] (U[s, j, k, i] + U[s, i, k, j]) / 2,
// where U = hvps is [S, b, N, b] (draw, probe j, block, row). Entries are stored row-major in
// `estimate`. Returns whether every entry at real (mask) positions is finite.
template <class T>
HSC_HD bool probe_block_estimate(const T* hvps, const T* signs, const bool* mask, T* estimate,
                                 int64_t S, int64_t N, int64_t b, int64_t k) {
  bool finite = true;
  const T half_mean = T(0.5) / static_cast<T>(S);
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      T sum = 0;
      for (int64_t s = 0; s < S; ++s) {
        const T* u = hvps + s * b * N * b;
        sum += signs[s * N + k] * (u[(j * N + k) * b + i] + u[(i * N + k) * b + j]);
      }
      const T e = sum * half_mean;
      estimate[i * b + j] = e;
      estimate[j * b + i] = e;
      if (mask[k * b + i] && mask[k * b + j]) finite = finite && (e - e == T(0));
    }
  }
  return finite;
}

// state = estimate (first refresh) or ema * state + (1 - ema) * estimate, with the padding rows and
// columns of the block (mask false) held at the identity (SPEC §1).
template <class T>
HSC_HD void fold_block_estimate(T* state, const T* estimate, const bool* mask, int64_t b, T ema,
                                bool first) {
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t j = 0; j < b; ++j) {
      const T v = (mask[i] && mask[j]) ? estimate[i * b + j] : (i == j ? T(1) : T(0));
      state[i * b + j] = first ? v : ema * state[i * b + j] + (T(1) - ema) * v;
    }
  }
}

}  // namespace hsc
