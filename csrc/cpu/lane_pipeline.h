// The corrected preconditioner's factorisations on CPU lane groups (docs/contract.md §2): every
// function works on lane values V (cpu/lanes.h: one SIMD vector holds the same entry of W blocks),
// so one call factorises W blocks at once with no branches that depend on the data.
//
// Lanes never mix: a bad block cannot change another block's result. Writes are masked with
// `active`, so lanes that have finished keep their values while the others retry.
#pragma once

#include "../block_rules.h"
#include "lanes.h"

namespace hsc::cpu {

// In-place lower Cholesky factorisation of the lower triangle of `a` (the upper triangle is not
// read). Writes only lanes in `active`; returns the active lanes whose every pivot was usable
// (finite and > min_pivot).
// Dot-product (left-looking) form, four rows at a time so four independent sums share each load
// of row j.
template <class V, class Ops = LaneOps<V>>
HSC_HD typename Ops::mask cholesky_lower(Block<V> a, typename Ops::mask active, V min_pivot) {
  using mask = typename Ops::mask;
  const int b = a.b;
  const V one = Ops::splat(1);
  mask ok = active;
  for (int j = 0; j < b; ++j) {
    const V* __restrict__ rj = a.row(j);
    V d = rj[j];
    for (int k = 0; k < j; ++k) d -= rj[k] * rj[k];
    const mask pivot_ok = Ops::usable_pivot(d, min_pivot);
    ok = Ops::and_(ok, pivot_ok);
    if (!Ops::any(ok)) return ok;  // every active lane has failed: nothing left to compute
    const V r = Ops::sqrt(Ops::select(pivot_ok, d, one));
    const V inv = one / r;
    a(j, j) = Ops::select(active, r, a(j, j));
    int i = j + 1;
    for (; i + 4 <= b; i += 4) {
      V* __restrict__ r0 = a.row(i);
      V* __restrict__ r1 = r0 + a.ld;
      V* __restrict__ r2 = r1 + a.ld;
      V* __restrict__ r3 = r2 + a.ld;
      V s0 = r0[j], s1 = r1[j], s2 = r2[j], s3 = r3[j];
      for (int k = 0; k < j; ++k) {
        const V x = rj[k];
        s0 -= r0[k] * x;
        s1 -= r1[k] * x;
        s2 -= r2[k] * x;
        s3 -= r3[k] * x;
      }
      r0[j] = Ops::select(active, s0 * inv, r0[j]);
      r1[j] = Ops::select(active, s1 * inv, r1[j]);
      r2[j] = Ops::select(active, s2 * inv, r2[j]);
      r3[j] = Ops::select(active, s3 * inv, r3[j]);
    }
    for (; i < b; ++i) {
      V* __restrict__ ri = a.row(i);
      V s = ri[j];
      for (int k = 0; k < j; ++k) s -= ri[k] * rj[k];
      ri[j] = Ops::select(active, s * inv, ri[j]);
    }
  }
  return ok;
}

// w = l^{-1} for lower-triangular l (lower triangles only; w's upper triangle is not written).
// Column j of w is the forward substitution of e_j; four columns at a time so the four sums share
// each load of row i of l.
template <class V>
HSC_HD void invert_lower(Block<V> l, Block<V> w) {
  const int b = l.b;
  const V one = LaneOps<V>::splat(1);
  for (int i = 0; i < b; ++i) w(i, i) = one / l(i, i);
  int j = 0;
  for (; j + 4 <= b; j += 4) {
    // The 4x4 diagonal triangle of this column block first.
    for (int t = 1; t < 4; ++t) {
      const int i = j + t;
      for (int c = 0; c < t; ++c) {
        V s = l(i, j + c) * w(j + c, j + c);
        for (int k = j + c + 1; k < i; ++k) s += l(i, k) * w(k, j + c);
        w(i, j + c) = -s * w(i, i);
      }
    }
    for (int i = j + 4; i < b; ++i) {
      const V* __restrict__ li = l.row(i);
      // Sums over k in [j + c, i): the terms with k < j + 4 form a small triangle.
      V s0 = li[j] * w(j, j);
      V s1 = li[j + 1] * w(j + 1, j + 1);
      V s2 = li[j + 2] * w(j + 2, j + 2);
      V s3 = li[j + 3] * w(j + 3, j + 3);
      s0 += li[j + 1] * w(j + 1, j) + li[j + 2] * w(j + 2, j) + li[j + 3] * w(j + 3, j);
      s1 += li[j + 2] * w(j + 2, j + 1) + li[j + 3] * w(j + 3, j + 1);
      s2 += li[j + 3] * w(j + 3, j + 2);
      const V* __restrict__ wk = w.row(j + 4) + j;
      for (int k = j + 4; k < i; ++k, wk += w.ld) {
        const V x = li[k];
        s0 += x * wk[0];
        s1 += x * wk[1];
        s2 += x * wk[2];
        s3 += x * wk[3];
      }
      V* __restrict__ wi = w.row(i);
      const V d = wi[i];
      wi[j] = -s0 * d;
      wi[j + 1] = -s1 * d;
      wi[j + 2] = -s2 * d;
      wi[j + 3] = -s3 * d;
    }
  }
  for (; j < b; ++j) {
    for (int i = j + 1; i < b; ++i) {
      V s = l(i, j) * w(j, j);
      for (int k = j + 1; k < i; ++k) s += l(i, k) * w(k, j);
      w(i, j) = -s * w(i, i);
    }
  }
}

// out = w^T w for lower-triangular w; writes out's lower triangle, and its upper triangle too when
// `full` (the explicit factor is returned whole).
template <class V>
HSC_HD void lower_gram(Block<V> w, Block<V> out, bool full) {
  const int b = w.b;
  for (int i = 0; i < b; ++i) {
    // out(i, j) = sum_{k >= i} w(k, i) w(k, j) for j <= i: rows k of w, four columns j at a time.
    int j = 0;
    for (; j + 4 <= i + 1; j += 4) {
      const V* __restrict__ wk = w.row(i);
      V s0 = wk[i] * wk[j], s1 = wk[i] * wk[j + 1], s2 = wk[i] * wk[j + 2], s3 = wk[i] * wk[j + 3];
      for (int k = i + 1; k < b; ++k) {
        wk += w.ld;
        const V x = wk[i];
        s0 += x * wk[j];
        s1 += x * wk[j + 1];
        s2 += x * wk[j + 2];
        s3 += x * wk[j + 3];
      }
      V* __restrict__ oi = out.row(i);
      oi[j] = s0;
      oi[j + 1] = s1;
      oi[j + 2] = s2;
      oi[j + 3] = s3;
    }
    for (; j <= i; ++j) {
      const V* __restrict__ wk = w.row(i);
      V s = wk[i] * wk[j];
      for (int k = i + 1; k < b; ++k) {
        wk += w.ld;
        s += wk[i] * wk[j];
      }
      out(i, j) = s;
    }
  }
  if (full)
    for (int i = 0; i < b; ++i)
      for (int j = i + 1; j < b; ++j) out(i, j) = out(j, i);
}

// out = s^2 + mu2 I (lower triangle) for a full symmetric s: (s s)_ij = row i . row j.
template <class V>
HSC_HD void square_plus_shift(Block<V> s, V mu2, Block<V> out) {
  const int b = s.b;
  for (int i = 0; i < b; ++i) {
    const V* __restrict__ si = s.row(i);
    V* __restrict__ oi = out.row(i);
    int j = 0;
    for (; j + 4 <= i + 1; j += 4) {
      const V* __restrict__ r0 = s.row(j);
      const V* __restrict__ r1 = r0 + s.ld;
      const V* __restrict__ r2 = r1 + s.ld;
      const V* __restrict__ r3 = r2 + s.ld;
      V s0 = si[0] * r0[0], s1 = si[0] * r1[0], s2 = si[0] * r2[0], s3 = si[0] * r3[0];
      for (int k = 1; k < b; ++k) {
        const V x = si[k];
        s0 += x * r0[k];
        s1 += x * r1[k];
        s2 += x * r2[k];
        s3 += x * r3[k];
      }
      oi[j] = s0;
      oi[j + 1] = s1;
      oi[j + 2] = s2;
      oi[j + 3] = s3;
    }
    for (; j <= i; ++j) {
      const V* __restrict__ rj = s.row(j);
      V acc = si[0] * rj[0];
      for (int k = 1; k < b; ++k) acc += si[k] * rj[k];
      oi[j] = acc;
    }
    oi[i] += mu2;
  }
}

// out = x y for full b-by-b x and y.
template <class V>
HSC_HD void multiply(Block<V> x, Block<V> y, Block<V> out) {
  const int b = x.b;
  for (int i = 0; i < b; ++i) {
    const V* __restrict__ xi = x.row(i);
    V* __restrict__ oi = out.row(i);
    int j = 0;
    for (; j + 4 <= b; j += 4) {
      const V* __restrict__ yk = y.row(0) + j;
      V s0 = xi[0] * yk[0], s1 = xi[0] * yk[1], s2 = xi[0] * yk[2], s3 = xi[0] * yk[3];
      for (int k = 1; k < b; ++k) {
        yk += y.ld;
        const V v = xi[k];
        s0 += v * yk[0];
        s1 += v * yk[1];
        s2 += v * yk[2];
        s3 += v * yk[3];
      }
      oi[j] = s0;
      oi[j + 1] = s1;
      oi[j + 2] = s2;
      oi[j + 3] = s3;
    }
    for (; j < b; ++j) {
      V acc = xi[0] * y(0, j);
      for (int k = 1; k < b; ++k) acc += xi[k] * y(k, j);
      oi[j] = acc;
    }
  }
}

// x = (l l^T)^{-1} x in place: forward then backward substitution, two partial sums each to halve
// the dependency chain.
template <class V>
HSC_HD void cholesky_solve_inplace(Block<V> l, Column<V> x) {
  const int b = l.b;
  for (int i = 0; i < b; ++i) {
    const V* __restrict__ li = l.row(i);
    V s0 = x[i], s1 = LaneOps<V>::splat(0);
    int k = 0;
    for (; k + 2 <= i; k += 2) {
      s0 -= li[k] * x[k];
      s1 -= li[k + 1] * x[k + 1];
    }
    if (k < i) s0 -= li[k] * x[k];
    x[i] = (s0 + s1) / li[i];
  }
  for (int i = b - 1; i >= 0; --i) {
    V s0 = x[i], s1 = LaneOps<V>::splat(0);
    int k = i + 1;
    for (; k + 2 <= b; k += 2) {
      s0 -= l(k, i) * x[k];
      s1 -= l(k + 1, i) * x[k + 1];
    }
    if (k < b) s0 -= l(k, i) * x[k];
    x[i] = (s0 + s1) / l(i, i);
  }
}

// y = a x for a full symmetric a.
template <class V>
HSC_HD void symmetric_multiply(Block<V> a, Column<V> x, Column<V> y) {
  const int b = a.b;
  for (int i = 0; i < b; ++i) {
    const V* __restrict__ ai = a.row(i);
    V s = ai[0] * x[0];
    for (int k = 1; k < b; ++k) s += ai[k] * x[k];
    y[i] = s;
  }
}

// ---- The pipeline of docs/contract.md §2 for one lane group ----------------------------------

template <class V>
struct Workspace {
  Block<V> s;  // S = (H + H^T)/2, full; in singular_safe mode A = S + delta I
  Block<V> a;  // scratch: L, A^{-1}, M
  Block<V> m;  // scratch: L^{-1}
  Block<V> f;  // the final lower factor: L_M (cholesky) or L_C (singular_safe)
};

// Mode cholesky: for every lane in `todo`, the first damping d of the sequence d_0 = delta,
// d_{i+1} = max(2 d_i, tau) for which both factorisations succeed: L L^T = A = S + d I with every
// pivot above damped_min_pivot, then L_M L_M^T = M = A + mu^2 A^{-1} with every pivot of M above
// correction_min_pivot(mu) (block_rules.h).
// On return ws.f holds L_M for the returned lanes; `damping` holds the value used (the last value
// tried for lanes that failed max_tries times, status 3), `raised` the lanes that needed more
// than d_0.
//
// Lanes search in two stages so that lanes needing different numbers of tries do not multiply
// the expensive part: stage 1 walks each lane's own sequence with Cholesky factorisations of A
// alone (a failing one stops at its first bad pivot) and parks each lane's L in ws.f; stage 2 then
// forms and factorises M once for all parked lanes, each at its own damping. A lane whose M fails
// goes back to stage 1 at its next damping. Every lane tries the same values in the same order as
// a one-lane loop would, so the result does not depend on which blocks share a group.
// Stage 1 also passes over, without factorising, the dampings d at which a diagonal entry of
// A = S + d I is at or below A's pivot floor: pivot j of a Cholesky factorisation is A_jj minus a
// sum of squares, so it is <= A_jj in floating point too, and such a factorisation fails for
// certain. Those values count as tried, exactly as if the factorisation had been run.
template <class V, class Ops = LaneOps<V>>
HSC_HD typename Ops::mask factorise_corrected(const Workspace<V>& ws, V& damping, V tau, V mu2,
                                              V mu, int max_tries, typename Ops::mask todo,
                                              typename Ops::mask& raised) {
  using mask = typename Ops::mask;
  const int b = ws.s.b;
  const V zero = Ops::splat(0), one = Ops::splat(1), min_pivot = correction_min_pivot(mu);
  const V budget = Ops::splat(static_cast<typename Ops::scalar>(max_tries));
  mask done = Ops::no_lanes();
  raised = Ops::no_lanes();
  V d = damping, tried = zero;
  V diagonal_min = ws.s(0, 0), diagonal_max = ws.s(0, 0);
  for (int i = 1; i < b; ++i) {
    diagonal_min = Ops::min(diagonal_min, ws.s(i, i));
    diagonal_max = Ops::max(diagonal_max, ws.s(i, i));
  }
  mask searching = todo;
  // After a failed try: the next damping, and whether the lane may go on.
  auto advance = [&](mask failed) {
    d = Ops::select(failed, next_damping<V, Ops>(d, tau), d);
    // A damping that overflows can never give a usable factor: stop those lanes here.
    searching = Ops::and_(searching, Ops::or_(Ops::andnot(Ops::all_lanes(), failed),
                                              Ops::and_(Ops::less(tried, budget), Ops::usable_pivot(d, zero))));
  };
  while (Ops::any(searching)) {
    // Stage 1.
    mask parked = Ops::no_lanes();
    while (Ops::any(searching)) {
      for (;;) {  // dampings that leave a diagonal entry <= 0 (the same rounding as A's below)
        const mask hopeless = Ops::andnot(
            searching, Ops::usable_pivot(diagonal_min + d, damped_min_pivot<V, Ops>(diagonal_max + d, b)));
        if (!Ops::any(hopeless)) break;
        damping = Ops::select(hopeless, d, damping);
        tried = tried + Ops::select(hopeless, one, zero);
        advance(hopeless);
      }
      if (!Ops::any(searching)) break;
      for (int i = 0; i < b; ++i) {
        for (int j = 0; j < i; ++j) ws.a(i, j) = Ops::select(searching, ws.s(i, j), ws.a(i, j));
        ws.a(i, i) = Ops::select(searching, ws.s(i, i) + d, ws.a(i, i));
      }
      damping = Ops::select(searching, d, damping);
      tried = tried + Ops::select(searching, one, zero);
      const mask factorised =
          cholesky_lower<V, Ops>(ws.a, searching, damped_min_pivot<V, Ops>(diagonal_max + d, b));
      if (Ops::any(factorised))
        for (int i = 0; i < b; ++i)
          for (int j = 0; j <= i; ++j) ws.f(i, j) = Ops::select(factorised, ws.a(i, j), ws.f(i, j));
      parked = Ops::or_(parked, factorised);
      searching = Ops::andnot(searching, factorised);
      advance(searching);
    }
    if (!Ops::any(parked)) break;
    // Stage 2, at each parked lane's damping (`damping`, equal to d there).
    invert_lower(ws.f, ws.m);        // m = L^{-1}
    lower_gram(ws.m, ws.a, false);   // a = L^{-T} L^{-1} = A^{-1}
    for (int i = 0; i < b; ++i) {    // a = S + d I + mu^2 A^{-1}
      for (int j = 0; j < i; ++j) ws.a(i, j) = ws.s(i, j) + mu2 * ws.a(i, j);
      ws.a(i, i) = (ws.s(i, i) + damping) + mu2 * ws.a(i, i);
    }
    const mask ok = cholesky_lower<V, Ops>(ws.a, parked, min_pivot);
    for (int i = 0; i < b; ++i)
      for (int j = 0; j <= i; ++j) ws.f(i, j) = Ops::select(ok, ws.a(i, j), ws.f(i, j));
    raised = Ops::or_(raised, Ops::and_(ok, Ops::less(one, tried)));
    done = Ops::or_(done, ok);
    // Parked lanes whose M failed search on from their next damping.
    searching = Ops::andnot(parked, ok);
    advance(searching);
  }
  return done;
}

// Mode singular_safe: with A in ws.s, factorise C = A^2 + mu^2 I into ws.f.
template <class V, class Ops = LaneOps<V>>
HSC_HD typename Ops::mask factorise_shifted_square(const Workspace<V>& ws, V mu2,
                                                   typename Ops::mask active) {
  square_plus_shift(ws.s, mu2, ws.f);
  return cholesky_lower<V, Ops>(ws.f, active, shifted_square_min_pivot(mu2));
}

}  // namespace hsc::cpu
