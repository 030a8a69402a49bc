// The rule of hsc::graft_ (docs/contract.md §8), written once for the CPU and the CUDA kernel:
// each segment of rows (one parameter tensor's blocks) of the preconditioned gradient P is
// rescaled to the norm of the same rows of the raw gradient G. Norms are accumulated in float64 for
// every input dtype, so that float32 sums of squares cannot overflow and both backends agree.
#pragma once

#include <cmath>
#include <cstdint>

#include "block_rules.h"

namespace hsc {

// The divisor is at least this: an all-zero segment of P stays zero instead of 0/0.
constexpr double kGraftTiny = 1e-30;

HSC_HD int64_t clip_end(int64_t end, int64_t N) { return end < 0 ? 0 : (end > N ? N : end); }

// Rows [start, end) of segment s of N rows: from the largest of the earlier ends (0 for s = 0) to
// ends[s], every end clipped to [0, N]; a segment whose end lies before its start is empty. For
// valid ends (non-decreasing, in [0, N]) that is ends[s - 1] to ends[s]. The CPU op checks the ends
// (they are on the host); the CUDA kernel applies this rule instead, so that bad ends can neither
// reach outside P nor make two segments overlap, without the op waiting for the device.
HSC_HD void segment_rows(const int64_t* ends, int64_t s, int64_t N, int64_t* start, int64_t* end) {
  int64_t a = 0;
  for (int64_t i = 0; i < s; ++i) {
    const int64_t e = clip_end(ends[i], N);
    a = e > a ? e : a;
  }
  const int64_t e = clip_end(ends[s], N);
  *start = a;
  *end = e > a ? e : a;
}

// The factor that takes P's segment to G's segment's norm, from the two sums of squares. A NaN
// norm stays NaN (the comparison keeps it), so a NaN in P spreads over its segment.
HSC_HD double graft_ratio(double raw_squares, double new_squares) {
  const double new_norm = sqrt(new_squares);
  return sqrt(raw_squares) / (new_norm < kGraftTiny ? kGraftTiny : new_norm);
}

}  // namespace hsc
