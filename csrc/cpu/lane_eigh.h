// The symmetric eigen-decomposition of CPU lane groups (docs/contract.md §2, spectral modes): cyclic
// Jacobi on W blocks at once, one block per SIMD lane (cpu/lanes.h), and the products the spectral
// modes build from it.
//
// Every lane runs the same rotation sequence (p, q) in the same order; a lane whose entry a_pq is
// already negligible takes the identity rotation (t = 0), which leaves its values bit for bit as
// they were. So lanes never mix, the result of a block does not depend on the blocks that share
// its group, and a rotation that no lane needs is skipped outright.
#pragma once

#include <cmath>

#include "../block_rules.h"
#include "../eigen_rules.h"
#include "lanes.h"

namespace hsc::cpu {

// Cyclic-by-rows Jacobi on the symmetric matrix whose upper triangle is in `a` (the lower triangle
// is neither read nor written), accumulating the transposed eigenvectors in `w` (w starts as the
// identity; row i of w ends as the eigenvector of eigenvalue a(i, i)). The rotation and the
// threshold are eigen_rules.h's: a lane rotates (p, q) only where |a_pq| > rotation_threshold,
// and has converged once a whole sweep found nothing above it. `frobenius` is ||A||_F per lane,
// which rotations preserve. Returns the converged lanes among `active`; `sweeps` gets the number
// of sweeps run.
template <class V, class Ops = LaneOps<V>>
inline typename Ops::mask jacobi_eigen(Block<V> a, Block<V> w, V frobenius, typename Ops::mask active,
                                       int max_sweeps, int& sweeps) {
  using T = typename Ops::scalar;
  using mask = typename Ops::mask;
  const int b = a.b;
  const V zero = Ops::splat(0);
  const V threshold = Ops::select(active, rotation_threshold<V, Ops>(frobenius, b),
                                  Ops::splat(std::numeric_limits<T>::infinity()));
  mask rotated = active;  // lanes that rotated in the last sweep: not converged yet
  sweeps = 0;
  while (sweeps < max_sweeps && Ops::any(rotated)) {
    ++sweeps;
    rotated = Ops::no_lanes();
    for (int p = 0; p + 1 < b; ++p) {
      for (int q = p + 1; q < b; ++q) {
        const V apq = a(p, q);
        const mask rotate = Ops::less(threshold, Ops::abs(apq));
        if (!Ops::any(rotate)) continue;
        rotated = Ops::or_(rotated, rotate);
        const V app = a(p, p), aqq = a(q, q);
        const Rotation<V, Ops> r = Rotation<V, Ops>::of(app, aqq, apq, rotate);
        const V shift = r.t * apq;
        a(p, p) = app - shift;
        a(q, q) = aqq + shift;
        a(p, q) = Ops::select(rotate, zero, apq);
        V* __restrict__ col_p = &a(0, p);
        V* __restrict__ col_q = &a(0, q);
        for (int k = 0; k < p; ++k) r.apply(col_p[k * a.ld], col_q[k * a.ld]);  // (k, p), (k, q)
        V* __restrict__ row_p = a.row(p);
        for (int k = p + 1; k < q; ++k) r.apply(row_p[k], col_q[k * a.ld]);      // (p, k), (k, q)
        V* __restrict__ row_q = a.row(q);
        for (int k = q + 1; k < b; ++k) r.apply(row_p[k], row_q[k]);             // rows p and q
        V* __restrict__ wp = w.row(p);
        V* __restrict__ wq = w.row(q);
        for (int k = 0; k < b; ++k) r.apply(wp[k], wq[k]);                       // rows of w = V^T
      }
    }
  }
  return Ops::andnot(active, rotated);
}

// out = w^T diag(f) w (lower triangle): M^-1 = sum_k f_k v_k v_k^T from the transposed eigenvectors
// w (rows) and the multipliers f; u is scratch (u = diag(f) w). Four columns at a time share each
// load of w's column i.
template <class V>
inline void compose_spectral(Block<V> w, const V* f, Block<V> u, Block<V> out) {
  const int b = w.b;
  for (int k = 0; k < b; ++k)
    for (int j = 0; j < b; ++j) u(k, j) = f[k] * w(k, j);
  for (int i = 0; i < b; ++i) {
    int j = 0;
    for (; j + 4 <= i + 1; j += 4) {
      V s0 = w(0, i) * u(0, j), s1 = w(0, i) * u(0, j + 1), s2 = w(0, i) * u(0, j + 2),
        s3 = w(0, i) * u(0, j + 3);
      for (int k = 1; k < b; ++k) {
        const V x = w(k, i);
        const V* __restrict__ uk = u.row(k) + j;
        s0 += x * uk[0];
        s1 += x * uk[1];
        s2 += x * uk[2];
        s3 += x * uk[3];
      }
      out(i, j) = s0;
      out(i, j + 1) = s1;
      out(i, j + 2) = s2;
      out(i, j + 3) = s3;
    }
    for (; j <= i; ++j) {
      V s = w(0, i) * u(0, j);
      for (int k = 1; k < b; ++k) s += w(k, i) * u(k, j);
      out(i, j) = s;
    }
  }
}

// p = w^T diag(f) w g: the spectral step of one gradient column (y is scratch).
template <class V>
inline void spectral_step(Block<V> w, const V* f, Column<V> g, Column<V> y, Column<V> p) {
  const int b = w.b;
  for (int k = 0; k < b; ++k) {
    const V* __restrict__ wk = w.row(k);
    V s = wk[0] * g[0];
    for (int j = 1; j < b; ++j) s += wk[j] * g[j];
    y[k] = f[k] * s;
  }
  for (int j = 0; j < b; ++j) p[j] = w(0, j) * y[0];
  for (int k = 1; k < b; ++k) {
    const V* __restrict__ wk = w.row(k);
    const V yk = y[k];
    for (int j = 0; j < b; ++j) p[j] += wk[j] * yk;
  }
}

}  // namespace hsc::cpu
