// SIMD lane values for the CPU kernels: one vector holds the same entry of W blocks.
// GCC/Clang vector extensions, so the same source compiles to AVX-512, AVX2 or SSE code depending
// on the target the extension is built for (see setup.py, HSC_MARCH).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../block_math.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace hsc::cpu {

// The widest vectors the target has: measured on AMD Zen 4, 64-byte lane groups beat 32-byte ones
// by 1.1-1.6x at every block size although their workspace is twice as large.
#ifndef HSC_VECTOR_BYTES
#if defined(__AVX512F__)
#define HSC_VECTOR_BYTES 64
#else
#define HSC_VECTOR_BYTES 32
#endif
#endif
constexpr int kVectorBytes = HSC_VECTOR_BYTES;

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
  static mask usable_pivot(value d, value floor) {
    return (d > floor) & (d <= std::numeric_limits<T>::max());
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

// Lane l of the result = base[l * lane_stride] for l < count, 0 for the other lanes: one entry of
// `count` blocks that lie lane_stride apart. A hardware gather where there is one: writing lanes
// one scalar at a time and then reading the vector back stalls on store forwarding.
template <class T>
inline Vec<T> gather(const T* base, int64_t lane_stride, int count) {
  constexpr int W = kLanes<T>;
  Vec<T> v{};
  if (lane_stride * W <= (int64_t{1} << 28)) {
#if defined(__AVX512F__) && HSC_VECTOR_BYTES == 64
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i idx = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(lane_stride)));
    const __mmask16 m = static_cast<__mmask16>((1u << count) - 1u);
    if constexpr (sizeof(T) == 4) {
      return (Vec<T>)_mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, base, 4);
    } else {
      return (Vec<T>)_mm512_mask_i32gather_pd(_mm512_setzero_pd(), static_cast<__mmask8>(m),
                                              _mm512_castsi512_si256(idx), base, 8);
    }
#elif defined(__AVX2__) && HSC_VECTOR_BYTES == 32
    const __m256i lane = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    const __m256i idx = _mm256_mullo_epi32(lane, _mm256_set1_epi32(static_cast<int>(lane_stride)));
    const __m256i active = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane);
    if constexpr (sizeof(T) == 4) {
      return (Vec<T>)_mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, idx,
                                              _mm256_castsi256_ps(active), 4);
    } else {
      const __m256i active64 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(active));
      return (Vec<T>)_mm256_mask_i32gather_pd(_mm256_setzero_pd(), base,
                                              _mm256_castsi256_si128(idx),
                                              _mm256_castsi256_pd(active64), 8);
    }
#endif
  }
  for (int l = 0; l < count; ++l) v[l] = base[l * lane_stride];
  return v;
}

}  // namespace hsc::cpu

namespace hsc {
template <>
struct LaneOps<cpu::Vec<float>> : cpu::VectorLaneOps<float> {};
template <>
struct LaneOps<cpu::Vec<double>> : cpu::VectorLaneOps<double> {};
}  // namespace hsc
