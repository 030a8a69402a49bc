// CUDA implementation of hsc::eigh (mirrors cpu/eigh_cpu.cpp): the launch; the kernels and their
// thread mapping are in eigh_kernel.cuh. eigh_into is also the first step of the spectral modes
// of correct, correct_ and precondition (correct_cuda.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../block_rules.h"
#include "../checks.h"
#include "eigh_kernel.cuh"

namespace hsc::cuda {

// The eigen-decomposition of every block of h ([N, b, b], contiguous, float32 or float64) into
// eigenvalues [N, b], eigenvectors [N, b, b] and status [N] (h's dtype, int32), on the current
// stream, with no host synchronisation.
void eigh_into(const at::Tensor& h, at::Tensor& eigenvalues, at::Tensor& eigenvectors, at::Tensor& status,
               int64_t max_sweeps) {
  const int64_t N = h.size(0);
  const int b = static_cast<int>(h.size(1));
  if (N == 0) return;
  int device = 0, max_shared = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "hsc::eigh", [&] {
    using T = scalar_t;
    EighParams<T> p{h.data_ptr<T>(), eigenvalues.data_ptr<T>(), eigenvectors.data_ptr<T>(),
                    status.data_ptr<int32_t>(), N, b, static_cast<int>(max_sweeps)};
    const Mapping m = choose_eigh_mapping<T>(N, b, static_cast<size_t>(max_shared));
    // Freed to the caching allocator after the launch, which reuses it only for later work on
    // this stream.
    at::Tensor scratch;
    if (!m.in_shared) {
      scratch = at::empty({N * eigh_workspace_entries(b)}, h.options());
      p.scratch = scratch.data_ptr<T>();
    }
    const auto grid = static_cast<unsigned>(m.blocks);
    if (m.warp) {
      auto kernel = m.rows == 4 ? eigh_warp_kernel<T, 4> : m.rows == 8 ? eigh_warp_kernel<T, 8>
                    : m.rows == 16 ? eigh_warp_kernel<T, 16> : eigh_warp_kernel<T, 32>;
      kernel<<<grid, m.threads(), 0, stream>>>(p, m.teams_per_block);
    } else {
      auto kernel = eigh_team_kernel<T>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(m.shared_bytes())));
      kernel<<<grid, m.threads(), m.shared_bytes(), stream>>>(p, m.team_size, m.in_shared);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> eigh_cuda(const at::Tensor& H, int64_t max_sweeps) {
  check_eigh_args(H, max_sweeps);
  const c10::cuda::CUDAGuard guard(H.device());
  const int64_t N = H.size(0), b = H.size(1);
  const at::Tensor h = H.to(compute_dtype(H.scalar_type())).contiguous();
  at::Tensor eigenvalues = at::empty({N, b}, h.options());
  at::Tensor eigenvectors = at::empty({N, b, b}, h.options());
  at::Tensor status = at::empty({N}, h.options().dtype(at::kInt));
  eigh_into(h, eigenvalues, eigenvectors, status, max_sweeps);
  return {eigenvalues, eigenvectors, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CUDA, m) { m.impl("eigh", &eigh_cuda); }

}  // namespace hsc::cuda
