// The symmetric eigen-decomposition of CPU lane groups from b = kTridiagonalFrom on (below):
// Householder reduction to tridiagonal form, then implicit QL with Wilkinson-type
// shifts (EISPACK's tred2/tql2 order of operations), on W blocks at once, one block per SIMD lane.
//
// Why: cyclic Jacobi costs about 1.5 b^3 rotated pairs a sweep and needs 6-10 sweeps; the
// reduction (about b^3 / 3 lane FMAs), forming Q^T (2 b^3 / 3) and the QL rotations (about
// 1.1-1.3 b^3 rotated pairs: 2-2.4 iterations an eigenvalue) are several times less work, and every
// inner loop runs along a contiguous row.
//
// Lanes never mix, as in jacobi_eigen: every data-dependent choice (reflect or not, where a lane's
// unreduced part ends, whether it iterates) is a per-lane mask, and a lane that has nothing to do
// takes the identity (a zero reflection, the rotation c = 1, s = 0, a zero shift), which leaves
// its values bit for bit as they were. So a block's result does not depend on its group.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "../block_rules.h"
#include "lanes.h"

namespace hsc::cpu {

// The block size from which the CPU's spectral modes take this route instead of cyclic Jacobi
// (lane_eigh.h). bench/eigh_routes.cpp (bench/results/cpu_eigh_notes.md): faster from about b = 6,
// 2.6-3.3x at b = 16, 4-6x at b = 32-64; up to b = 8 Jacobi stays, whose blocks take under 2 us
// and whose sweep limit means there what it means in the CUDA kernels.
constexpr int kTridiagonalFrom = 9;

// Reduces the symmetric `a` (its lower triangle is read and overwritten) to T = Q^T A Q with
// diagonal d and off-diagonal e (e[i] couples i and i + 1; e[b - 1] = 0), and writes qt = Q^T
// (row-major; qt's rows are later rotated into eigenvectors). Reflection k is H = I - tau v v^T
// with v[0] = 1 and H x = beta e_0 (LAPACK's dlarfg) for x column k below the diagonal; a lane
// whose x is already reduced (sum of squares below its first entry 0) takes tau = 0. v is kept in
// column k of `a`, its factor in tau[k]; `scratch` holds 4 b lane values.
//
// The trailing block's update A22 <- A22 - v w^T - w v^T (w = p - (tau/2)(p^T v) v, p = tau A22 v)
// is deferred to the next step, whose one pass over the lower triangle both applies it and forms
// the next product: each entry is loaded and stored once a step, and symmetry halves the work.
template <class V, class Ops = LaneOps<V>>
inline void householder_tridiagonal(Block<V> a, V* d, V* e, V* tau, V* scratch, Block<V> qt) {
  using mask = typename Ops::mask;
  const int b = a.b;
  const V zero = Ops::splat(0), one = Ops::splat(1), half = Ops::splat(0.5);
  V* vp = scratch;      // the pending update: a_ij -= vp_i wp_j + wp_i vp_j, on indices >= k
  V* wp = vp + b;
  V* v = wp + b;        // this step's reflection
  V* p = v + b;         // this step's product, then w
  for (int i = 0; i < b; ++i) vp[i] = wp[i] = zero;
  for (int k = 0; k + 2 < b; ++k) {
    const V vk = vp[k], wk = wp[k];
    d[k] = a(k, k) - (vk * wk + wk * vk);
    V sigma = zero;
    for (int i = k + 1; i < b; ++i) {
      const V x = a(i, k) - (vp[i] * wk + wp[i] * vk);
      v[i] = x;
      if (i > k + 1) sigma += x * x;
    }
    const V alpha = v[k + 1];
    const mask reflect = Ops::less(zero, sigma);
    const V norm = Ops::sqrt(alpha * alpha + sigma);
    const V beta = Ops::select(Ops::less(alpha, zero), norm, -norm);  // -sign(alpha) ||x||
    const V t = Ops::select(reflect, (beta - alpha) / beta, zero);
    const V inverse = one / Ops::select(reflect, alpha - beta, one);  // no cancellation: opposite signs
    e[k] = Ops::select(reflect, beta, alpha);
    tau[k] = t;
    v[k + 1] = one;
    for (int i = k + 2; i < b; ++i) v[i] = Ops::select(reflect, v[i] * inverse, zero);
    for (int i = k + 1; i < b; ++i) a(i, k) = v[i];
    // One pass over the lower triangle of [k + 1, b): the pending update, then p = A22 v.
    for (int i = k + 1; i < b; ++i) p[i] = zero;
    for (int i = k + 1; i < b; ++i) {
      V* __restrict__ ai = a.row(i);
      const V vpi = vp[i], wpi = wp[i], vi = v[i];
      V s0 = zero, s1 = zero;
      int j = k + 1;
      for (; j + 2 <= i; j += 2) {
        const V x0 = ai[j] - (vpi * wp[j] + wpi * vp[j]);
        const V x1 = ai[j + 1] - (vpi * wp[j + 1] + wpi * vp[j + 1]);
        ai[j] = x0;
        ai[j + 1] = x1;
        s0 += x0 * v[j];
        s1 += x1 * v[j + 1];
        p[j] += x0 * vi;
        p[j + 1] += x1 * vi;
      }
      if (j < i) {
        const V x0 = ai[j] - (vpi * wp[j] + wpi * vp[j]);
        ai[j] = x0;
        s0 += x0 * v[j];
        p[j] += x0 * vi;
      }
      const V xii = ai[i] - (vpi * wpi + wpi * vpi);
      ai[i] = xii;
      p[i] += (s0 + s1) + xii * vi;
    }
    V pv = zero;
    for (int i = k + 1; i < b; ++i) {
      p[i] = t * p[i];
      pv += p[i] * v[i];
    }
    const V kappa = half * t * pv;
    for (int i = k + 1; i < b; ++i) p[i] -= kappa * v[i];  // p is w now
    std::swap(vp, v);
    std::swap(wp, p);
  }
  // The last pending update, on the trailing 2 x 2 (or the whole block for b <= 2, where there is none).
  const int k = b > 2 ? b - 2 : 0;
  for (int i = k; i < b; ++i)
    for (int j = k; j <= i; ++j) a(i, j) -= vp[i] * wp[j] + wp[i] * vp[j];
  if (b >= 2) {
    d[b - 2] = a(b - 2, b - 2);
    e[b - 2] = a(b - 1, b - 2);
  }
  d[b - 1] = a(b - 1, b - 1);
  e[b - 1] = zero;
  // qt = Q^T = H_{b-3} ... H_1 H_0, accumulated backwards (qt <- qt H_k for k = b-3 .. 0), so that
  // qt differs from the identity only in its trailing block [k + 1, b) x [k + 1, b) at step k.
  for (int i = 0; i < b; ++i)
    for (int j = 0; j < b; ++j) qt(i, j) = Ops::splat(i == j ? 1 : 0);
  V* u = scratch;  // column k of a (the reflection), contiguous
  for (int k2 = b - 3; k2 >= 0; --k2) {
    for (int j = k2 + 1; j < b; ++j) u[j] = a(j, k2);
    const V t = tau[k2];
    for (int r = k2 + 1; r < b; ++r) {
      V* __restrict__ q = qt.row(r);
      V s0 = q[k2 + 1] * u[k2 + 1], s1 = zero;
      int j = k2 + 2;
      for (; j + 2 <= b; j += 2) {
        s0 += q[j] * u[j];
        s1 += q[j + 1] * u[j + 1];
      }
      if (j < b) s0 += q[j] * u[j];
      const V scaled = t * (s0 + s1);
      for (int j2 = k2 + 1; j2 < b; ++j2) q[j2] -= scaled * u[j2];
    }
  }
}

// Applies the rotations of one QL chase to the rows of qt: for i = top - 1 down to l, rows i and
// i + 1 become (c x - s y, s x + c y) with (c, s) = (c_[i], s_[i]), x row i and y row i + 1
// (tql2's column rotation of V = Q, on V^T). Row i + 1's new value is final once rotation i is
// done, so each chunk of columns carries one row in registers down the whole chase: one load and
// one store a rotated pair.
template <class V>
inline void rotate_rows(Block<V> qt, const V* c_, const V* s_, int l, int top) {
  const int b = qt.b;
  constexpr int J = 4;
  int j0 = 0;
  for (; j0 + J <= b; j0 += J) {
    V carry[J];
    for (int u = 0; u < J; ++u) carry[u] = qt(top, j0 + u);
    for (int i = top - 1; i >= l; --i) {
      const V c = c_[i], s = s_[i];
      V* __restrict__ x = qt.row(i) + j0;
      V* __restrict__ y = qt.row(i + 1) + j0;
      for (int u = 0; u < J; ++u) {
        const V xi = x[u];
        y[u] = s * xi + c * carry[u];
        carry[u] = c * xi - s * carry[u];
      }
    }
    for (int u = 0; u < J; ++u) qt(l, j0 + u) = carry[u];
  }
  for (; j0 < b; ++j0) {
    V carry = qt(top, j0);
    for (int i = top - 1; i >= l; --i) {
      const V xi = qt(i, j0);
      qt(i + 1, j0) = s_[i] * xi + c_[i] * carry;
      carry = c_[i] * xi - s_[i] * carry;
    }
    qt(l, j0) = carry;
  }
}

// Implicit QL on the tridiagonal (d, e) of householder_tridiagonal, rotating qt's rows along
// (tql2, as in JAMA): the eigenvalues end in d (unsorted), eigenvector i in row i of qt. An
// off-diagonal e[m] is negligible once |e[m]| <= eps max_i(|d_i| + |e_i|) (the norm of T, so each
// eigenvalue is within about eps ||S|| of T's). Every eigenvalue may take up to `max_iterations`
// QL iterations; a lane that needs more stops there (status 3) with its last iterate: qt still
// orthogonal, d the diagonal of Q^T S Q (the Rayleigh quotients of qt's rows). c_, s_ are scratch
// (b each). Returns the lanes of `active` that converged; `iterations` gets the most iterations
// any eigenvalue took.
//
// Each lane works on its own eigenvalue l (tql2 deflates from the top) and its own unreduced end
// m: one pass chases every lane's bulge from its m - 1 up to its l at once, so a lane that has
// converged at l goes on to l + 1 while another still iterates (waiting for the slowest lane at
// every l made a third of the rotations identities).
template <class V, class Ops = LaneOps<V>>
inline typename Ops::mask implicit_ql(V* d, V* e, Block<V> qt, V* c_, V* s_, typename Ops::mask active,
                                      int max_iterations, int& iterations) {
  using T = typename Ops::scalar;
  using mask = typename Ops::mask;
  constexpr int W = Ops::W;
  const int b = qt.b;
  const V zero = Ops::splat(0), one = Ops::splat(1), two = Ops::splat(2);
  V norm = zero;
  for (int i = 0; i < b; ++i) norm = Ops::max(norm, Ops::abs(d[i]) + Ops::abs(e[i]));
  const V tolerance = Ops::splat(std::numeric_limits<T>::epsilon()) * norm;
  V shift = zero;  // tql2's f: the shifts so far, taken out of d[l + 1 ..]
  int l[W], taken[W];
  for (int q = 0; q < W; ++q) {
    l[q] = active[q] ? 0 : b;
    taken[q] = 0;
  }
  mask failed = Ops::no_lanes();
  iterations = 0;
  for (;;) {
    // Per lane: eigenvalues whose e[l] is negligible are done (d[l] gets the shift back); then
    // the lane's next iteration at l, up to its m (e[b - 1] = 0 ends every search).
    mask going = Ops::no_lanes();
    V lv = zero, mv = zero, dl0 = zero, dl1 = zero, el = one, el1 = zero;
    int lo = b, top = 0;
    for (int q = 0; q < W; ++q) {
      int& k = l[q];
      while (k < b && !(tolerance[q] < std::abs(e[k][q]))) {
        d[k][q] += shift[q];
        ++k;
        taken[q] = 0;
      }
      if (k == b) continue;
      if (taken[q] == max_iterations) {  // the last iterate: every d[i] gets the shift back
        failed[q] = -1;
        for (int i = k; i < b; ++i) d[i][q] += shift[q];
        k = b;
        continue;
      }
      iterations = std::max(iterations, ++taken[q]);
      int m = k + 1;
      while (tolerance[q] < std::abs(e[m][q])) ++m;
      going[q] = -1;
      lv[q] = T(k);
      mv[q] = T(m);
      dl0[q] = d[k][q];
      dl1[q] = d[k + 1][q];
      el[q] = e[k][q];
      el1[q] = e[k + 1][q];
      lo = std::min(lo, k);
      top = std::max(top, m);
    }
    if (!Ops::any(going)) break;
    // The shift from the leading 2 x 2 at l (tql2): d[l], d[l + 1] set up for the chase, d[l + 2 ..]
    // moved by h.
    const V q0 = (dl1 - dl0) / (two * el);
    V r = Ops::sqrt(q0 * q0 + one);
    r = Ops::select(Ops::less(q0, zero), -r, r);
    const V new_l = el / (q0 + r), new_l1 = el * (q0 + r);
    const V h = Ops::select(going, dl0 - new_l, zero);
    for (int q = 0; q < W; ++q) {
      if (!going[q]) continue;
      d[l[q]][q] = new_l[q];
      d[l[q] + 1][q] = new_l1[q];
    }
    for (int i = lo + 2; i < b; ++i) d[i] -= Ops::select(Ops::less(lv + one, Ops::splat(T(i))), h, zero);
    shift += h;
    // The chase, each lane from its m - 1 up to its l; c_, s_ get the identity outside.
    V p = zero, c = one, c2 = one, c3 = one, s = zero, s2 = zero;
    for (int i = top - 1; i >= lo; --i) {
      const V index = Ops::splat(T(i));
      const mask inside = Ops::andnot(Ops::and_(going, Ops::less(index, mv)), Ops::less(index, lv));
      p = Ops::select(Ops::andnot(inside, Ops::less(index, mv - one)), d[i + 1], p);  // joins: p = d[m]
      const V ei = e[i];
      const V g = c * ei, hh = c * p;
      const V rr = Ops::sqrt(p * p + ei * ei);
      const V rs = Ops::select(inside, rr, one);
      const V sn = ei / rs, cn = p / rs;
      e[i + 1] = Ops::select(inside, s * rr, e[i + 1]);
      const V pn = cn * d[i] - sn * g;
      d[i + 1] = Ops::select(inside, hh + sn * (cn * g + sn * d[i]), d[i + 1]);
      c3 = Ops::select(inside, c2, c3);
      c2 = Ops::select(inside, c, c2);
      s2 = Ops::select(inside, s, s2);
      c = Ops::select(inside, cn, c);
      s = Ops::select(inside, sn, s);
      p = Ops::select(inside, pn, p);
      c_[i] = Ops::select(inside, c, one);
      s_[i] = Ops::select(inside, s, zero);
    }
    rotate_rows(qt, c_, s_, lo, top);
    const V pl = -s * s2 * c3 * el1 * el / Ops::select(going, new_l1, one);
    const V new_e = s * pl, new_d = c * pl;
    for (int q = 0; q < W; ++q) {
      if (!going[q]) continue;
      e[l[q]][q] = new_e[q];
      d[l[q]][q] = new_d[q];
    }
  }
  return Ops::andnot(active, failed);
}

}  // namespace hsc::cpu
