// CPU implementation of hsc::solve: P = factor G per block.
//
// The product reads each factor once and does 2 b^2 flops per block and column, so it is bound by
// memory, not arithmetic; what it must avoid is torch's batched matmul overhead per small matrix.
// Two mappings:
//   rows      one gradient column and b a multiple of the vector width W: each row of a factor is
//             b / W vectors multiplied by g; W row products at a time are reduced to W entries of
//             p by horizontal_sums (no transposes of the factor);
//   lanes     anything else: lane groups of W blocks as in precondition_cpu.cpp, register
//             transposes bringing entry (i, j) of W factors into one vector.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <memory>

#include "../checks.h"
#include "lanes.h"

namespace hsc::cpu {
namespace {

// The rows mapping: p = F g for blocks [n0, n1), one column, b % W == 0. kChunks = b / W when
// known at compile time (the loops then unroll and the W row products stay in registers), 0 for
// any other multiple of W.
// How many blocks ahead the rows mapping asks for factors.
constexpr int64_t kAhead = 8;

template <class T, int kChunks>
void solve_rows(const T* factor, const T* G, T* P, int64_t n0, int64_t n1, int b) {
  using V = Vec<T>;
  constexpr int W = kLanes<T>;
  const int chunks = kChunks > 0 ? kChunks : b / W;
  std::unique_ptr<V[]> g(new V[chunks]);
  V r[W];
  const int64_t bytes = int64_t(b) * b * sizeof(T);
  for (int64_t n = n0; n < n1; ++n) {
    const T* f = factor + n * b * b;
    // The factors stream from memory: ask for the one kAhead blocks on now.
    if (n + kAhead < n1) {
      const char* next = reinterpret_cast<const char*>(f + kAhead * b * b);
      for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(next + o, 0, 0);
    }
    for (int c = 0; c < chunks; ++c) g[c] = load_vector(G + n * b + c * W);
    for (int i0 = 0; i0 < b; i0 += W) {
      for (int q = 0; q < W; ++q) {
        const T* fi = f + (i0 + q) * b;
        V acc = load_vector(fi) * g[0];
        for (int c = 1; c < chunks; ++c) acc += load_vector(fi + c * W) * g[c];
        r[q] = acc;
      }
      store_vector(P + n * b + i0, horizontal_sums<T>(r));
    }
  }
}

// The lanes mapping: blocks [W g0, W g1), any b, r columns.
template <class T>
void solve_lanes(const T* factor, const T* G, T* P, int64_t N, int64_t g0, int64_t g1, int b,
                 int64_t r) {
  using V = Vec<T>;
  constexpr int W = kLanes<T>;
  const int bb = b * b;
  std::unique_ptr<V[]> storage(new V[bb + 2 * b]);
  V* f = storage.get();  // f[i * b + j]: entry (i, j) of the group's factors
  V* g = f + bb;
  V* p = g + b;
  for (int64_t grp = g0; grp < g1; ++grp) {
    const int64_t n0 = grp * W;
    const int count = static_cast<int>(std::min<int64_t>(W, N - n0));
    const T* fb = factor + n0 * bb;
    if (grp + 1 < g1) {  // the next group's factors, while this one computes
      const char* next = reinterpret_cast<const char*>(fb + W * bb);
      const int64_t bytes = std::min<int64_t>(W, N - n0 - W) * bb * sizeof(T);
      for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(next + o, 0, 0);
    }
    if (count == W && bb % W == 0) {
      blocks_to_lanes(fb, bb, bb, f);
    } else {
      for (int e = 0; e < bb; ++e) f[e] = gather(fb + e, bb, count);
    }
    for (int64_t c = 0; c < r; ++c) {
      const T* gb = G + n0 * b * r + c;
      T* pb = P + n0 * b * r + c;
      for (int i = 0; i < b; ++i) g[i] = gather(gb + i * r, b * r, count);
      for (int i = 0; i < b; ++i) {
        const V* fi = f + i * b;
        V acc = fi[0] * g[0];
        for (int j = 1; j < b; ++j) acc += fi[j] * g[j];
        p[i] = acc;
      }
      for (int l = 0; l < count; ++l)
        for (int i = 0; i < b; ++i) pb[(l * b + i) * r] = p[i][l];
    }
  }
}

template <class T>
void solve_blocks(const T* factor, const T* G, T* P, int64_t N, int b, int64_t r) {
  constexpr int W = kLanes<T>;
  if (r == 1 && b % W == 0) {
    at::parallel_for(0, N, 256, [&](int64_t n0, int64_t n1) {
      switch (b / W) {
        case 1: return solve_rows<T, 1>(factor, G, P, n0, n1, b);
        case 2: return solve_rows<T, 2>(factor, G, P, n0, n1, b);
        case 4: return solve_rows<T, 4>(factor, G, P, n0, n1, b);
        default: return solve_rows<T, 0>(factor, G, P, n0, n1, b);
      }
    });
  } else {
    at::parallel_for(0, (N + W - 1) / W, 16, [&](int64_t g0, int64_t g1) {
      solve_lanes(factor, G, P, N, g0, g1, b, r);
    });
  }
}

at::Tensor solve_cpu(const at::Tensor& factor, const at::Tensor& G) {
  check_factor(factor);
  check_gradient(G, factor.size(0), factor.size(1), factor, "factor");
  const auto ct = compute_dtype(at::promote_types(factor.scalar_type(), G.scalar_type()));
  const at::Tensor f = factor.to(ct).contiguous();
  const at::Tensor g = G.to(ct).contiguous();
  at::Tensor P = at::empty(g.sizes(), g.options());
  const int64_t r = G.dim() == 3 ? G.size(2) : 1;
  if (P.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "hsc::solve", [&] {
      solve_blocks(f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), P.data_ptr<scalar_t>(),
                   f.size(0), static_cast<int>(f.size(1)), r);
    });
  }
  return P.to(G.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CPU, m) { m.impl("solve", &solve_cpu); }

}  // namespace hsc::cpu
