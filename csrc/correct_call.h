// Host side of hsc::correct and hsc::precondition, shared by every backend: argument checks, the
// compute dtype, contiguous inputs, the output tensors, and the kernel arguments.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <tuple>

#include "block_rules.h"
#include "checks.h"
#include "factor_layout.h"

namespace hsc {

struct CorrectionCall {
  Mode mode;
  double scale;
  int64_t max_tries;
  int64_t max_sweeps;
  at::ScalarType H_dtype, G_dtype, dtype;  // inputs' dtypes and the compute dtype
  at::Tensor H, G, damping;                // contiguous, in the compute dtype (G: fused path only)
  at::Tensor factor, P, damping_out, status;
  at::Tensor keep_failed;  // correct_: [N] bool, contiguous, or undefined

  // hsc::correct(H, damping, scale, mode, max_tries, max_sweeps)
  static CorrectionCall correct(const at::Tensor& H, const at::Tensor& damping, double scale,
                                c10::string_view mode, int64_t max_tries, int64_t max_sweeps) {
    check_correction_args(H, damping, scale, max_tries, max_sweeps);
    CorrectionCall c = common(H, H.scalar_type(), damping, scale, mode, max_tries, max_sweeps);
    c.factor = at::empty({tile_count(H.size(0)), packed_size(H.size(1)), kTile}, c.H.options());
    zero_unused_lanes(c.factor, H.size(0));
    return c;
  }

  // hsc::correct_(factor, H, damping, scale, mode, max_tries, keep_failed, max_sweeps): the factor is written
  // in place, so a caller that refreshes repeatedly reuses one buffer instead of faulting in fresh
  // pages for every refresh; block k keeps its factor when it fails where keep_failed[k].
  static CorrectionCall correct_into(const at::Tensor& factor, const at::Tensor& H,
                                     const at::Tensor& damping, double scale,
                                     c10::string_view mode, int64_t max_tries,
                                     const c10::optional<at::Tensor>& keep_failed, int64_t max_sweeps) {
    check_correction_args(H, damping, scale, max_tries, max_sweeps);
    CorrectionCall c = common(H, H.scalar_type(), damping, scale, mode, max_tries, max_sweeps);
    check_factor(factor, H.size(0), H.size(1));
    TORCH_CHECK_TYPE(factor.scalar_type() == c.dtype, "hsc: factor must have dtype ", c.dtype,
                     " (H's compute dtype), got ", factor.scalar_type());
    TORCH_CHECK_VALUE(factor.device() == H.device(), "hsc: factor is on ", factor.device(),
                      " but H is on ", H.device(), "; both must be on the same device");
    TORCH_CHECK_VALUE(factor.is_contiguous(), "hsc: factor must be contiguous (it is written in place)");
    c.factor = factor;
    if (keep_failed.has_value()) {
      const at::Tensor& keep = *keep_failed;
      TORCH_CHECK_VALUE(keep.dim() == 1 && keep.size(0) == H.size(0),
                        "hsc: keep_failed must have shape [N] = [", H.size(0), "], got ", keep.sizes());
      TORCH_CHECK_TYPE(keep.scalar_type() == at::kBool, "hsc: keep_failed must be a bool tensor, got ",
                       keep.scalar_type());
      TORCH_CHECK_VALUE(keep.device() == H.device(), "hsc: keep_failed is on ", keep.device(),
                        " but H is on ", H.device(), "; both must be on the same device");
      c.keep_failed = keep.contiguous();
    }
    zero_unused_lanes(c.factor, H.size(0));
    return c;
  }

  // hsc::precondition(H, G, damping, scale, mode, max_tries, max_sweeps)
  static CorrectionCall precondition(const at::Tensor& H, const at::Tensor& G,
                                     const at::Tensor& damping, double scale,
                                     c10::string_view mode, int64_t max_tries, int64_t max_sweeps) {
    check_correction_args(H, damping, scale, max_tries, max_sweeps);
    check_gradient(G, H.size(0), H.size(1), H, "H");
    CorrectionCall c = common(H, at::promote_types(H.scalar_type(), G.scalar_type()), damping,
                              scale, mode, max_tries, max_sweeps);
    c.G_dtype = G.scalar_type();
    c.G = G.to(c.dtype).contiguous();
    c.P = at::empty(c.G.sizes(), c.G.options());
    return c;
  }

  template <class T>
  CorrectionArgs<T> args() const {
    CorrectionArgs<T> a;
    a.H = H.data_ptr<T>();
    a.damping_in = damping.data_ptr<T>();
    a.damping_out = damping_out.data_ptr<T>();
    a.status = status.data_ptr<int32_t>();
    if (P.defined()) {
      a.G = G.data_ptr<T>();
      a.P = P.data_ptr<T>();
      a.r = G.dim() == 3 ? G.size(2) : 1;
    } else {
      a.factor = factor.data_ptr<T>();
      a.keep_failed = keep_failed.defined() ? keep_failed.data_ptr<bool>() : nullptr;
    }
    a.N = H.size(0);
    a.b = static_cast<int>(H.size(1));
    a.mu2 = static_cast<T>(scale * scale);
    a.mu = static_cast<T>(scale);
    a.mode = mode;
    // Past a few thousand doublings every dtype's damping has overflowed, which ends the retries.
    a.max_tries = static_cast<int>(std::min<int64_t>(max_tries, 1 << 16));
    a.max_sweeps = static_cast<int>(max_sweeps);
    return a;
  }

  // (factor, damping, status) or (P, damping, status): P in G's dtype, damping in H's; the factor
  // stays in the compute dtype.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result() const {
    return {P.defined() ? P.to(G_dtype) : factor, damping_out.to(H_dtype), status};
  }

  // (damping, status) of correct_, whose factor was written in place.
  std::tuple<at::Tensor, at::Tensor> in_place_result() const {
    return {damping_out.to(H_dtype), status};
  }

 private:

  static CorrectionCall common(const at::Tensor& H, at::ScalarType promoted,
                               const at::Tensor& damping, double scale, c10::string_view mode,
                               int64_t max_tries, int64_t max_sweeps) {
    CorrectionCall c;
    c.mode = parse_mode(std::string(mode));
    c.scale = scale;
    c.max_tries = max_tries;
    c.max_sweeps = max_sweeps;
    c.H_dtype = c.G_dtype = H.scalar_type();
    c.dtype = compute_dtype(promoted);
    check_scale(scale, c.dtype);
    c.H = H.to(c.dtype).contiguous();
    c.damping = damping.to(c.dtype).contiguous();
    c.damping_out = at::empty({H.size(0)}, c.H.options());
    c.status = at::empty({H.size(0)}, c.H.options().dtype(at::kInt));
    return c;
  }
};

}  // namespace hsc
