// CUDA implementation of hsc::fold_estimate_ (mirrors cpu/fold_estimate_cpu.cpp): the launch; the
// kernel is in fold_estimate_kernel.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "fold_estimate_kernel.cuh"

namespace hsc::cuda {
namespace {

at::Tensor fold_estimate_cuda(at::Tensor& state, const at::Tensor& estimate, const at::Tensor& mask,
                              double ema, bool first) {
  check_fold_args(state, estimate, mask, ema);
  const c10::cuda::CUDAGuard guard(state.device());
  const int64_t N = state.size(0), b = state.size(1);
  const at::Tensor e = estimate.contiguous(), m = mask.contiguous();
  at::Tensor accepted = at::empty({N}, state.options().dtype(at::kBool));
  if (N == 0) return accepted;
  AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "hsc::fold_estimate_", [&] {
    fold_estimate_kernel<scalar_t><<<static_cast<unsigned>(N), kFoldThreads, 0,
                                     c10::cuda::getCurrentCUDAStream()>>>(
        state.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(), m.data_ptr<bool>(),
        accepted.data_ptr<bool>(), b, static_cast<scalar_t>(ema), first);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return accepted;
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CUDA, m) { m.impl("fold_estimate_", &fold_estimate_cuda); }

}  // namespace hsc::cuda
