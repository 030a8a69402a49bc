// CPU implementation of hsc::accumulate_probes: assembles sign-coded probe results into the
// block-diagonal curvature estimate and folds it into the running state, in one pass
// (docs/contract.md §4; the rules in estimate_rules.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../estimate_rules.h"

namespace hsc::cpu {
namespace {

template <class T>
void accumulate(T* state, const T* hvps, const T* signs, const bool* mask, bool* accepted,
                int64_t S, int64_t N, int64_t b, T ema, bool first) {
  at::parallel_for(0, N, 16, [&](int64_t k0, int64_t k1) {
    std::vector<T> estimate(b * b);
    for (int64_t k = k0; k < k1; ++k) {
      const bool* real = mask + k * b;
      bool finite = true;
      for (int64_t i = 0; i < b; ++i) {
        for (int64_t j = 0; j <= i; ++j) {
          const T e = probe_entry(hvps, signs, S, N, b, k, i, j);
          estimate[i * b + j] = estimate[j * b + i] = e;
          if (real[i] && real[j]) finite = finite && LaneOps<T>::finite(e);
        }
      }
      accepted[k] = finite;
      T* st = state + k * b * b;
      bool state_finite = true;
      for (int64_t e = 0; e < b * b && state_finite; ++e) state_finite = LaneOps<T>::finite(st[e]);
      const Fold fold = fold_rule(first, state_finite, finite);
      if (fold == Fold::kKeep) continue;
      for (int64_t i = 0; i < b; ++i)
        for (int64_t j = 0; j < b; ++j)
          st[i * b + j] = folded_entry(st[i * b + j], estimate[i * b + j], real[i] && real[j], i == j,
                                       ema, fold);
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
