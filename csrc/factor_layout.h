// The layout of the factor `correct` returns, known only to this header and hsc/ops.py.
//
// M^{-1} of every block, its lower triangle packed row by row (entry (i, j), j <= i, is entry
// packed_index(i, j) of packed_size(b)), in tiles of kTile blocks with the blocks innermost: entry
// e of block k at tiled_offset(k, e, packed_size(b)), a tensor of shape
// [tile_count(N), packed_size(b), kTile]. M^{-1} is symmetric, so half of it says everything; and
// the factor is read once every step, so its layout is the one a SIMD lane group (W | kTile
// blocks) or a GPU warp loads as whole vectors. Lanes past the last block are 0.
//
// kTile reaches Python as hsc._C.factor_tile (hsc.ops.TILE). Everything else that addresses the
// factor calls these functions: the kernels, the composite solve (hsc.cpp), the argument checks.
#pragma once

#include <cmath>
#include <cstdint>

#include "block_rules.h"

namespace hsc {

constexpr int kTile = 16;
// Entries of b rows of the packed lower triangle: b (b + 1) / 2, the size of a block's packed
// factor, and the packed index of entry (b, 0).
HSC_HD int64_t packed_size(int64_t b) { return b * (b + 1) / 2; }
HSC_HD int packed_index(int i, int j) { return i * (i + 1) / 2 + j; }
// The inverse of packed_index: row i and column j (j <= i) of packed entry e.
HSC_HD void packed_position(int64_t e, int& i, int& j) {
  int r = static_cast<int>((::sqrt(8.0 * static_cast<double>(e) + 1.0) - 1.0) / 2.0);
  while (packed_size(r) > e) --r;  // the square root may round either way
  while (packed_size(r + 1) <= e) ++r;
  i = r;
  j = static_cast<int>(e - packed_size(r));
}
HSC_HD int64_t tile_count(int64_t N) { return (N + kTile - 1) / kTile; }
HSC_HD int64_t tiled_offset(int64_t k, int64_t e, int64_t entries) {
  return ((k / kTile) * entries + e) * kTile + k % kTile;
}

}  // namespace hsc
