// A lane group of the CPU kernels: the workspace of W blocks held as SIMD lane values
// (lanes.h), how blocks come in (H, symmetrised) and how a factor goes out (packed, tiled:
// factor_layout.h). Shared by the kernels of correct, eigh and correct_from_eigh_.
#pragma once

#include <algorithm>
#include <limits>
#include <memory>

#include "../block_rules.h"
#include "../eigen_rules.h"
#include "../factor_layout.h"
#include "lane_eigh.h"
#include "lane_pipeline.h"
#include "lane_tridiagonal.h"
#include "lanes.h"

namespace hsc::cpu {

template <class T>
struct Group {
  using V = Vec<T>;
  using Ops = LaneOps<V>;
  using mask = typename Ops::mask;
  static constexpr int W = kLanes<T>;

  int b;
  std::unique_ptr<V[]> storage;  // s, a, m, f (b*(b+1) each), x, y, g, f (b each), dense (b*b),
                                 // the tridiagonal route's d, e, tau, c, s (b each) and scratch (4 b)
  Workspace<V> ws;
  Column<V> x, y, g;
  V* multipliers;  // spectral modes: f(lambda_k) of each eigenpair
  V* dense;  // b*b entries in row-major order, unpadded: the blocks as they come in
  V* tridiagonal;  // scratch of householder_tridiagonal and implicit_ql (9 b)

  static_assert(kTile % W == 0, "a lane group lies within one tile of the factor");

  // Rows are padded to b + 1 vectors: with b a power of two, walking down a column would
  // otherwise hit one cache set again and again.
  explicit Group(int b_) : b(b_), storage(new V[4 * b_ * (b_ + 1) + 4 * b_ + b_ * b_ + 9 * b_]) {
    V* p = storage.get();
    const int ld = b + 1, size = b * ld;
    ws = Workspace<V>{Block<V>{p, b, ld}, Block<V>{p + size, b, ld}, Block<V>{p + 2 * size, b, ld},
                      Block<V>{p + 3 * size, b, ld}};
    x = Column<V>{p + 4 * size};
    y = Column<V>{p + 4 * size + b};
    g = Column<V>{p + 4 * size + 2 * b};
    multipliers = p + 4 * size + 3 * b;
    dense = p + 4 * size + 4 * b;
    tridiagonal = dense + b * b;
  }

  // Spectral modes: the eigen-decomposition of the lanes `active` of ws.s, on S scaled by a power
  // of two per lane: cyclic Jacobi (jacobi_eigen) below kTridiagonalFrom, Householder reduction
  // and implicit QL (lane_tridiagonal.h) from there. ws.s's diagonal ends as the scaled
  // eigenvalues (the rest of ws.s as scratch) and ws.m as the transposed eigenvectors. Returns the
  // converged lanes; `inverse_scale` gets the power of two that turns ws.s's diagonal into
  // eigenvalues; `sweeps` the Jacobi sweeps, or the most QL iterations an eigenvalue took.
  mask eigen(mask active, V max_abs, int max_sweeps, V& inverse_scale, int& sweeps) {
    using T_ = T;
    V scale;
    for (int l = 0; l < W; ++l) {
      const int e = scaling_exponent<T_>(max_abs[l]);
      scale[l] = std::ldexp(T_(1), e);
      inverse_scale[l] = std::ldexp(T_(1), -e);
    }
    if (b >= kTridiagonalFrom) {  // the lower triangle
      for (int i = 0; i < b; ++i)
        for (int j = 0; j <= i; ++j) ws.s(i, j) = ws.s(i, j) * scale;
      V* d = tridiagonal;
      V *e = d + b, *tau = e + b, *c = tau + b, *s = c + b, *scratch = s + b;
      householder_tridiagonal<V>(ws.s, d, e, tau, scratch, ws.m);
      const mask ok = implicit_ql<V>(d, e, ws.m, c, s, active, max_sweeps, sweeps);
      for (int k = 0; k < b; ++k) ws.s(k, k) = d[k];
      return ok;
    }
    V squares = Ops::splat(0);  // Jacobi reads the upper triangle only
    for (int i = 0; i < b; ++i) {
      for (int j = i; j < b; ++j) {
        const V v = ws.s(i, j) * scale;
        ws.s(i, j) = v;
        squares += (i == j ? v : v + v) * v;
      }
    }
    for (int i = 0; i < b; ++i)
      for (int j = 0; j < b; ++j) ws.m(i, j) = Ops::splat(i == j ? T(1) : T(0));
    return jacobi_eigen<V>(ws.s, ws.m, Ops::sqrt(squares), active, max_sweeps, sweeps);
  }

  // f(lambda_k) for every eigenpair of ws.s (after eigen) into `multipliers`.
  void spectral_multipliers(Mode mode, V inverse_scale, V mu) {
    for (int k = 0; k < b; ++k) multipliers[k] = spectral_multiplier<V>(mode, ws.s(k, k) * inverse_scale, mu);
  }

  // The lanes of blocks [n0, n0 + count) as a mask.
  static mask lanes(int count) {
    mask m = Ops::no_lanes();
    for (int l = 0; l < count; ++l) m[l] = -1;
    return m;
  }

  // The lanes that write their factor: all, but under correct_'s keep_failed a failed block
  // keeps the factor it holds.
  static mask factor_writes(const bool* keep_failed, mask ok, int64_t n0, int count) {
    mask write = Ops::all_lanes();
    if (keep_failed != nullptr)
      for (int l = 0; l < count; ++l)
        if (keep_failed[n0 + l]) write[l] = ok[l];
    return write;
  }

  // The lanes `write` of a's lower triangle into the factor (tiled, see factor_layout.h) of blocks
  // [n0, n0 + count); the other blocks keep theirs. In the tiled layout entry (i, j) of the
  // group's W blocks is one vector in memory: no transposes, and a full group streams out
  // (fenced in run_blocks).
  void write_factor(Block<V> a, mask write, T* factor, int64_t n0, int count) {
    const int64_t t = packed_size(b);
    const bool merge = Ops::any(Ops::andnot(Ops::all_lanes(), write));
    for (int i = 0; i < b; ++i) {
      for (int j = 0; j <= i; ++j) {
        T* out = factor + tiled_offset(n0, packed_index(i, j), t);
        const V v = merge ? Ops::select(write, a(i, j), load_vector(out)) : a(i, j);
        if (count == W) {
          stream_vector(out, v);
        } else {
          store_partial(out, v, count);
        }
      }
    }
  }

  // Loads blocks [n0, n0 + count) of H into ws.s as S = (H + H^T)/2. Lanes >= count and lanes
  // with a non-finite entry hold the identity. Returns the lanes holding a finite block;
  // `max_abs` gets max_ij |S_ij| per lane.
  mask load(const T* H, int64_t n0, int count, V& max_abs) {
    const int bb = b * b;
    const T* h = H + n0 * bb;
    if (count == W) {
      blocks_to_lanes(h, bb, bb, dense);
    } else {
      for (int e = 0; e < bb; ++e) dense[e] = gather(h + e, bb, count);
    }
    const Block<V> raw{dense, b, b};
    if (count < W) {  // padding lanes hold the identity
      V pad_diagonal = Ops::splat(1);
      for (int l = 0; l < count; ++l) pad_diagonal[l] = 0;
      for (int i = 0; i < b; ++i) raw(i, i) += pad_diagonal;
    }
    mask finite = Ops::all_lanes();
    V maxabs = Ops::splat(0);
    for (int i = 0; i < b; ++i) {
      for (int j = 0; j < i; ++j) {
        const V v = symmetric_entry(raw(i, j), raw(j, i));
        finite = Ops::and_(finite, Ops::finite(v));
        maxabs = Ops::max(maxabs, Ops::abs(v));
        ws.s(i, j) = v;
        ws.s(j, i) = v;
      }
      const V d = raw(i, i);
      finite = Ops::and_(finite, Ops::finite(d));
      maxabs = Ops::max(maxabs, Ops::abs(d));
      ws.s(i, i) = d;
    }
    // Non-finite blocks become the identity so that no lane computes on NaN or Inf.
    set_identity_where_not(finite, ws.s, T(1));
    max_abs = maxabs;
    return Ops::and_(finite, lanes(count));
  }

  // Lanes outside `keep` of `a` become diagonal * I (nothing to do in the usual case, every lane
  // kept).
  void set_identity_where_not(mask keep, Block<V> a, T diagonal) {
    if (!Ops::any(Ops::andnot(Ops::all_lanes(), keep))) return;
    const V d = Ops::splat(diagonal), zero = Ops::splat(0);
    for (int i = 0; i < b; ++i)
      for (int j = 0; j < b; ++j) a(i, j) = Ops::select(keep, a(i, j), i == j ? d : zero);
  }
};

}  // namespace hsc::cpu
