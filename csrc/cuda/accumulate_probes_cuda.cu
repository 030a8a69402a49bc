// CUDA implementation of hsc::accumulate_probes (mirrors cpu/accumulate_probes_cpu.cpp): the
// launch; the kernel is in accumulate_probes_kernel.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "accumulate_probes_kernel.cuh"

namespace hsc::cuda {
namespace {

at::Tensor accumulate_probes_cuda(at::Tensor& state, const at::Tensor& hvps, const at::Tensor& signs,
                                  const at::Tensor& mask, double ema, bool first) {
  check_probe_args(state, hvps, signs, mask, ema);
  const c10::cuda::CUDAGuard guard(state.device());
  const int64_t S = hvps.size(0), b = hvps.size(1), N = hvps.size(2);
  const at::Tensor h = hvps.contiguous(), s = signs.to(hvps.scalar_type()).contiguous();
  const at::Tensor m = mask.contiguous();
  at::Tensor accepted = at::empty({N}, state.options().dtype(at::kBool));
  if (N == 0) return accepted;
  AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "hsc::accumulate_probes", [&] {
    accumulate_probes_kernel<scalar_t><<<static_cast<unsigned>(N), kFoldThreads, 0,
                                         c10::cuda::getCurrentCUDAStream()>>>(
        state.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
        m.data_ptr<bool>(), accepted.data_ptr<bool>(), S, N, b, static_cast<scalar_t>(ema), first);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return accepted;
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CUDA, m) { m.impl("accumulate_probes", &accumulate_probes_cuda); }

}  // namespace hsc::cuda
