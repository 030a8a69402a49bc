// CUDA implementation of hsc::correct, hsc::correct_ and hsc::precondition (mirrors
// cpu/correct_cpu.cpp): the launch; the kernels and their thread mapping are in
// correct_kernel.cuh. The spectral modes run the eigh kernels (eigh_kernel.cuh) into scratch
// tensors, then those of correct_from_eigh_kernel.cuh (the factor, or the fused step).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../block_rules.h"
#include "../checks.h"
#include "../correct_call.h"
#include "correct_kernel.cuh"

namespace hsc::cuda {

// Defined in eigh_cuda.cu and correct_from_eigh_cuda.cu.
void eigh_into(const at::Tensor& h, at::Tensor& eigenvalues, at::Tensor& eigenvectors, at::Tensor& status,
               int64_t max_sweeps);
void compose_into(at::Tensor& factor, const at::Tensor& eigenvalues, const at::Tensor& eigenvectors,
                  const at::Tensor& status, const at::Tensor& keep_failed, double scale, double fallback,
                  Mode mode, bool half);
void spectral_step_into(at::Tensor& P, const at::Tensor& G, const at::Tensor& eigenvalues,
                        const at::Tensor& eigenvectors, const at::Tensor& status, double scale, double mu2,
                        Mode mode);

namespace {

template <class T>
void launch_kernel(const Params<T>& p, const Mapping& m) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto grid = static_cast<unsigned>(m.blocks);
  if (m.warp) {
    auto kernel = m.rows == 4 ? warp_kernel<T, 4> : m.rows == 8 ? warp_kernel<T, 8>
                  : m.rows == 16 ? warp_kernel<T, 16> : warp_kernel<T, 32>;
    kernel<<<grid, m.threads(), 0, stream>>>(p, m.teams_per_block);
  } else {
    auto kernel = team_kernel<T>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(m.shared_bytes())));
    kernel<<<grid, m.threads(), m.shared_bytes(), stream>>>(p, m.team_size, m.teams_per_block,
                                                             m.bytes_per_team, m.in_shared);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Chooses the thread mapping for b (correct_kernel.cuh) and launches.
template <class T>
void launch(Params<T> p, const at::TensorOptions& options, at::Tensor& scratch) {
  if (p.N == 0) return;
  int device = 0, max_shared = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const Mapping m = choose_mapping<T>(p.N, p.b, static_cast<size_t>(max_shared));
  if (!m.in_shared) {
    scratch = at::empty({p.N * workspace_entries(p.b)}, options);
    p.scratch = scratch.data_ptr<T>();
  }
  launch_kernel<T>(p, m);
}

// The spectral modes: no damping (reported as 0), the eigen-decomposition of every block into
// scratch tensors (the status is eigh's), then the factor or the step from it. Every launch is on
// the current stream; nothing waits for the device.
void run_spectral(const CorrectionCall& call) {
  call.damping_out.zero_();
  const int64_t N = call.H.size(0), b = call.H.size(1);
  if (N == 0) return;
  at::Tensor values = at::empty({N, b}, call.H.options());
  at::Tensor vectors = at::empty({N, b, b}, call.H.options());
  at::Tensor status = call.status;
  eigh_into(call.H, values, vectors, status, call.max_sweeps);
  AT_DISPATCH_FLOATING_TYPES(call.dtype, "hsc::correct", [&] {
    // mu^2 and the fallback rounded as the CPU op rounds them (correct_call.h: mu^2 in double,
    // then to the dtype).
    const scalar_t mu2 = static_cast<scalar_t>(call.scale * call.scale);
    if (call.P.defined()) {
      at::Tensor P = call.P;
      spectral_step_into(P, call.G, values, vectors, status, call.scale, mu2, call.mode);
    } else {
      at::Tensor factor = call.factor;
      compose_into(factor, values, vectors, status, call.keep_failed, call.scale,
                   fallback_step<scalar_t>(scalar_t(1), mu2), call.mode, false);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const CorrectionCall& call) {
  const c10::cuda::CUDAGuard guard(call.H.device());
  if (is_spectral(call.mode)) {
    run_spectral(call);
    return call.result();
  }
  at::Tensor scratch;
  AT_DISPATCH_FLOATING_TYPES(call.dtype, "hsc::correct", [&] {
    Params<scalar_t> p;
    static_cast<CorrectionArgs<scalar_t>&>(p) = call.args<scalar_t>();
    launch(p, call.H.options(), scratch);
  });
  return call.result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> correct_cuda(const at::Tensor& H,
                                                           const at::Tensor& damping, double scale,
                                                           c10::string_view mode,
                                                           int64_t max_tries, int64_t max_sweeps) {
  return run(CorrectionCall::correct(H, damping, scale, mode, max_tries, max_sweeps));
}

std::tuple<at::Tensor, at::Tensor> correct_in_place_cuda(at::Tensor& factor, const at::Tensor& H,
                                                         const at::Tensor& damping, double scale,
                                                         c10::string_view mode, int64_t max_tries,
                                                         const c10::optional<at::Tensor>& keep_failed,
    int64_t max_sweeps) {
  const CorrectionCall call =
      CorrectionCall::correct_into(factor, H, damping, scale, mode, max_tries, keep_failed,
                                   max_sweeps);
  run(call);
  return call.in_place_result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> precondition_cuda(
    const at::Tensor& H, const at::Tensor& G, const at::Tensor& damping, double scale,
    c10::string_view mode, int64_t max_tries, int64_t max_sweeps) {
  return run(CorrectionCall::precondition(H, G, damping, scale, mode, max_tries, max_sweeps));
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CUDA, m) {
  m.impl("correct", &correct_cuda);
  m.impl("correct_", &correct_in_place_cuda);
  m.impl("precondition", &precondition_cuda);
}

}  // namespace hsc::cuda
