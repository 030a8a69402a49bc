// CPU implementation of hsc::solve: P = M^{-1} G per block, from the factor of `correct`.
//
// A solve reads each factor once and does 2 b^2 flops per block and column, so it is bound by
// memory: the factor (b (b + 1) / 2 entries a block, packed) is what it has to read. Blocks are
// taken in lane groups of W, as in correct_cpu.cpp; the factor's tiled layout (factor_layout.h)
// holds entry (i, j) of a group's W factors as one vector, so each row of P is b W-wide FMAs on
// vectors loaded as they lie. Only G and P are transposed (b values a block).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>

#include "../checks.h"
#include "lanes.h"

namespace hsc::cpu {
namespace {

// kB: the block size when known at compile time (the loops then unroll to fixed offsets, and
// the factor is read in order, as the prefetchers expect), 0 for any other b.
template <class T, int kB>
void solve_groups(const T* factor, const T* G, T* P, int64_t N, int64_t g0, int64_t g1, int b_any,
                  int64_t r) {
  using V = Vec<T>;
  const int b = kB > 0 ? kB : b_any;
  constexpr int W = kLanes<T>;
  static_assert(kTile % W == 0, "a lane group lies within one tile of the factor");
  const int64_t t = packed_size(b);
  std::unique_ptr<V[]> storage(new V[2 * b]);
  V* g = storage.get();
  V* p = g + b;
  for (int64_t grp = g0; grp < g1; ++grp) {
    const int64_t n0 = grp * W;
    const int count = static_cast<int>(std::min<int64_t>(W, N - n0));
    // Entry e of the group's factors: f[e * kTile]. Lanes past the last block read the tile's
    // zeros and are never stored.
    const T* f = factor + tiled_offset(n0, 0, t);
    auto entry = [&](int i, int j) { return load_vector(f + packed_index(i, j) * kTile); };
    for (int64_t c = 0; c < r; ++c) {
      const T* gb = G + n0 * b * r + c;
      T* pb = P + n0 * b * r + c;
      const bool whole = count == W && r == 1;
      if (whole) {
        blocks_to_lanes(gb, b, b, g);
      } else {
        for (int i = 0; i < b; ++i) g[i] = gather(gb + i * r, b * r, count);
      }
      // p_i = sum_{j <= i} F_ij g_j + sum_{j > i} F_ji g_j, reading the factor once and in
      // order: each F_ij below the diagonal serves p_i and p_j.
      for (int i = 0; i < b; ++i) p[i] = V{};
      for (int i = 0; i < b; ++i) {
        const V gi = g[i];
        V acc = p[i];
        for (int j = 0; j < i; ++j) {
          const V v = entry(i, j);
          acc += v * g[j];
          p[j] += v * gi;
        }
        p[i] = acc + entry(i, i) * gi;
      }
      if (whole) {
        lanes_to_blocks(p, b, pb, b);
      } else {
        for (int l = 0; l < count; ++l)
          for (int i = 0; i < b; ++i) pb[(l * b + i) * r] = p[i][l];
      }
    }
  }
}

at::Tensor solve_cpu(const at::Tensor& factor, const at::Tensor& G) {
  check_solve_args(factor, G);
  const int64_t N = G.size(0), b = G.size(1);
  const auto ct = compute_dtype(at::promote_types(factor.scalar_type(), G.scalar_type()));
  const at::Tensor f = factor.to(ct).contiguous();
  const at::Tensor g = G.to(ct).contiguous();
  at::Tensor P = at::empty(g.sizes(), g.options());
  const int64_t r = G.dim() == 3 ? G.size(2) : 1;
  if (P.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "hsc::solve", [&] {
      constexpr int W = kLanes<scalar_t>;
      at::parallel_for(0, (N + W - 1) / W, 16, [&](int64_t g0, int64_t g1) {
        const auto run = [&](auto kernel) {
          kernel(f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), P.data_ptr<scalar_t>(), N, g0, g1,
                 static_cast<int>(b), r);
        };
        switch (b) {
          case 8: return run(solve_groups<scalar_t, 8>);
          case 16: return run(solve_groups<scalar_t, 16>);
          case 32: return run(solve_groups<scalar_t, 32>);
          default: return run(solve_groups<scalar_t, 0>);
        }
      });
    });
  }
  return P.to(G.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CPU, m) { m.impl("solve", &solve_cpu); }

}  // namespace hsc::cpu
