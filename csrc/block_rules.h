// The per-block rules of the corrected preconditioner (docs/contract.md §2-3) that every backend
// must agree on: the status codes, the modes, the symmetrised entry, tau, the damping sequence,
// the pivot floors and the fallback, written once for a "lane value" V.
//
// On the CPU, V is a SIMD vector holding the same entry of W different blocks (lane l = block l of
// a group; cpu/lanes.h specialises LaneOps for it), and cpu/lane_pipeline.h runs the factorisations
// on such vectors. The CUDA kernels spread one block over a warp or a thread block and use V = T,
// a plain float or double (ScalarLaneOps below).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define HSC_HD __host__ __device__ __forceinline__
#else
#define HSC_HD inline __attribute__((always_inline))
#endif

namespace hsc {

// Per-block status codes, docs/contract.md §3 (hsc.ops.Status in Python).
enum Status : int32_t {
  kFactorised = 0,       // factorised with the requested damping
  kDampingRaised = 1,    // factorised after raising the damping
  kNonFinite = 2,        // H_k has a NaN or Inf: fallback M = (1 + mu^2) I
  kFailed = 3,           // no factorisation within max_tries (spectral modes: the eigensolver did not
                         // converge within its sweep limit): same fallback
};

// How M^-1 is formed (docs/contract.md §2): the two Cholesky routes, and the spectral modes, which
// apply a multiplier f(lambda) to the eigenpairs of S (no damping). The values are the rows of
// kModes below.
enum class Mode : int {
  kCholesky = 0,
  kSingularSafe = 1,
  kSpectral = 2,        // f = lambda / (lambda^2 + mu^2)
  kSaddleFree = 3,      // f = |lambda| / (lambda^2 + mu^2)
  kSaddleFreeRoot = 4,  // f = 1 / sqrt(lambda^2 + mu^2)
};

// One row per mode: the only list of the modes. The ops parse their `mode` argument with it and
// build the messages that list modes from it (checks.h); hsc._C.modes exports it to Python
// (hsc/ops.py: MODES, EIGH_MODES, NONNEGATIVE_MODES, which hsc/config.py reads).
//   name:        the `mode` argument of the ops
//   spectral:    takes the eigenpairs of S and applies a multiplier f(lambda), no damping
//                (hsc::eigh, correct_from_eigh_)
//   nonnegative: a spectral mode whose f >= 0, so that M^-1 has a square root: correct_from_eigh_
//                accepts power 0.5 (M^-1/2 = V f(Lambda)^1/2 V^T)
// Adding a spectral mode f(lambda): its Mode value above (next in line), its row here, its case of
// spectral_multiplier below; outside C++, its f in hsc/reference.py (spectral_multiplier), its
// definition in docs/contract.md §2, and tests (tests/test_spectral.py). The backends, checks.h,
// hsc/ops.py and hsc/config.py take it from here.
// Host code reads the rows; device code only the bit masks and is_spectral / is_nonnegative.
struct ModeRule {
  const char* name;
  Mode mode;
  bool spectral;
  bool nonnegative;
};
inline constexpr ModeRule kModes[] = {
    // name              mode                   spectral  nonnegative
    {"cholesky",         Mode::kCholesky,       false,    false},
    {"singular_safe",    Mode::kSingularSafe,   false,    false},
    {"spectral",         Mode::kSpectral,       true,     false},
    {"saddle_free",      Mode::kSaddleFree,     true,     true},
    {"saddle_free_root", Mode::kSaddleFreeRoot, true,     true},
};
inline constexpr int kModeCount = static_cast<int>(sizeof(kModes) / sizeof(kModes[0]));

// Bit m set where the row of Mode m has `flag`.
constexpr uint32_t mode_mask(bool ModeRule::*flag) {
  uint32_t mask = 0;
  for (const ModeRule& row : kModes)
    if (row.*flag) mask |= uint32_t(1) << static_cast<int>(row.mode);
  return mask;
}
constexpr bool mode_rows_in_order() {
  for (int m = 0; m < kModeCount; ++m)
    if (static_cast<int>(kModes[m].mode) != m) return false;
  return true;
}
static_assert(mode_rows_in_order(), "kModes: row m is Mode m");
static_assert(kModeCount <= 32, "kModes: one bit per mode in a uint32_t");
inline constexpr uint32_t kSpectralModes = mode_mask(&ModeRule::spectral);
inline constexpr uint32_t kNonnegativeModes = mode_mask(&ModeRule::nonnegative);
static_assert((kNonnegativeModes & ~kSpectralModes) == 0, "kModes: only a spectral mode has f >= 0");

HSC_HD bool is_spectral(Mode mode) { return (kSpectralModes >> static_cast<int>(mode)) & 1u; }
HSC_HD bool is_nonnegative(Mode mode) { return (kNonnegativeModes >> static_cast<int>(mode)) & 1u; }

// Operations on a lane value. Specialised here for scalars (one block per thread) and in
// cpu/lanes.h for SIMD vectors (one block per lane).
template <class V>
struct LaneOps;

template <class T>
struct ScalarLaneOps {
  using value = T;
  using scalar = T;
  using mask = bool;
  HSC_HD static T splat(T x) { return x; }
  // A pivot counts only when it is above `floor` and finite: NaN and Inf fail (!(d > 0) catches NaN).
  HSC_HD static mask usable_pivot(T d, T floor) {
    return d > floor && d <= std::numeric_limits<T>::max();
  }
  HSC_HD static mask finite(T x) { return x - x == T(0); }
  HSC_HD static T select(mask m, T a, T b) { return m ? a : b; }
  HSC_HD static T sqrt(T x) { return ::sqrt(x); }
  HSC_HD static T abs(T x) { return ::fabs(x); }
  HSC_HD static T max(T a, T b) { return a > b ? a : b; }
  HSC_HD static T min(T a, T b) { return a < b ? a : b; }
  HSC_HD static mask less(T a, T b) { return a < b; }
  HSC_HD static mask all_lanes() { return true; }
  HSC_HD static mask no_lanes() { return false; }
  HSC_HD static mask and_(mask a, mask b) { return a && b; }
  HSC_HD static mask or_(mask a, mask b) { return a || b; }
  HSC_HD static mask andnot(mask a, mask b) { return a && !b; }  // a and not b
  HSC_HD static bool any(mask m) { return m; }
};
template <>
struct LaneOps<float> : ScalarLaneOps<float> {};
template <>
struct LaneOps<double> : ScalarLaneOps<double> {};

// S_ij = (H_ij + H_ji)/2, halved first so that entries near the overflow threshold stay finite.
template <class V>
HSC_HD V symmetric_entry(V h_ij, V h_ji) {
  const V half = LaneOps<V>::splat(0.5);
  return half * h_ij + half * h_ji;
}

// tau = 1e-6 max_ij |S_ij|, or the smallest normal number where that is 0.
template <class V, class Ops = LaneOps<V>>
HSC_HD V damping_floor(V max_abs) {
  using T = typename Ops::scalar;
  const V tau = Ops::splat(T(1e-6)) * max_abs;
  return Ops::select(Ops::usable_pivot(tau, Ops::splat(0)), tau,
                     Ops::splat(std::numeric_limits<T>::min()));
}

// The damping sequence: d_{i+1} = max(2 d_i, tau).
template <class V, class Ops = LaneOps<V>>
HSC_HD V next_damping(V d, V tau) {
  return Ops::max(d + d, tau);
}

// The step of a block that could not be factorised (status 2 or 3): M = (1 + mu^2) I.
template <class V>
HSC_HD V fallback_step(V g, V mu2) {
  return g / (LaneOps<V>::splat(1) + mu2);
}

// The multiplier f(lambda) of a spectral mode (the rows of kModes with `spectral`; docs/contract.md
// §2), without overflow or 0/0: h = sqrt(lambda^2 + mu^2) as max * sqrt(1 + (min/max)^2), and
// |lambda| / h <= 1 taken as 1 where both are infinite.
template <class V, class Ops = LaneOps<V>>
HSC_HD V spectral_multiplier(Mode mode, V lambda, V mu) {
  const V one = Ops::splat(1), a = Ops::abs(lambda);
  const V big = Ops::max(a, mu), small = Ops::min(a, mu);
  const V r = small / big;
  const V h = big * Ops::sqrt(one + r * r);
  const V inv_h = one / h;
  // One case per spectral mode of kModes.
  if (mode == Mode::kSaddleFreeRoot) return inv_h;            // 1 / h
  const V ratio = Ops::select(Ops::less(a, h), a / h, one);  // |lambda| / h
  const V f = ratio * inv_h;
  if (mode == Mode::kSaddleFree) return f;                    // |lambda| / h^2
  return Ops::select(Ops::less(lambda, Ops::splat(0)), -f, f);  // Mode::kSpectral: lambda / h^2
}

HSC_HD int32_t status_code(bool finite, bool factorised, bool raised) {
  return !finite ? kNonFinite : !factorised ? kFailed : raised ? kDampingRaised : kFactorised;
}

// Smallest pivot accepted in the factorisation of A = S + d I: b eps max_j A_jj. A pivot at or
// below it means A is singular to working precision (Cholesky's backward error is about
// b eps ||A||): A^-1, and M = A + mu^2 A^-1 with it, would be rounding noise that a test on M's
// pivots cannot see (a pivot bounds an eigenvalue from above only), so the damping is raised.
template <class V, class Ops = LaneOps<V>>
HSC_HD V damped_min_pivot(V diagonal_max, int b) {
  using T = typename Ops::scalar;
  return Ops::splat(T(b) * std::numeric_limits<T>::epsilon()) * diagonal_max;
}

// Smallest pivot accepted in M's factorisation. M's eigenvalues are lambda + mu^2/lambda >= 2 mu, so
// every pivot is >= 2 mu in exact arithmetic; one below mu means rounding has destroyed M (A too
// ill-conditioned for the dtype at this damping), and the damping is raised instead.
template <class V>
HSC_HD V correction_min_pivot(V mu) {
  return mu;
}

// Smallest pivot accepted in the factorisation of C = A^2 + mu^2 I, whose eigenvalues are >= mu^2.
template <class V>
HSC_HD V shifted_square_min_pivot(V mu2) {
  return LaneOps<V>::splat(0.5) * mu2;
}

// A b-by-b row-major matrix of lane values with row stride ld >= b (the GPU kernels pad rows
// in shared memory to avoid bank conflicts; the CPU uses ld = b).
template <class V>
struct Block {
  V* p;
  int b;
  int ld;
  HSC_HD V& operator()(int i, int j) const { return p[i * ld + j]; }
  HSC_HD V* row(int i) const { return p + i * ld; }
};

// A length-b vector of lane values.
template <class V>
struct Column {
  V* p;
  HSC_HD V& operator[](int i) const { return p[i]; }
};

// Raw pointers and sizes the kernels of every backend take (filled by correct_call.h).
template <class T>
struct CorrectionArgs {
  const T* H;
  const T* damping_in;
  T* damping_out;
  int32_t* status;
  const T* G = nullptr;  // fused path: P = M^{-1} G (P != nullptr)
  T* P = nullptr;
  int64_t r = 0;
  T* factor = nullptr;   // correct: M^{-1}, packed (factor != nullptr)
  // correct_: block k keeps the factor it holds when it fails (status 2 or 3) where
  // keep_failed[k]; nullptr: every failed block gets the fallback.
  const bool* keep_failed = nullptr;
  int64_t N;
  int b;
  T mu2;
  T mu;
  Mode mode;
  int max_tries;
  int max_sweeps = 0;    // spectral modes: the eigensolver's sweep limit
};

}  // namespace hsc
