// SIMD lane values for the CPU kernels: one vector holds the same entry of W blocks.
// GCC/Clang vector extensions, so the same source compiles to AVX-512, AVX2 or SSE code depending
// on the target the extension is built for (see setup.py, HSC_MARCH).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../block_math.h"

namespace hsc::cpu {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

template <class T>
struct VectorOf;
template <>
struct VectorOf<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
  typedef int32_t mask __attribute__((vector_size(kVectorBytes)));
};
template <>
struct VectorOf<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
  typedef int64_t mask __attribute__((vector_size(kVectorBytes)));
};

template <class T>
using Vec = typename VectorOf<T>::type;

// Blocks per lane group.
template <class T>
constexpr int kLanes = kVectorBytes / sizeof(T);

template <class T>
struct VectorLaneOps {
  using value = Vec<T>;
  using scalar = T;
  using mask = typename VectorOf<T>::mask;
  static constexpr int W = kLanes<T>;

  static value splat(T x) { return value{} + x; }
  static mask usable_pivot(value d) {
    return (d > T(0)) & (d <= std::numeric_limits<T>::max());
  }
  static mask finite(value x) { return (x - x) == T(0); }
  static value select(mask m, value a, value b) { return m ? a : b; }
  static value sqrt(value x) {
    value r;
    for (int l = 0; l < W; ++l) r[l] = std::sqrt(x[l]);
    return r;
  }
  static value abs(value x) { return x < T(0) ? -x : x; }
  static value max(value a, value b) { return a > b ? a : b; }
  static mask all_lanes() { return mask{} - 1; }
  static mask no_lanes() { return mask{}; }
  static mask and_(mask a, mask b) { return a & b; }
  static mask or_(mask a, mask b) { return a | b; }
  static mask andnot(mask a, mask b) { return a & ~b; }
  static bool any(mask m) {
    bool r = false;
    for (int l = 0; l < W; ++l) r |= m[l] != 0;
    return r;
  }
};

}  // namespace hsc::cpu

namespace hsc {
template <>
struct LaneOps<cpu::Vec<float>> : cpu::VectorLaneOps<float> {};
template <>
struct LaneOps<cpu::Vec<double>> : cpu::VectorLaneOps<double> {};
}  // namespace hsc
