// Argument checks shared by every backend of the hsc ops. Each message names the argument and
// what was expected; TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "block_rules.h"
#include "factor_layout.h"

namespace hsc {

// The quoted names of the modes (kModes, block_rules.h) whose row `pick` accepts, in table order:
// "'a', 'b', 'c'", or "'a', 'b' or 'c'" with last_separator " or ".
template <class Pick>
std::string mode_names(Pick pick, const char* last_separator = ", ") {
  std::vector<const char*> names;
  for (const ModeRule& row : kModes)
    if (pick(row)) names.push_back(row.name);
  std::string out;
  for (size_t k = 0; k < names.size(); ++k) {
    if (k > 0) out += k + 1 == names.size() ? last_separator : ", ";
    out += std::string("'") + names[k] + "'";
  }
  return out;
}

inline Mode parse_mode(const std::string& mode) {
  for (const ModeRule& row : kModes)
    if (mode == row.name) return row.mode;
  TORCH_CHECK_VALUE(false, "hsc: mode must be one of ", mode_names([](const ModeRule&) { return true; }),
                    ", got '", mode, "'");
}

// mu: finite, > 0, and 1/mu finite in the compute dtype (the spectral modes' multipliers reach
// 1/mu; a smaller mu would make a step of a flat direction infinite).
inline void check_scale(double scale, at::ScalarType compute) {
  TORCH_CHECK_VALUE(scale > 0 && std::isfinite(scale),
                    "hsc: scale (mu) must be a finite number > 0, got ", scale);
  const double largest = compute == at::kDouble ? std::numeric_limits<double>::max()
                                                : std::numeric_limits<float>::max();
  TORCH_CHECK_VALUE(1.0 / scale <= largest, "hsc: scale (mu) must be at least 1 / ", largest,
                    " (1/mu must be finite in ", compute, "), got ", scale);
}

// The eigensolver's sweep limit.
inline void check_max_sweeps(int64_t max_sweeps) {
  TORCH_CHECK_VALUE(max_sweeps >= 1 && max_sweeps <= 1000, "hsc: max_sweeps must be in [1, 1000], got ",
                    max_sweeps);
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()),
                   "hsc: ", name, " must be a floating-point tensor (float32, float64, float16 or "
                   "bfloat16), got ", t.scalar_type());
}

// The dtype the arithmetic runs in: float16 and bfloat16 are computed in float32.
inline at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_blocks(const at::Tensor& H) {
  TORCH_CHECK_VALUE(H.dim() == 3, "hsc: H must have shape [N, b, b] (a stack of square blocks), got ",
                    H.dim(), " dimension(s) ", H.sizes());
  TORCH_CHECK_VALUE(H.size(1) == H.size(2), "hsc: H must hold square blocks [N, b, b], got ",
                    H.sizes());
  TORCH_CHECK_VALUE(H.size(1) >= 1, "hsc: H's block size b must be at least 1, got ", H.sizes());
  check_floating(H, "H");
}

// The factor of N blocks of size b (its layout: factor_layout.h).
inline void check_factor(const at::Tensor& factor, int64_t N, int64_t b) {
  TORCH_CHECK_VALUE(factor.dim() == 3 && factor.size(0) == tile_count(N) &&
                    factor.size(1) == packed_size(b) && factor.size(2) == kTile,
                    "hsc: factor must have shape [ceil(N / ", kTile, "), b (b + 1) / 2, ", kTile,
                    "] = [", tile_count(N), ", ", packed_size(b), ", ", kTile, "] for N = ", N,
                    " blocks of b = ", b, " (the factor field of a Correction), got ", factor.sizes());
  check_floating(factor, "factor");
}

inline void check_gradient(const at::Tensor& G, int64_t N, int64_t b, const at::Tensor& like,
                           const char* like_name) {
  TORCH_CHECK_VALUE(G.dim() == 2 || G.dim() == 3,
                    "hsc: G must have shape [N, b] or [N, b, r], got ", G.sizes());
  TORCH_CHECK_VALUE(G.size(0) == N && G.size(1) == b, "hsc: G must have shape [N, b] or [N, b, r] "
                    "with N = ", N, " and b = ", b, " to match ", like_name, ", got ", G.sizes());
  check_floating(G, "G");
  TORCH_CHECK_VALUE(G.device() == like.device(), "hsc: G is on ", G.device(), " but ", like_name,
                    " is on ", like.device(), "; both must be on the same device");
}

inline void check_correction_args(const at::Tensor& H, const at::Tensor& damping, double scale,
                                  int64_t max_tries, int64_t max_sweeps) {
  check_blocks(H);
  TORCH_CHECK_VALUE(damping.dim() == 1 && damping.size(0) == H.size(0),
                    "hsc: damping must be a float or a tensor of shape [N] = [", H.size(0),
                    "], got shape ", damping.sizes());
  check_floating(damping, "damping");
  TORCH_CHECK_VALUE(damping.device() == H.device(), "hsc: damping is on ", damping.device(),
                    " but H is on ", H.device(), "; both must be on the same device");
  TORCH_CHECK_VALUE(scale > 0 && std::isfinite(scale),
                    "hsc: scale (mu) must be a finite number > 0, got ", scale);
  TORCH_CHECK_VALUE(max_tries >= 1, "hsc: max_tries must be >= 1, got ", max_tries);
  check_max_sweeps(max_sweeps);
}

// The running estimate `state`, updated in place by accumulate_probes and fold_estimate_.
inline void check_state(const at::Tensor& state) {
  TORCH_CHECK_VALUE(state.dim() == 3 && state.size(1) == state.size(2),
                    "hsc: state must have shape [N, b, b], got ", state.sizes());
  TORCH_CHECK_VALUE(state.is_contiguous(), "hsc: state must be contiguous (it is updated in place)");
  TORCH_CHECK_TYPE(state.scalar_type() == at::kFloat || state.scalar_type() == at::kDouble,
                   "hsc: state must be float32 or float64, got ", state.scalar_type());
}

// mask: [N, b] bool on state's device, False at padding slots.
inline void check_mask(const at::Tensor& mask, const at::Tensor& state) {
  const int64_t N = state.size(0), b = state.size(1);
  TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == N && mask.size(1) == b,
                    "hsc: mask must have shape [N, b] = [", N, ", ", b, "], got ", mask.sizes());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "hsc: mask must be a bool tensor, got ",
                   mask.scalar_type());
  TORCH_CHECK_VALUE(mask.device() == state.device(), "hsc: mask must be on state's device ",
                    state.device(), ", got ", mask.device());
}

inline void check_ema(double ema) {
  TORCH_CHECK_VALUE(ema >= 0 && ema < 1, "hsc: ema must be in [0, 1), got ", ema);
}

inline void check_probe_args(const at::Tensor& state, const at::Tensor& hvps,
                             const at::Tensor& signs, const at::Tensor& mask, double ema) {
  check_state(state);
  const int64_t N = state.size(0), b = state.size(1);
  TORCH_CHECK_VALUE(hvps.dim() == 4 && hvps.size(1) == b && hvps.size(2) == N && hvps.size(3) == b,
                    "hsc: hvps must have shape [samples, b, N, b] = [S, ", b, ", ", N, ", ", b,
                    "], got ", hvps.sizes());
  TORCH_CHECK_TYPE(hvps.scalar_type() == state.scalar_type(), "hsc: hvps must have state's dtype ",
                   state.scalar_type(), ", got ", hvps.scalar_type());
  TORCH_CHECK_VALUE(hvps.size(0) >= 1, "hsc: hvps must hold at least one sign draw");
  TORCH_CHECK_VALUE(signs.dim() == 2 && signs.size(0) == hvps.size(0) && signs.size(1) == N,
                    "hsc: signs must have shape [samples, N] = [", hvps.size(0), ", ", N,
                    "], got ", signs.sizes());
  check_mask(mask, state);
  for (const at::Tensor* t : {&hvps, &signs})
    TORCH_CHECK_VALUE(t->device() == state.device(), "hsc: hvps and signs must be on state's "
                      "device ", state.device(), ", got ", t->device());
  check_ema(ema);
}

// hsc::fold_estimate_(state, estimate, mask, ema, first)
inline void check_fold_args(const at::Tensor& state, const at::Tensor& estimate,
                            const at::Tensor& mask, double ema) {
  check_state(state);
  TORCH_CHECK_VALUE(estimate.sizes() == state.sizes(), "hsc: estimate must have state's shape ",
                    state.sizes(), ", got ", estimate.sizes());
  TORCH_CHECK_TYPE(estimate.scalar_type() == state.scalar_type(),
                   "hsc: estimate must have state's dtype ", state.scalar_type(), ", got ",
                   estimate.scalar_type());
  TORCH_CHECK_VALUE(estimate.device() == state.device(), "hsc: estimate must be on state's device ",
                    state.device(), ", got ", estimate.device());
  check_mask(mask, state);
  check_ema(ema);
}

// hsc::eigh(H, max_sweeps)
inline void check_eigh_args(const at::Tensor& H, int64_t max_sweeps) {
  check_blocks(H);
  check_max_sweeps(max_sweeps);
}

// hsc::correct_from_eigh_(factor, eigenvalues, eigenvectors, status, scale, mode, keep_failed):
// the outputs of hsc::eigh, a factor in their dtype, a spectral mode.
inline void check_from_eigh_args(const at::Tensor& factor, const at::Tensor& eigenvalues,
                                 const at::Tensor& eigenvectors, const at::Tensor& status,
                                 double scale, Mode mode, const std::string& mode_name,
                                 const c10::optional<at::Tensor>& keep_failed, double power) {
  TORCH_CHECK_VALUE(is_spectral(mode), "hsc: correct_from_eigh_ takes a spectral mode (",
                    mode_names([](const ModeRule& row) { return row.spectral; }, " or "), "), got '",
                    mode_name, "'");
  TORCH_CHECK_VALUE(eigenvectors.dim() == 3 && eigenvectors.size(1) == eigenvectors.size(2) &&
                    eigenvectors.size(1) >= 1,
                    "hsc: eigenvectors must have shape [N, b, b] (the eigenvectors of hsc.ops.eigh), got ",
                    eigenvectors.sizes());
  const int64_t N = eigenvectors.size(0), b = eigenvectors.size(1);
  TORCH_CHECK_VALUE(eigenvalues.dim() == 2 && eigenvalues.size(0) == N && eigenvalues.size(1) == b,
                    "hsc: eigenvalues must have shape [N, b] = [", N, ", ", b, "], got ",
                    eigenvalues.sizes());
  TORCH_CHECK_VALUE(status.dim() == 1 && status.size(0) == N, "hsc: status must have shape [N] = [",
                    N, "], got ", status.sizes());
  TORCH_CHECK_TYPE(status.scalar_type() == at::kInt, "hsc: status must be int32, got ",
                   status.scalar_type());
  TORCH_CHECK_TYPE(eigenvalues.scalar_type() == at::kFloat || eigenvalues.scalar_type() == at::kDouble,
                   "hsc: eigenvalues must be float32 or float64, got ", eigenvalues.scalar_type());
  TORCH_CHECK_TYPE(eigenvectors.scalar_type() == eigenvalues.scalar_type(),
                   "hsc: eigenvectors must have eigenvalues' dtype ", eigenvalues.scalar_type(),
                   ", got ", eigenvectors.scalar_type());
  check_factor(factor, N, b);
  TORCH_CHECK_TYPE(factor.scalar_type() == eigenvalues.scalar_type(), "hsc: factor must have dtype ",
                   eigenvalues.scalar_type(), " (the eigenvalues'), got ", factor.scalar_type());
  TORCH_CHECK_VALUE(factor.is_contiguous(), "hsc: factor must be contiguous (it is written in place)");
  check_scale(scale, eigenvalues.scalar_type());
  TORCH_CHECK_VALUE(power == 1.0 || (power == 0.5 && is_nonnegative(mode)),
                    "hsc: power must be 1 (M^-1), or 0.5 (M^-1/2) in mode ",
                    mode_names([](const ModeRule& row) { return row.nonnegative; }, " or "),
                    " (whose M^-1 is positive definite), got ", power, " in mode '", mode_name, "'");
  for (const at::Tensor* t : {&eigenvalues, &eigenvectors, &status})
    TORCH_CHECK_VALUE(t->device() == factor.device(), "hsc: eigenvalues, eigenvectors and status "
                      "must be on factor's device ", factor.device(), ", got ", t->device());
  if (keep_failed.has_value()) {
    const at::Tensor& keep = *keep_failed;
    TORCH_CHECK_VALUE(keep.dim() == 1 && keep.size(0) == N, "hsc: keep_failed must have shape [N] = [",
                      N, "], got ", keep.sizes());
    TORCH_CHECK_TYPE(keep.scalar_type() == at::kBool, "hsc: keep_failed must be a bool tensor, got ",
                     keep.scalar_type());
    TORCH_CHECK_VALUE(keep.device() == factor.device(), "hsc: keep_failed is on ", keep.device(),
                      " but factor is on ", factor.device(), "; both must be on the same device");
  }
}

// The lanes of the factor's last tile past the last block hold 0 (kernels write real blocks only).
inline void zero_unused_lanes(at::Tensor& factor, int64_t N) {
  const int64_t used = N % kTile;
  if (used != 0) factor.select(0, tile_count(N) - 1).narrow(1, used, kTile - used).zero_();
}

// hsc::solve(factor, G): N and b from G, then the factor's shape against them.
inline void check_solve_args(const at::Tensor& factor, const at::Tensor& G) {
  TORCH_CHECK_VALUE(G.dim() == 2 || G.dim() == 3, "hsc: G must have shape [N, b] or [N, b, r], got ",
                    G.sizes());
  check_factor(factor, G.size(0), G.size(1));
  check_gradient(G, G.size(0), G.size(1), factor, "factor");
}

// hsc::graft_(P, G, ends): P (updated in place) and G are [N, b] of one dtype and device; ends are
// the int64 segment ends on their device.
inline void check_graft_args(const at::Tensor& P, const at::Tensor& G, const at::Tensor& ends) {
  TORCH_CHECK_VALUE(P.dim() == 2, "hsc: P must have shape [N, b], got ", P.sizes());
  TORCH_CHECK_VALUE(P.is_contiguous(), "hsc: P must be contiguous (it is rescaled in place)");
  TORCH_CHECK_TYPE(P.scalar_type() == at::kFloat || P.scalar_type() == at::kDouble,
                   "hsc: P must be float32 or float64, got ", P.scalar_type());
  TORCH_CHECK_VALUE(G.sizes() == P.sizes(), "hsc: G must have P's shape ", P.sizes(), ", got ",
                    G.sizes());
  TORCH_CHECK_TYPE(G.scalar_type() == P.scalar_type(), "hsc: G must have P's dtype ",
                   P.scalar_type(), ", got ", G.scalar_type());
  TORCH_CHECK_VALUE(G.device() == P.device(), "hsc: G must be on P's device ", P.device(), ", got ",
                    G.device());
  TORCH_CHECK_VALUE(ends.dim() == 1, "hsc: ends must be a 1-D tensor of segment ends, got shape ",
                    ends.sizes());
  TORCH_CHECK_TYPE(ends.scalar_type() == at::kLong, "hsc: ends must be int64, got ",
                   ends.scalar_type());
  TORCH_CHECK_VALUE(ends.device() == P.device(), "hsc: ends must be on P's device ", P.device(),
                    ", got ", ends.device());
}

}  // namespace hsc
