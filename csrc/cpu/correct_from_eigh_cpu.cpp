// CPU implementation of hsc::correct_from_eigh_: the factor of a spectral mode, M^-1 = V f(Lambda) V^T
// (or M^-1/2 = V f(Lambda)^1/2 V^T), from an eigen-decomposition (hsc::eigh), written in place
// (mirrored by cuda/correct_from_eigh_cuda.cu). Lets a caller choose mu after seeing the
// eigenvalues, and gives both powers from one decomposition.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../block_rules.h"
#include "../checks.h"
#include "../factor_layout.h"
#include "lane_group.h"

namespace hsc::cpu {
namespace {

template <class T>
void compose_blocks(T* factor, const T* eigenvalues, const T* eigenvectors, const int32_t* status,
                    const bool* keep_failed, int64_t N, int b, T mu, Mode mode, bool half) {
  using V = Vec<T>;
  using Ops = LaneOps<V>;
  using mask = typename Ops::mask;
  constexpr int W = kLanes<T>;
  const int64_t groups = (N + W - 1) / W;
  const T fallback = half ? std::sqrt(fallback_step<T>(T(1), mu * mu)) : fallback_step<T>(T(1), mu * mu);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    Group<T> grp(b);
    const int bb = b * b;
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n0 = g * W;
      const int count = static_cast<int>(std::min<int64_t>(W, N - n0));
      // dense[i b + k] = entry i of eigenvector k; ws.m = V^T.
      const T* e = eigenvectors + n0 * bb;
      if (count == W) {
        blocks_to_lanes(e, bb, bb, grp.dense);
      } else {
        for (int x = 0; x < bb; ++x) grp.dense[x] = gather(e + x, bb, count);
      }
      mask ok = Ops::no_lanes();
      for (int l = 0; l < count; ++l) ok[l] = status[n0 + l] <= kDampingRaised ? -1 : 0;
      const V zero = Ops::splat(0);
      for (int k = 0; k < b; ++k) {
        // Lanes that failed compute on zeros (no NaN) and get the fallback below.
        const V lambda = Ops::select(ok, gather(eigenvalues + n0 * b + k, b, count), zero);
        const V f = spectral_multiplier<V>(mode, lambda, Ops::splat(mu));
        grp.multipliers[k] = half ? Ops::sqrt(f) : f;  // f >= 0 where half (checked)
        for (int i = 0; i < b; ++i) grp.ws.m(k, i) = Ops::select(ok, grp.dense[i * b + k], zero);
      }
      compose_spectral(grp.ws.m, grp.multipliers, grp.ws.a, grp.ws.f);
      grp.set_identity_where_not(ok, grp.ws.f, fallback);
      grp.write_factor(grp.ws.f, Group<T>::factor_writes(keep_failed, ok, n0, count), factor, n0, count);
    }
    stream_fence();
  });
}

void correct_from_eigh_cpu(at::Tensor& factor, const at::Tensor& eigenvalues, const at::Tensor& eigenvectors,
                           const at::Tensor& status, double scale, c10::string_view mode,
                           const c10::optional<at::Tensor>& keep_failed, double power) {
  const Mode m = parse_mode(std::string(mode));
  check_from_eigh_args(factor, eigenvalues, eigenvectors, status, scale, m, std::string(mode),
                       keep_failed, power);
  const int64_t N = eigenvectors.size(0), b = eigenvectors.size(1);
  const at::Tensor values = eigenvalues.contiguous(), vectors = eigenvectors.contiguous();
  const at::Tensor st = status.contiguous();
  const at::Tensor keep = keep_failed.has_value() ? keep_failed->contiguous() : at::Tensor();
  zero_unused_lanes(factor, N);
  AT_DISPATCH_FLOATING_TYPES(factor.scalar_type(), "hsc::correct_from_eigh_", [&] {
    compose_blocks<scalar_t>(factor.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                             vectors.data_ptr<scalar_t>(), st.data_ptr<int32_t>(),
                             keep.defined() ? keep.data_ptr<bool>() : nullptr, N, static_cast<int>(b),
                             static_cast<scalar_t>(scale), m, power == 0.5);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CPU, m) { m.impl("correct_from_eigh_", &correct_from_eigh_cpu); }

}  // namespace hsc::cpu
