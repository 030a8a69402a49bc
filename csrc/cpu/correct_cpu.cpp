// CPU implementation of hsc::correct, hsc::correct_ and the fused hsc::precondition (mirrored by
// cuda/correct_cuda.cu).
//
// Blocks are processed in lane groups of W (the SIMD width: 16 float32 or 8 float64 blocks with
// AVX-512): a group is transposed into a workspace where entry (i, j) of all W blocks sits in one
// vector, and lane_pipeline.h runs the whole pipeline on it with vector instructions and no
// data-dependent branches. Groups are spread over threads with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <memory>
#include <vector>

#include "../block_rules.h"
#include "../checks.h"
#include "../correct_call.h"
#include "../factor_layout.h"
#include "lane_pipeline.h"
#include "lanes.h"

namespace hsc::cpu {
namespace {

template <class T>
struct Group {
  using V = Vec<T>;
  using Ops = LaneOps<V>;
  using mask = typename Ops::mask;
  static constexpr int W = kLanes<T>;

  int b;
  std::unique_ptr<V[]> storage;  // s, a, m, f (b*(b+1) each), x, y, g (b each), dense (b*b)
  Workspace<V> ws;
  Column<V> x, y, g;
  V* dense;  // b*b entries in row-major order, unpadded: the blocks as they come in

  static_assert(kTile % W == 0, "a lane group lies within one tile of the factor");

  // Rows are padded to b + 1 vectors: with b a power of two, walking down a column would
  // otherwise hit one cache set again and again.
  explicit Group(int b_) : b(b_), storage(new V[4 * b_ * (b_ + 1) + 3 * b_ + b_ * b_]) {
    V* p = storage.get();
    const int ld = b + 1, size = b * ld;
    ws = Workspace<V>{Block<V>{p, b, ld}, Block<V>{p + size, b, ld}, Block<V>{p + 2 * size, b, ld},
                      Block<V>{p + 3 * size, b, ld}};
    x = Column<V>{p + 4 * size};
    y = Column<V>{p + 4 * size + b};
    g = Column<V>{p + 4 * size + 2 * b};
    dense = p + 4 * size + 3 * b;
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
  // with a non-finite entry hold the identity. Returns the lanes holding a finite block; `tau`
  // gets 1e-6 max|S_ij| per lane (docs/contract.md §2).
  mask load(const T* H, int64_t n0, int count, V& tau) {
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
    tau = damping_floor<V>(maxabs);
    mask valid = Ops::no_lanes();
    for (int l = 0; l < count; ++l) valid[l] = -1;
    return Ops::and_(finite, valid);
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

// Runs docs/contract.md §2 on one lane group and writes its outputs. Returns nothing: every per-block outcome
// goes to `status`.
template <class T>
void run_group(Group<T>& grp, const CorrectionArgs<T>& pr, int64_t n0, int count) {
  using V = Vec<T>;
  using Ops = LaneOps<V>;
  using mask = typename Ops::mask;
  const int b = pr.b;
  const Workspace<V>& ws = grp.ws;

  V tau;
  const mask finite = grp.load(pr.H, n0, count, tau);
  V damping = Ops::splat(0);
  for (int l = 0; l < count; ++l) damping[l] = pr.damping_in[n0 + l];
  const V mu2 = Ops::splat(pr.mu2), mu = Ops::splat(pr.mu);

  mask ok, raised = Ops::no_lanes();
  if (pr.mode == Mode::kCholesky) {
    ok = factorise_corrected<V>(ws, damping, tau, mu2, mu, pr.max_tries, finite, raised);
  } else {
    for (int i = 0; i < b; ++i) ws.s(i, i) += Ops::select(finite, damping, Ops::splat(0));
    ok = factorise_shifted_square<V>(ws, mu2, finite);
  }
  grp.set_identity_where_not(ok, ws.f, T(1));  // keeps the lanes that failed benign

  const T fallback = fallback_step<T>(T(1), pr.mu2);  // the factor of docs/contract.md §3: M = (1 + mu^2) I
  for (int l = 0; l < count; ++l) {
    const int64_t n = n0 + l;
    pr.damping_out[n] = damping[l];
    pr.status[n] = status_code(finite[l] != 0, ok[l] != 0, raised[l] != 0);
  }

  if (pr.P != nullptr) {
    for (int64_t c = 0; c < pr.r; ++c) {
      const T* g0 = pr.G + n0 * b * pr.r + c;
      for (int i = 0; i < b; ++i) {
        grp.g[i] = gather(g0 + i * pr.r, b * pr.r, count);
        grp.x[i] = grp.g[i];
      }
      cholesky_solve_inplace(ws.f, grp.x);  // x = M^{-1} g, or (A^2 + mu^2 I)^{-1} g
      Column<V> p = grp.x;
      if (pr.mode == Mode::kSingularSafe) {
        symmetric_multiply(ws.s, grp.x, grp.y);  // p = A (A^2 + mu^2 I)^{-1} g
        p = grp.y;
      }
      for (int i = 0; i < b; ++i) p[i] = Ops::select(ok, p[i], fallback_step(grp.g[i], mu2));
      for (int l = 0; l < count; ++l) {
        T* out = pr.P + (n0 + l) * b * pr.r + c;
        for (int i = 0; i < b; ++i) out[i * pr.r] = p[i][l];
      }
    }
  } else {
    // The factor is M^{-1} itself, packed and tiled (see factor_layout.h): solve is then one product
    // a step.
    invert_lower(ws.f, ws.m);
    if (pr.mode == Mode::kCholesky) {
      lower_gram(ws.m, ws.a, false);  // a = L_M^{-T} L_M^{-1} = M^{-1} (lower triangle)
    } else {
      lower_gram(ws.m, ws.a, true);   // a = C^{-1}
      multiply(ws.s, ws.a, ws.m);     // m = A C^{-1}, symmetric up to rounding: its lower half
      for (int i = 0; i < b; ++i)
        for (int j = 0; j <= i; ++j) ws.a(i, j) = ws.m(i, j);
    }
    grp.set_identity_where_not(ok, ws.a, fallback);
    mask write = Ops::all_lanes();  // correct_: a failed block that keeps its factor is not written
    if (pr.keep_failed != nullptr)
      for (int l = 0; l < count; ++l)
        if (pr.keep_failed[n0 + l]) write[l] = ok[l];
    grp.write_factor(ws.a, write, pr.factor, n0, count);
  }
}

}  // namespace
}  // namespace hsc::cpu

namespace hsc::cpu {
namespace {

template <class T>
void run_blocks(const CorrectionArgs<T>& pr) {
  constexpr int W = kLanes<T>;
  const int64_t groups = (pr.N + W - 1) / W;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    Group<T> grp(pr.b);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n0 = g * W;
      run_group(grp, pr, n0, static_cast<int>(std::min<int64_t>(W, pr.N - n0)));
    }
    stream_fence();
  });
}

// Reading a damping tensor's values is free on the CPU, so bad values are refused up front.
void check_damping_values(const at::Tensor& damping) {
  TORCH_CHECK_VALUE(damping.numel() == 0 || ((damping >= 0) & damping.isfinite()).all().item<bool>(),
                    "hsc: damping must be finite and >= 0 for every block");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const CorrectionCall& call) {
  check_damping_values(call.damping);
  AT_DISPATCH_FLOATING_TYPES(call.dtype, "hsc::correct", [&] { run_blocks(call.args<scalar_t>()); });
  return call.result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> correct_cpu(const at::Tensor& H,
                                                          const at::Tensor& damping, double scale,
                                                          c10::string_view mode,
                                                          int64_t max_tries) {
  return run(CorrectionCall::correct(H, damping, scale, mode, max_tries));
}

std::tuple<at::Tensor, at::Tensor> correct_in_place_cpu(at::Tensor& factor, const at::Tensor& H,
                                                        const at::Tensor& damping, double scale,
                                                        c10::string_view mode, int64_t max_tries,
                                                        const c10::optional<at::Tensor>& keep_failed) {
  const CorrectionCall call =
      CorrectionCall::correct_into(factor, H, damping, scale, mode, max_tries, keep_failed);
  run(call);
  return call.in_place_result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> precondition_cpu(
    const at::Tensor& H, const at::Tensor& G, const at::Tensor& damping, double scale,
    c10::string_view mode, int64_t max_tries) {
  return run(CorrectionCall::precondition(H, G, damping, scale, mode, max_tries));
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CPU, m) {
  m.impl("correct", &correct_cpu);
  m.impl("correct_", &correct_in_place_cpu);
  m.impl("precondition", &precondition_cpu);
}

}  // namespace hsc::cpu
