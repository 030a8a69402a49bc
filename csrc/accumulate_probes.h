// Per-entry arithmetic of the probe estimator's assembly (SPEC §4), shared by every backend.
#pragma once

#include <cstdint>

#include "block_math.h"

namespace hsc {

// Entry (i, j) of the symmetrised estimate of diagonal block k from S sign draws:
//   E_ij = (1/S) sum_s signs[s, k] (U[s, j, k, i] + U[s, i, k, j]) / 2,
// where U = hvps is [S, b, N, b] (draw, probe j, block, row).
template <class T>
HSC_HD T probe_entry(const T* hvps, const T* signs, int64_t S, int64_t N, int64_t b, int64_t k,
                     int64_t i, int64_t j) {
  T sum = 0;
  for (int64_t s = 0; s < S; ++s) {
    const T* u = hvps + s * b * N * b;
    sum += signs[s * N + k] * (u[(j * N + k) * b + i] + u[(i * N + k) * b + j]);
  }
  return sum * (T(0.5) / static_cast<T>(S));
}

// The new state entry: the estimate on the first refresh, else ema * old + (1 - ema) * estimate;
// padding rows and columns (`real` false) are held at the identity (SPEC §1).
template <class T>
HSC_HD T folded_entry(T old, T estimate, bool real, bool diagonal, T ema, bool first) {
  const T v = real ? estimate : (diagonal ? T(1) : T(0));
  return first ? v : ema * old + (T(1) - ema) * v;
}

}  // namespace hsc
