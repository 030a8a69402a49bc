// CPU implementation of hsc::eigh: the eigen-decomposition of S = (H + H^T)/2 for every block, by
// cyclic Jacobi on lane groups of W blocks (lane_eigh.h; mirrored by cuda/eigh_cuda.cu).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "../block_rules.h"
#include "../checks.h"
#include "lane_group.h"

namespace hsc::cpu {
namespace {

// Eigenvalues ascending; column j of a block's eigenvectors is the eigenvector of eigenvalue j.
// Status 0: converged; 2: a NaN or Inf in H (eigenvalues and eigenvectors NaN); 3: not converged
// within max_sweeps (the last iterate: orthogonal eigenvectors, diagonal as eigenvalues).
template <class T>
void eigh_blocks(const T* H, T* eigenvalues, T* eigenvectors, int32_t* status, int64_t N, int b,
                 int max_sweeps) {
  using V = Vec<T>;
  using mask = typename LaneOps<V>::mask;
  constexpr int W = kLanes<T>;
  const int64_t groups = (N + W - 1) / W;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    Group<T> grp(b);
    std::vector<T> lambda(b);
    std::vector<int> order(b);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n0 = g * W;
      const int count = static_cast<int>(std::min<int64_t>(W, N - n0));
      V max_abs, inverse_scale;
      int sweeps;
      const mask finite = grp.load(H, n0, count, max_abs);
      const mask ok = grp.eigen(finite, max_abs, max_sweeps, inverse_scale, sweeps);
      for (int l = 0; l < count; ++l) {
        const int64_t n = n0 + l;
        status[n] = status_code(finite[l] != 0, ok[l] != 0, false);
        T* values = eigenvalues + n * b;
        T* vectors = eigenvectors + n * b * b;
        if (!finite[l]) {
          std::fill(values, values + b, std::numeric_limits<T>::quiet_NaN());
          std::fill(vectors, vectors + b * b, std::numeric_limits<T>::quiet_NaN());
          continue;
        }
        for (int k = 0; k < b; ++k) lambda[k] = grp.ws.s(k, k)[l] * inverse_scale[l];
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return lambda[x] < lambda[y]; });
        for (int j = 0; j < b; ++j) {
          const int k = order[j];
          values[j] = lambda[k];
          for (int i = 0; i < b; ++i) vectors[i * b + j] = grp.ws.m(k, i)[l];  // row k of V^T
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> eigh_cpu(const at::Tensor& H, int64_t max_sweeps) {
  check_eigh_args(H, max_sweeps);
  const int64_t N = H.size(0), b = H.size(1);
  const at::Tensor h = H.to(compute_dtype(H.scalar_type())).contiguous();
  at::Tensor eigenvalues = at::empty({N, b}, h.options());
  at::Tensor eigenvectors = at::empty({N, b, b}, h.options());
  at::Tensor status = at::empty({N}, h.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "hsc::eigh", [&] {
    eigh_blocks<scalar_t>(h.data_ptr<scalar_t>(), eigenvalues.data_ptr<scalar_t>(),
                          eigenvectors.data_ptr<scalar_t>(), status.data_ptr<int32_t>(), N,
                          static_cast<int>(b), static_cast<int>(max_sweeps));
  });
  return {eigenvalues, eigenvectors, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CPU, m) { m.impl("eigh", &eigh_cpu); }

}  // namespace hsc::cpu
