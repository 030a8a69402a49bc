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
#include "lane_group.h"
#include "lane_pipeline.h"
#include "lanes.h"

namespace hsc::cpu {
namespace {

// Runs docs/contract.md §2 on one lane group and writes its outputs. Returns nothing: every per-block outcome
// goes to `status`.
template <class T>
void run_group(Group<T>& grp, const CorrectionArgs<T>& pr, int64_t n0, int count) {
  using V = Vec<T>;
  using Ops = LaneOps<V>;
  using mask = typename Ops::mask;
  const int b = pr.b;
  const Workspace<V>& ws = grp.ws;

  V max_abs;
  const mask finite = grp.load(pr.H, n0, count, max_abs);
  V damping = Ops::splat(0);
  for (int l = 0; l < count; ++l) damping[l] = pr.damping_in[n0 + l];
  const V mu2 = Ops::splat(pr.mu2), mu = Ops::splat(pr.mu);
  const bool spectral = is_spectral(pr.mode);

  mask ok, raised = Ops::no_lanes();
  if (spectral) {  // no damping: the eigenpairs of S, ws.m = V^T
    V inverse_scale;
    int sweeps;
    ok = grp.eigen(finite, max_abs, pr.max_sweeps, inverse_scale, sweeps);
    grp.spectral_multipliers(pr.mode, inverse_scale, mu);
  } else if (pr.mode == Mode::kCholesky) {
    ok = factorise_corrected<V>(ws, damping, damping_floor<V>(max_abs), mu2, mu, pr.max_tries, finite,
                                raised);
  } else {
    for (int i = 0; i < b; ++i) ws.s(i, i) += Ops::select(finite, damping, Ops::splat(0));
    ok = factorise_shifted_square<V>(ws, mu2, finite);
  }
  if (!spectral) grp.set_identity_where_not(ok, ws.f, T(1));  // keeps the lanes that failed benign

  const T fallback = fallback_step<T>(T(1), pr.mu2);  // the factor of docs/contract.md §3: M = (1 + mu^2) I
  for (int l = 0; l < count; ++l) {
    const int64_t n = n0 + l;
    pr.damping_out[n] = spectral ? T(0) : damping[l];  // the spectral modes use no damping
    pr.status[n] = status_code(finite[l] != 0, ok[l] != 0, raised[l] != 0);
  }

  if (pr.P != nullptr) {
    for (int64_t c = 0; c < pr.r; ++c) {
      const T* g0 = pr.G + n0 * b * pr.r + c;
      for (int i = 0; i < b; ++i) {
        grp.g[i] = gather(g0 + i * pr.r, b * pr.r, count);
        grp.x[i] = grp.g[i];
      }
      Column<V> p = grp.x;
      if (spectral) {
        spectral_step(ws.m, grp.multipliers, grp.g, grp.y, grp.x);  // p = V f(Lambda) V^T g
      } else {
        cholesky_solve_inplace(ws.f, grp.x);  // x = M^{-1} g, or (A^2 + mu^2 I)^{-1} g
        if (pr.mode == Mode::kSingularSafe) {
          symmetric_multiply(ws.s, grp.x, grp.y);  // p = A (A^2 + mu^2 I)^{-1} g
          p = grp.y;
        }
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
    Block<V> out = ws.a;
    if (spectral) {
      compose_spectral(ws.m, grp.multipliers, ws.a, ws.f);  // f = V f(Lambda) V^T
      out = ws.f;
    } else {
      invert_lower(ws.f, ws.m);
      if (pr.mode == Mode::kCholesky) {
        lower_gram(ws.m, ws.a, false);  // a = L_M^{-T} L_M^{-1} = M^{-1} (lower triangle)
      } else {
        lower_gram(ws.m, ws.a, true);   // a = C^{-1}
        multiply(ws.s, ws.a, ws.m);     // m = A C^{-1}, symmetric up to rounding: its lower half
        for (int i = 0; i < b; ++i)
          for (int j = 0; j <= i; ++j) ws.a(i, j) = ws.m(i, j);
      }
    }
    grp.set_identity_where_not(ok, out, fallback);
    grp.write_factor(out, Group<T>::factor_writes(pr.keep_failed, ok, n0, count), pr.factor, n0, count);
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
                                                          int64_t max_tries, int64_t max_sweeps) {
  return run(CorrectionCall::correct(H, damping, scale, mode, max_tries, max_sweeps));
}

std::tuple<at::Tensor, at::Tensor> correct_in_place_cpu(at::Tensor& factor, const at::Tensor& H,
                                                        const at::Tensor& damping, double scale,
                                                        c10::string_view mode, int64_t max_tries,
                                                        const c10::optional<at::Tensor>& keep_failed,
    int64_t max_sweeps) {
  const CorrectionCall call =
      CorrectionCall::correct_into(factor, H, damping, scale, mode, max_tries, keep_failed,
                                   max_sweeps);
  run(call);
  return call.in_place_result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> precondition_cpu(
    const at::Tensor& H, const at::Tensor& G, const at::Tensor& damping, double scale,
    c10::string_view mode, int64_t max_tries, int64_t max_sweeps) {
  return run(CorrectionCall::precondition(H, G, damping, scale, mode, max_tries, max_sweeps));
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CPU, m) {
  m.impl("correct", &correct_cpu);
  m.impl("correct_", &correct_in_place_cpu);
  m.impl("precondition", &precondition_cpu);
}

}  // namespace hsc::cpu
