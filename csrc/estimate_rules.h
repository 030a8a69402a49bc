// The rules of the block curvature estimate (docs/contract.md §4), written once for every backend
// and both ops that write the estimate: accumulate_probes (assembles sign-coded probe results and
// folds them in) and fold_estimate_ (folds blocks assembled elsewhere: the exact estimator, or the
// rank mean of data-parallel estimates).
#pragma once

#include <cstdint>

#include "block_rules.h"

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

// What a refresh does to one block's state, given whether the state holds a finite estimate and
// whether the new estimate is finite (on its real entries):
//   restart: nothing to keep (the first refresh, or a state that is not finite): the state becomes
//            the new estimate, finite or not (a non-finite one is reported by correct as status 2
//            until a finite estimate arrives);
//   average: state = ema * state + (1 - ema) * estimate;
//   keep:    a non-finite estimate leaves a finite state as it was.
enum class Fold : int { kRestart, kAverage, kKeep };

HSC_HD Fold fold_rule(bool first, bool state_finite, bool estimate_finite) {
  if (first || !state_finite) return Fold::kRestart;
  return estimate_finite ? Fold::kAverage : Fold::kKeep;
}

// The new state entry under rule `fold` (never kKeep). Padding slots (`real` false) are exactly
// the identity's entries, whatever the estimate and ema (docs/contract.md §1).
template <class T>
HSC_HD T folded_entry(T old, T estimate, bool real, bool diagonal, T ema, Fold fold) {
  if (!real) return diagonal ? T(1) : T(0);
  return fold == Fold::kRestart ? estimate : ema * old + (T(1) - ema) * estimate;
}

}  // namespace hsc
