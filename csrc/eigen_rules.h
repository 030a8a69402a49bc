// The rules of the symmetric eigen-decomposition (hsc::eigh and the spectral modes,
// docs/contract.md §2) that every backend must agree on: the per-block power-of-two scaling, the
// Jacobi rotation of one pair (p, q), and when a rotation is needed. Written once for a lane
// value V (a SIMD vector of W blocks on the CPU, a plain float or double on CUDA).
#pragma once

#include <cmath>
#include <limits>

#include "block_rules.h"

namespace hsc {

// The exponent e of the power of two 2^e that brings a block's largest |entry| into [1, 2)
// (0 for a zero or non-finite block), clamped so that 2^e and 2^-e are both normal numbers:
// Jacobi's formulas then neither overflow nor underflow, and scaling back is exact.
template <class T>
HSC_HD int scaling_exponent(T max_abs) {
  int e = max_abs > T(0) && max_abs <= std::numeric_limits<T>::max() ? -std::ilogb(max_abs) : 0;
  e = e < std::numeric_limits<T>::max_exponent - 2 ? e : std::numeric_limits<T>::max_exponent - 2;
  return e > std::numeric_limits<T>::min_exponent ? e : std::numeric_limits<T>::min_exponent;
}

// The threshold of a block's rotations: |a_pq| above eps ||A||_F / b is rotated away; a block has
// converged once a whole sweep found nothing above it, so that ||offdiag(A)||_F <= eps ||A||_F
// and every diagonal entry is within that of an eigenvalue (Weyl).
template <class V, class Ops = LaneOps<V>>
HSC_HD V rotation_threshold(V frobenius, int b) {
  using T = typename Ops::scalar;
  return frobenius * Ops::splat(std::numeric_limits<T>::epsilon() / T(b));
}

// The Jacobi rotation that zeroes a_pq (Rutishauser's form; Golub & Van Loan 8.5):
// theta = (a_qq - a_pp) / (2 a_pq), t = sign(theta) / (|theta| + sqrt(theta^2 + 1)),
// c = 1 / sqrt(t^2 + 1), s = t c, tau = s / (1 + c). Where `rotate` is false it is the identity
// (t = s = tau = 0, c = 1), which leaves every entry bit for bit as it was.
template <class V, class Ops = LaneOps<V>>
struct Rotation {
  V t, s, tau;

  HSC_HD static Rotation of(V app, V aqq, V apq, typename Ops::mask rotate) {
    const V zero = Ops::splat(0), one = Ops::splat(1), half = Ops::splat(0.5);
    const V theta = half * (aqq - app) / Ops::select(rotate, apq, one);
    V t = one / (Ops::abs(theta) + Ops::sqrt(theta * theta + one));
    t = Ops::select(rotate, Ops::select(Ops::less(theta, zero), -t, t), zero);
    const V c = one / Ops::sqrt(t * t + one);
    const V s = t * c;
    return Rotation{t, s, s / (one + c)};
  }

  // (x, y) <- (x - s (y + tau x), y + s (x - tau y)): one pair of entries of rows/columns p, q.
  HSC_HD void apply(V& x, V& y) const {
    const V x0 = x, y0 = y;
    x = x0 - s * (y0 + tau * x0);
    y = y0 + s * (x0 - tau * y0);
  }
};

}  // namespace hsc
