// CUDA implementation of hsc::correct_from_eigh_ (mirrors cpu/correct_from_eigh_cpu.cpp): the
// launches; the kernels and their thread mapping are in correct_from_eigh_kernel.cuh.
// compose_into and spectral_step_into also finish the spectral modes of correct, correct_ and
// precondition after eigh (correct_cuda.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "../block_rules.h"
#include "../checks.h"
#include "../factor_layout.h"
#include "correct_from_eigh_kernel.cuh"

namespace hsc::cuda {
namespace {

unsigned grid_for(int64_t threads) {
  return static_cast<unsigned>((threads + kComposeThreads - 1) / kComposeThreads);
}

// f(lambda) (or sqrt(f) where `half`) of every eigenpair of the decomposed blocks, into a new
// [N, b] tensor.
template <class T>
at::Tensor multipliers(const at::Tensor& eigenvalues, const at::Tensor& status, double scale, Mode mode,
                       bool half, cudaStream_t stream) {
  const int64_t N = eigenvalues.size(0), b = eigenvalues.size(1);
  at::Tensor f = at::empty({N, b}, eigenvalues.options());
  multiplier_kernel<T><<<grid_for(N * b), kComposeThreads, 0, stream>>>(
      eigenvalues.data_ptr<T>(), status.data_ptr<int32_t>(), f.data_ptr<T>(), N, static_cast<int>(b),
      static_cast<T>(scale), mode, half);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return f;
}

}  // namespace

// M^-1 = V f(Lambda) V^T (or M^-1/2 = V f(Lambda)^1/2 V^T where `half`) of every block into
// `factor` (packed, tiled; lanes past the last block already zeroed by the caller), `fallback`
// (the calling op's rounding of 1 / (1 + mu^2), or of its square root) on the diagonal of blocks
// of status 2 or 3, which keep their factor where keep_failed (a [N] bool tensor, or undefined)
// says so. Inputs contiguous, in the factor's dtype; current stream.
void compose_into(at::Tensor& factor, const at::Tensor& eigenvalues, const at::Tensor& eigenvectors,
                  const at::Tensor& status, const at::Tensor& keep_failed, double scale, double fallback,
                  Mode mode, bool half) {
  const int64_t N = eigenvectors.size(0), b = eigenvectors.size(1);
  if (N == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(factor.scalar_type(), "hsc::correct_from_eigh_", [&] {
    using T = scalar_t;
    const at::Tensor f = multipliers<T>(eigenvalues, status, scale, mode, half, stream);
    compose_kernel<T><<<grid_for(N * packed_size(b)), kComposeThreads, 0, stream>>>(
        factor.data_ptr<T>(), eigenvectors.data_ptr<T>(), f.data_ptr<T>(), status.data_ptr<int32_t>(),
        keep_failed.defined() ? keep_failed.data_ptr<bool>() : nullptr, N, static_cast<int>(b),
        static_cast<T>(fallback));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// P = V f(Lambda) V^T G per block (G [N, b, r] or [N, b], contiguous, in P's dtype), G / (1 + mu^2)
// for blocks of status 2 or 3 (mu2: mu^2 as the calling op rounds it); current stream.
void spectral_step_into(at::Tensor& P, const at::Tensor& G, const at::Tensor& eigenvalues,
                        const at::Tensor& eigenvectors, const at::Tensor& status, double scale, double mu2,
                        Mode mode) {
  const int64_t N = G.size(0), b = G.size(1), r = G.dim() == 3 ? G.size(2) : 1;
  if (N * b * r == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "hsc::precondition", [&] {
    using T = scalar_t;
    const at::Tensor f = multipliers<T>(eigenvalues, status, scale, mode, false, stream);
    at::Tensor Y = at::empty_like(G);  // f(Lambda) V^T G
    project_kernel<T><<<grid_for(N * b * r), kComposeThreads, 0, stream>>>(
        eigenvectors.data_ptr<T>(), f.data_ptr<T>(), status.data_ptr<int32_t>(), G.data_ptr<T>(),
        Y.data_ptr<T>(), N, static_cast<int>(b), r);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    expand_kernel<T><<<grid_for(N * b * r), kComposeThreads, 0, stream>>>(
        eigenvectors.data_ptr<T>(), Y.data_ptr<T>(), status.data_ptr<int32_t>(), G.data_ptr<T>(),
        P.data_ptr<T>(), N, static_cast<int>(b), r, static_cast<T>(mu2));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

namespace {

void correct_from_eigh_cuda(at::Tensor& factor, const at::Tensor& eigenvalues, const at::Tensor& eigenvectors,
                            const at::Tensor& status, double scale, c10::string_view mode,
                            const c10::optional<at::Tensor>& keep_failed, double power) {
  const Mode m = parse_mode(std::string(mode));
  check_from_eigh_args(factor, eigenvalues, eigenvectors, status, scale, m, std::string(mode),
                       keep_failed, power);
  const c10::cuda::CUDAGuard guard(factor.device());
  const int64_t N = eigenvectors.size(0);
  const at::Tensor values = eigenvalues.contiguous(), vectors = eigenvectors.contiguous();
  const at::Tensor st = status.contiguous();
  const at::Tensor keep = keep_failed.has_value() ? keep_failed->contiguous() : at::Tensor();
  const bool half = power == 0.5;
  zero_unused_lanes(factor, N);
  AT_DISPATCH_FLOATING_TYPES(factor.scalar_type(), "hsc::correct_from_eigh_", [&] {
    // The fallback as the CPU op rounds it: mu in the dtype, then squared (and the root of it).
    const scalar_t mu = static_cast<scalar_t>(scale);
    const scalar_t fallback = fallback_step<scalar_t>(scalar_t(1), mu * mu);
    compose_into(factor, values, vectors, st, keep, scale, half ? std::sqrt(fallback) : fallback, m, half);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CUDA, m) { m.impl("correct_from_eigh_", &correct_from_eigh_cuda); }

}  // namespace hsc::cuda
