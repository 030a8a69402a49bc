// CPU implementation of hsc::graft_: each segment of P's rows rescaled, in place, to the norm of
// G's same rows (graft_rules.h, docs/contract.md §8). One pass over G and P for the norms, one over
// P to rescale, both in float64 vectors (lanes.h); segments in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <string>

#include "../checks.h"
#include "../graft_rules.h"
#include "lanes.h"

namespace hsc::cpu {
namespace {

// W entries at a time in float64 vectors (lanes.h): W = 8 with AVX-512, 4 with AVX2.
using Wide = Vec<double>;
constexpr int W = kLanes<double>;

// W entries of P's dtype, the width of a Wide.
template <class T>
struct PartOf {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
};
template <class T>
using Part = typename PartOf<T>::type;

template <class T>
Part<T> load_part(const T* x) {
  Part<T> v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

template <class T>
Wide squares(const T* x) {
  const Wide v = __builtin_convertvector(load_part(x), Wide);
  return v * v;
}

double lanes_sum(Wide v) {  // in lane order, so the result is the same every run
  double sum = 0;
  for (int l = 0; l < W; ++l) sum += v[l];
  return sum;
}

template <class T>
void graft(T* P, const T* G, const int64_t* ends, bool* finite, int64_t N, int64_t b, int64_t S) {
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      int64_t start, end;
      segment_rows(ends, s, N, &start, &end);
      T* p = P + start * b;
      const T* g = G + start * b;
      const int64_t n = (end - start) * b;
      // Two vector accumulators per sum hide the add latency; the tail and the lanes are added
      // in a fixed order.
      Wide raw0{}, raw1{}, now0{}, now1{};
      int64_t i = 0;
      for (; i + 2 * W <= n; i += 2 * W) {
        raw0 += squares(g + i);
        raw1 += squares(g + i + W);
        now0 += squares(p + i);
        now1 += squares(p + i + W);
      }
      double raw = lanes_sum(raw0 + raw1), now = lanes_sum(now0 + now1);
      for (; i < n; ++i) {
        raw += static_cast<double>(g[i]) * g[i];
        now += static_cast<double>(p[i]) * p[i];
      }
      const double ratio = graft_ratio(raw, now);
      // x - x is exactly 0 for a finite x and NaN otherwise: summed, it says whether all were.
      Part<T> bad{};
      for (i = 0; i + W <= n; i += W) {
        const Part<T> x = __builtin_convertvector(__builtin_convertvector(load_part(p + i), Wide) * ratio, Part<T>);
        std::memcpy(p + i, &x, sizeof x);
        bad += x - x;
      }
      T tail = 0;
      for (; i < n; ++i) {
        p[i] = static_cast<T>(p[i] * ratio);
        tail += p[i] - p[i];
      }
      bool ok = tail == T(0);
      for (int l = 0; l < W; ++l) ok = ok && bad[l] == T(0);
      finite[s] = ok;
    }
  });
}

at::Tensor graft_cpu(at::Tensor& P, const at::Tensor& G, const at::Tensor& ends) {
  check_graft_args(P, G, ends);
  const int64_t N = P.size(0), b = P.size(1), S = ends.size(0);
  const at::Tensor g = G.contiguous(), e = ends.contiguous();
  // The ends are on the host here, so they are checked (the CUDA kernel clips them instead of
  // waiting for the device: graft_rules.h).
  const int64_t* at_end = e.data_ptr<int64_t>();
  for (int64_t s = 0; s < S; ++s)
    TORCH_CHECK_VALUE(at_end[s] >= (s == 0 ? 0 : at_end[s - 1]) && at_end[s] <= N,
                      "hsc: ends must be non-decreasing segment ends in [0, N] = [0, ", N, "], got ",
                      at_end[s], " at position ", s, (s == 0 ? "" : " after "),
                      (s == 0 ? std::string() : std::to_string(at_end[s - 1])));
  at::Tensor finite = at::empty({S}, P.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "hsc::graft_", [&] {
    graft<scalar_t>(P.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), e.data_ptr<int64_t>(),
                    finite.data_ptr<bool>(), N, b, S);
  });
  return finite;
}

}  // namespace

TORCH_LIBRARY_IMPL(hsc, CPU, m) { m.impl("graft_", &graft_cpu); }

}  // namespace hsc::cpu
