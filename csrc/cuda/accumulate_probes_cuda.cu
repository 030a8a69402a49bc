// CUDA implementation of hsc::accumulate_probes (mirrors cpu/accumulate_probes_cpu.cpp): one
// thread block per diagonal block k. A first pass over the block's entries decides whether the
// estimate is finite; the second recomputes each entry and folds it into the state (re-reading
// the probe results, which the first pass left in L2, instead of holding b^2 values on chip).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../accumulate_probes.h"
#include "../checks.h"

namespace hsc::cuda {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void accumulate_probes_kernel(T* state, const T* hvps, const T* signs, const bool* mask,
                                         bool* accepted, int64_t S, int64_t N, int64_t b, T ema,
                                         bool first) {
  const int64_t k = blockIdx.x;
  const bool* real = mask + k * b;
  int non_finite = 0;
  for (int64_t e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int64_t i = e / b, j = e % b;
    if (real[i] && real[j] && !LaneOps<T>::finite(probe_entry(hvps, signs, S, N, b, k, i, j)))
      non_finite = 1;
  }
  T* st = state + k * b * b;
  int stale = 0;  // the state holds no finite estimate yet: start afresh, as on the first refresh
  for (int64_t e = threadIdx.x; e < b * b; e += blockDim.x)
    if (!LaneOps<T>::finite(st[e])) stale = 1;
  const bool finite = __syncthreads_or(non_finite) == 0;
  const bool fresh = first || __syncthreads_or(stale) != 0;
  if (threadIdx.x == 0) accepted[k] = finite;
  // A non-finite estimate leaves a finite state as it was; with nothing to keep it is written.
  if (!finite && !fresh) return;
  for (int64_t e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int64_t i = e / b, j = e % b;
    st[e] = folded_entry(st[e], probe_entry(hvps, signs, S, N, b, k, i, j), real[i] && real[j],
                         i == j, ema, fresh);
  }
}

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
    accumulate_probes_kernel<scalar_t><<<static_cast<unsigned>(N), kThreads, 0,
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
