// CUDA implementation of hsc::solve (mirrors cpu/solve_cpu.cpp): the launch; the kernel is in
// solve_kernel.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "solve_kernel.cuh"

namespace hsc::cuda {
namespace {

at::Tensor solve_cuda(const at::Tensor& factor, const at::Tensor& G) {
  check_solve_args(factor, G);
  const c10::cuda::CUDAGuard guard(G.device());
  const int64_t N = G.size(0), b = G.size(1), r = G.dim() == 3 ? G.size(2) : 1;
  const auto ct = compute_dtype(at::promote_types(factor.scalar_type(), G.scalar_type()));
  const at::Tensor f = factor.to(ct).contiguous();
  const at::Tensor g = G.to(ct).contiguous();
  at::Tensor P = at::empty(g.sizes(), g.options());
  const int64_t threads = N * b * r;
  if (threads > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "hsc::solve", [&] {
      solve_kernel<scalar_t><<<static_cast<unsigned>((threads + kSolveThreads - 1) / kSolveThreads),
                               kSolveThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), P.data_ptr<scalar_t>(), N,
          static_cast<int>(b), r);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return P.to(G.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CUDA, m) { m.impl("solve", &solve_cuda); }

}  // namespace hsc::cuda
