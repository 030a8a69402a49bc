// SIMD lane values for the CPU kernels: one vector holds the same entry of W blocks.
// GCC/Clang vector extensions, so the same source compiles to AVX-512, AVX2 or SSE code depending
// on the target the extension is built for (see setup.py, HSC_MARCH).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "../block_rules.h"

#if defined(__SSE2__)
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
  // One vector instruction where the target has it: a lane-by-lane std::sqrt is a scalar call
  // per lane (errno), which made the pivots the slowest part of a Cholesky factorisation.
  static value sqrt(value x) {
#if defined(__AVX512F__) && HSC_VECTOR_BYTES == 64
    if constexpr (sizeof(T) == 4) return (value)_mm512_sqrt_ps((__m512)x);
    else return (value)_mm512_sqrt_pd((__m512d)x);
#elif defined(__AVX__) && HSC_VECTOR_BYTES == 32
    if constexpr (sizeof(T) == 4) return (value)_mm256_sqrt_ps((__m256)x);
    else return (value)_mm256_sqrt_pd((__m256d)x);
#else
    value r;
    for (int l = 0; l < W; ++l) r[l] = std::sqrt(x[l]);
    return r;
#endif
  }
  static value abs(value x) { return x < T(0) ? -x : x; }
  static value max(value a, value b) { return a > b ? a : b; }
  static value min(value a, value b) { return a < b ? a : b; }
  static mask less(value a, value b) { return a < b; }
  static mask all_lanes() { return mask{} - 1; }
  static mask no_lanes() { return mask{}; }
  static mask and_(mask a, mask b) { return a & b; }
  static mask or_(mask a, mask b) { return a | b; }
  static mask andnot(mask a, mask b) { return a & ~b; }
  // Whether any lane is set: an OR of the mask's 64-bit words, not a branch per lane.
  static bool any(mask m) {
    uint64_t words[sizeof(mask) / 8];
    std::memcpy(words, &m, sizeof m);
    uint64_t r = 0;
    for (uint64_t w : words) r |= w;
    return r != 0;
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

// W contiguous values as one vector, and back; any alignment.
template <class T>
inline Vec<T> load_vector(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline void store_vector(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}

// The first n < W values at p as a vector (the other lanes 0), and back.
template <class T>
inline Vec<T> load_partial(const T* p, int n) {
#if defined(__AVX512F__) && HSC_VECTOR_BYTES == 64
  if constexpr (sizeof(T) == 4) return (Vec<T>)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
  else return (Vec<T>)_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1u), p);
#else
  Vec<T> v{};
  for (int l = 0; l < n; ++l) v[l] = p[l];
  return v;
#endif
}
template <class T>
inline void store_partial(T* p, Vec<T> v, int n) {
#if defined(__AVX512F__) && HSC_VECTOR_BYTES == 64
  if constexpr (sizeof(T) == 4) _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), (__m512)v);
  else _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1u), (__m512d)v);
#else
  for (int l = 0; l < n; ++l) p[l] = v[l];
#endif
}

// store_vector for output that will not be read again soon: a non-temporal store where the
// address allows one, which skips reading the line into the cache before overwriting it (for an
// output larger than the caches that read doubles the traffic). Call stream_fence() before the
// values are read by another thread.
template <class T>
inline void stream_vector(T* p, Vec<T> v) {
#if defined(__AVX512F__) && HSC_VECTOR_BYTES == 64
  if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    if constexpr (sizeof(T) == 4) _mm512_stream_ps(reinterpret_cast<float*>(p), (__m512)v);
    else _mm512_stream_pd(reinterpret_cast<double*>(p), (__m512d)v);
    return;
  }
#elif defined(__AVX__) && HSC_VECTOR_BYTES == 32
  if ((reinterpret_cast<uintptr_t>(p) & 31) == 0) {
    if constexpr (sizeof(T) == 4) _mm256_stream_ps(reinterpret_cast<float*>(p), (__m256)v);
    else _mm256_stream_pd(reinterpret_cast<double*>(p), (__m256d)v);
    return;
  }
#endif
  store_vector(p, v);
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// The two shuffles of a butterfly stage of width H on vectors a and c: lanes p with bit H clear
// take (a[p], a[p + H]), lanes with bit H set take (c[p - H], c[p]).
template <class T, int H>
struct Butterfly {
  static constexpr int W = kLanes<T>;
  typename VectorOf<T>::mask lo{}, hi{};  // indices into the concatenation of a and c
  Butterfly() {
    for (int p = 0; p < W; ++p) {
      lo[p] = (p & H) ? W + p - H : p;
      hi[p] = (p & H) ? W + p : p + H;
    }
  }
  Vec<T> low(Vec<T> a, Vec<T> c) const { return __builtin_shuffle(a, c, lo); }
  Vec<T> high(Vec<T> a, Vec<T> c) const { return __builtin_shuffle(a, c, hi); }
};

// One stage of transpose(): swaps the off-diagonal H x H sub-blocks of every 2H x 2H diagonal
// block.
template <class T, int H>
inline void transpose_stage(Vec<T>* r) {
  constexpr int W = kLanes<T>;
  const Butterfly<T, H> s;
  for (int i = 0; i < W; ++i) {
    if (i & H) continue;
    const Vec<T> a = r[i], c = r[i + H];
    r[i] = s.low(a, c);
    r[i + H] = s.high(a, c);
  }
}

// Transposes the W x W matrix whose rows are r[0], ..., r[W - 1] in registers: W log2(W)
// two-source shuffles, where moving the same values through gathers or scalar stores costs W^2
// memory operations. This is how a lane group is filled from, and written back to, row-major
// blocks.
template <class T>
inline void transpose(Vec<T>* r) {
  constexpr int W = kLanes<T>;
  static_assert(W == 4 || W == 8 || W == 16, "lane groups of 4, 8 or 16 blocks");
  transpose_stage<T, 1>(r);
  transpose_stage<T, 2>(r);
  if constexpr (W > 4) transpose_stage<T, 4>(r);
  if constexpr (W > 8) transpose_stage<T, 8>(r);
}

// Moves entries [0, entries) of W blocks (`stride` values apart) into lane vectors:
// lanes[e][l] = blocks[l * stride + e], by register transposes of W x W tiles (the last one
// partial when entries is not a multiple of W).
template <class T>
inline void blocks_to_lanes(const T* blocks, int64_t stride, int entries, Vec<T>* lanes) {
  constexpr int W = kLanes<T>;
  const int whole = entries / W * W, rest = entries - whole;
  for (int e0 = 0; e0 < whole; e0 += W) {
    Vec<T>* r = lanes + e0;
    for (int l = 0; l < W; ++l) r[l] = load_vector(blocks + l * stride + e0);
    transpose<T>(r);
  }
  if (rest > 0) {
    Vec<T> r[W];
    for (int l = 0; l < W; ++l) r[l] = load_partial(blocks + l * stride + whole, rest);
    transpose<T>(r);
    for (int e = 0; e < rest; ++e) lanes[whole + e] = r[e];
  }
}

// The inverse of blocks_to_lanes: blocks[l * stride + e] = lanes[e][l] for e < entries. Uses
// `lanes` as scratch.
template <class T>
inline void lanes_to_blocks(Vec<T>* lanes, int entries, T* blocks, int64_t stride) {
  constexpr int W = kLanes<T>;
  const int whole = entries / W * W, rest = entries - whole;
  for (int e0 = 0; e0 < whole; e0 += W) {
    Vec<T>* r = lanes + e0;
    transpose<T>(r);
    for (int l = 0; l < W; ++l) store_vector(blocks + l * stride + e0, r[l]);
  }
  if (rest > 0) {
    Vec<T> r[W];
    for (int e = 0; e < W; ++e) r[e] = e < rest ? lanes[whole + e] : Vec<T>{};
    transpose<T>(r);
    for (int l = 0; l < W; ++l) store_partial(blocks + l * stride + whole, r[l], rest);
  }
}

}  // namespace hsc::cpu

namespace hsc {
template <>
struct LaneOps<cpu::Vec<float>> : cpu::VectorLaneOps<float> {};
template <>
struct LaneOps<cpu::Vec<double>> : cpu::VectorLaneOps<double> {};
}  // namespace hsc
