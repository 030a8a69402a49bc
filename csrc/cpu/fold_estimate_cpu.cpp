// CPU implementation of hsc::fold_estimate_: folds assembled block estimates into the running
// state with the rules of estimate_rules.h (docs/contract.md §4), in place.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../estimate_rules.h"

namespace hsc::cpu {
namespace {

template <class T>
void fold(T* state, const T* estimate, const bool* mask, bool* accepted, int64_t N, int64_t b, T ema,
          bool first) {
  at::parallel_for(0, N, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const bool* real = mask + k * b;
      const T* est = estimate + k * b * b;
      T* st = state + k * b * b;
      bool finite = true, state_finite = true;
      for (int64_t i = 0; i < b; ++i)
        for (int64_t j = 0; j < b; ++j) {
          if (real[i] && real[j]) finite = finite && LaneOps<T>::finite(est[i * b + j]);
          state_finite = state_finite && LaneOps<T>::finite(st[i * b + j]);
        }
      accepted[k] = finite;
      const Fold rule = fold_rule(first, state_finite, finite);
      if (rule == Fold::kKeep) continue;
      for (int64_t i = 0; i < b; ++i)
        for (int64_t j = 0; j < b; ++j)
          st[i * b + j] = folded_entry(st[i * b + j], est[i * b + j], real[i] && real[j], i == j, ema,
                                       rule);
    }
  });
}

at::Tensor fold_estimate_cpu(at::Tensor& state, const at::Tensor& estimate, const at::Tensor& mask,
                             double ema, bool first) {
  check_fold_args(state, estimate, mask, ema);
  const int64_t N = state.size(0), b = state.size(1);
  const at::Tensor e = estimate.contiguous(), m = mask.contiguous();
  at::Tensor accepted = at::empty({N}, state.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "hsc::fold_estimate_", [&] {
    fold<scalar_t>(state.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(), m.data_ptr<bool>(),
                   accepted.data_ptr<bool>(), N, b, static_cast<scalar_t>(ema), first);
  });
  return accepted;
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CPU, m) { m.impl("fold_estimate_", &fold_estimate_cpu); }

}  // namespace hsc::cpu
