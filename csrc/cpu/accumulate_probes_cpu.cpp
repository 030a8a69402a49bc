// CPU implementation of hsc::accumulate_probes: assembles sign-coded probe results into the
// block-diagonal curvature estimate (SPEC §4) and folds it into the running EMA, in one pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../accumulate_probes.h"
#include "../checks.h"

namespace hsc::cpu {
namespace {

template <class T>
void accumulate(T* state, const T* hvps, const T* signs, const bool* mask, bool* accepted,
                int64_t S, int64_t N, int64_t b, T ema, bool first) {
  at::parallel_for(0, N, 16, [&](int64_t k0, int64_t k1) {
    std::vector<T> estimate(b * b);
    for (int64_t k = k0; k < k1; ++k) {
      accepted[k] = probe_block_estimate(hvps, signs, mask, estimate.data(), S, N, b, k);
      // A non-finite estimate leaves the running state as it was; on the first refresh there is
      // nothing to keep, so it is written and `correct` reports the block as status 2.
      if (accepted[k] || first)
        fold_block_estimate(state + k * b * b, estimate.data(), mask + k * b, b, ema, first);
    }
  });
}

at::Tensor accumulate_probes_cpu(at::Tensor& state, const at::Tensor& hvps, const at::Tensor& signs,
                                 const at::Tensor& mask, double ema, bool first) {
  check_probe_args(state, hvps, signs, mask, ema);
  const int64_t S = hvps.size(0), b = hvps.size(1), N = hvps.size(2);
  const at::Tensor h = hvps.contiguous(), s = signs.to(hvps.scalar_type()).contiguous();
  const at::Tensor m = mask.contiguous();
  at::Tensor accepted = at::empty({N}, state.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "hsc::accumulate_probes", [&] {
    accumulate<scalar_t>(state.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                         m.data_ptr<bool>(), accepted.data_ptr<bool>(), S, N, b,
                         static_cast<scalar_t>(ema), first);
  });
  return accepted;
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CPU, m) { m.impl("accumulate_probes", &accumulate_probes_cpu); }

}  // namespace hsc::cpu
