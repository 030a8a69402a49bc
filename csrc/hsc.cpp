// The hsc operator library: one schema per op; backends register their kernels beside their code
// (cpu/*_cpu.cpp, cuda/*_cuda.cu) and fake kernels are registered from hsc/ops.py.
#include <torch/extension.h>
#include <torch/library.h>

#include "checks.h"

namespace hsc {

// P = factor G per block. `correct` returns M^{-1} itself as its factor, so solving is one batched
// matrix product: this composite kernel serves every device without its own (cuBLAS on a GPU);
// the CPU has a kernel of its own (cpu/solve_cpu.cpp) that avoids matmul's per-matrix overhead.
at::Tensor solve(const at::Tensor& factor, const at::Tensor& G) {
  check_factor(factor);
  check_gradient(G, factor.size(0), factor.size(1), factor, "factor");
  const auto ct = compute_dtype(at::promote_types(factor.scalar_type(), G.scalar_type()));
  const at::Tensor f = factor.to(ct);
  const at::Tensor g = G.to(ct);
  const at::Tensor P = G.dim() == 2 ? at::matmul(f, g.unsqueeze(-1)).squeeze(-1) : at::matmul(f, g);
  return P.to(G.scalar_type());
}

TORCH_LIBRARY(hsc, m) {
  m.def("correct(Tensor H, Tensor damping, float scale, str mode, int max_tries)"
        " -> (Tensor factor, Tensor damping, Tensor status)");
  // Not `mode`: torch's functionalization of mutating ops (torch.compile) takes a `mode` of its own.
  m.def("correct_(Tensor(a!) factor, Tensor H, Tensor damping, float scale, str correction_mode,"
        " int max_tries, bool keep_failed) -> (Tensor damping, Tensor status)");
  m.def("solve(Tensor factor, Tensor G) -> Tensor");
  m.def("precondition(Tensor H, Tensor G, Tensor damping, float scale, str mode, int max_tries)"
        " -> (Tensor P, Tensor damping, Tensor status)");
  m.def("accumulate_probes(Tensor(a!) state, Tensor hvps, Tensor signs, Tensor mask, float ema,"
        " bool first) -> Tensor");
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
}
