// The hsc operator library: one schema per op; backends register their kernels beside their code
// (cpu/*_cpu.cpp, cuda/*_cuda.cu) and fake kernels are registered from hsc/ops.py.
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>

#include "block_rules.h"
#include "checks.h"
#include "factor_layout.h"

namespace hsc {

// P = M^{-1} G per block from the factor of `correct`. This composite kernel serves the devices
// without a kernel of their own: it expands the tiled, packed factor to full symmetric blocks and
// multiplies. The CPU and CUDA have their own (cpu/solve_cpu.cpp, cuda/solve_cuda.cu), which read
// the factor as it lies.
at::Tensor solve(const at::Tensor& factor, const at::Tensor& G) {
  check_solve_args(factor, G);
  const int64_t N = G.size(0), b = G.size(1);
  const auto ct = compute_dtype(at::promote_types(factor.scalar_type(), G.scalar_type()));
  // Entry (i, j) of a block is packed entry packed_index(max(i, j), min(i, j)) (factor_layout.h):
  // the b * b indices are made on the host and copied without waiting for the device.
  at::Tensor index = at::empty({b * b}, at::TensorOptions().dtype(at::kLong));
  int64_t* at_ij = index.data_ptr<int64_t>();
  for (int i = 0; i < b; ++i)
    for (int j = 0; j < b; ++j) at_ij[i * b + j] = packed_index(std::max(i, j), std::min(i, j));
  const at::Tensor where = index.to(factor.device(), /*non_blocking=*/true);
  const at::Tensor rows = factor.to(ct).transpose(1, 2).reshape({-1, packed_size(b)}).narrow(0, 0, N);
  const at::Tensor f = rows.index_select(1, where).view({N, b, b});
  const at::Tensor g = G.to(ct);
  const at::Tensor P = G.dim() == 2 ? at::matmul(f, g.unsqueeze(-1)).squeeze(-1) : at::matmul(f, g);
  return P.to(G.scalar_type());
}

TORCH_LIBRARY(hsc, m) {
  m.def("correct(Tensor H, Tensor damping, float scale, str mode, int max_tries, int max_sweeps)"
        " -> (Tensor factor, Tensor damping, Tensor status)");
  // Not `mode`: torch's functionalization of mutating ops (torch.compile) takes a `mode` of its own.
  m.def("correct_(Tensor(a!) factor, Tensor H, Tensor damping, float scale, str correction_mode,"
        " int max_tries, Tensor? keep_failed, int max_sweeps) -> (Tensor damping, Tensor status)");
  m.def("solve(Tensor factor, Tensor G) -> Tensor");
  m.def("precondition(Tensor H, Tensor G, Tensor damping, float scale, str mode, int max_tries,"
        " int max_sweeps) -> (Tensor P, Tensor damping, Tensor status)");
  m.def("eigh(Tensor H, int max_sweeps) -> (Tensor eigenvalues, Tensor eigenvectors, Tensor status)");
  m.def("correct_from_eigh_(Tensor(a!) factor, Tensor eigenvalues, Tensor eigenvectors, Tensor status,"
        " float scale, str correction_mode, Tensor? keep_failed, float power) -> ()");
  m.def("accumulate_probes(Tensor(a!) state, Tensor hvps, Tensor signs, Tensor mask, float ema,"
        " bool first) -> Tensor");
  m.def("fold_estimate_(Tensor(a!) state, Tensor estimate, Tensor mask, float ema, bool first)"
        " -> Tensor");
  m.def("graft_(Tensor(a!) P, Tensor G, Tensor ends) -> Tensor");
}

TORCH_LIBRARY_IMPL(hsc, CompositeExplicitAutograd, m) { m.impl("solve", &solve); }

}  // namespace hsc

// What this build holds, for hsc.info().
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef HSC_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.attr("cuda_version") = HSC_CUDA_VERSION;
#else
  m.attr("cuda_compiled") = false;
  m.attr("cuda_version") = "";
#endif
#if defined(__AVX512F__)
  m.attr("simd") = "avx512";
#elif defined(__AVX2__)
  m.attr("simd") = "avx2";
#else
  m.attr("simd") = "baseline";
#endif
  // The mode table (block_rules.h) as (name, spectral, nonnegative) rows in its order, and the
  // factor's tile (factor_layout.h): hsc.ops reads its MODES, EIGH_MODES, NONNEGATIVE_MODES and
  // TILE from them.
  pybind11::list modes;
  for (const hsc::ModeRule& row : hsc::kModes)
    modes.append(pybind11::make_tuple(row.name, row.spectral, row.nonnegative));
  m.attr("modes") = pybind11::tuple(modes);
  m.attr("factor_tile") = hsc::kTile;
}
