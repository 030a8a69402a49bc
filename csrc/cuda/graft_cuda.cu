// CUDA implementation of hsc::graft_ (mirrors cpu/graft_cpu.cpp): the launch; the kernel is in
// graft_kernel.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "graft_kernel.cuh"

namespace hsc::cuda {
namespace {

at::Tensor graft_cuda(at::Tensor& P, const at::Tensor& G, const at::Tensor& ends) {
  check_graft_args(P, G, ends);
  const c10::cuda::CUDAGuard guard(P.device());
  const int64_t N = P.size(0), b = P.size(1), S = ends.size(0);
  const at::Tensor g = G.contiguous(), e = ends.contiguous();
  at::Tensor finite = at::empty({S}, P.options().dtype(at::kBool));
  if (S == 0) return finite;
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "hsc::graft_", [&] {
    graft_kernel<scalar_t><<<static_cast<unsigned>(S), kGraftThreads, kGraftSharedBytes,
                             c10::cuda::getCurrentCUDAStream()>>>(
        P.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), e.data_ptr<int64_t>(), finite.data_ptr<bool>(),
        N, b);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return finite;
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CUDA, m) { m.impl("graft_", &graft_cuda); }

}  // namespace hsc::cuda
