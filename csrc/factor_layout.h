// The layout of the factor `correct` returns, known only to this header and hsc/ops.py.
//
// M^{-1} of every block, its lower triangle packed row by row (entry (i, j), j <= i, is entry
// packed_index(i, j) of packed_size(b)), in tiles of kTile blocks with the blocks innermost: entry
// e of block k at tiled_offset(k, e, packed_size(b)), a tensor of shape
// [tile_count(N), packed_size(b), kTile]. M^{-1} is symmetric, so half of it says everything; and
// the factor is read once every step, so its layout is the one a SIMD lane group (W | kTile
// blocks) or a GPU warp loads as whole vectors. Lanes past the last block are 0.
#pragma once

#include <cstdint>

#include "block_rules.h"

namespace hsc {

constexpr int kTile = 16;
HSC_HD int64_t packed_size(int64_t b) { return b * (b + 1) / 2; }
HSC_HD int packed_index(int i, int j) { return i * (i + 1) / 2 + j; }
HSC_HD int64_t tile_count(int64_t N) { return (N + kTile - 1) / kTile; }
HSC_HD int64_t tiled_offset(int64_t k, int64_t e, int64_t entries) {
  return ((k / kTile) * entries + e) * kTile + k % kTile;
}

}  // namespace hsc
