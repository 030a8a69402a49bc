// The kernels of hsc::correct, hsc::correct_ and hsc::precondition on CUDA (launched from
// correct_cuda.cu), and their thread mapping.
//
// Thread mapping:
//   b <= 32       warp_kernel: a warp per matrix, four matrices per thread block; lane i holds
//                 row i of each matrix in registers (padded to B = 4, 8, 16 or 32 rows), values
//                 of other rows come by shuffles; no shared memory, no block-wide barrier;
//   32 < b        team_kernel: a thread block (64, 128 or 256 threads) per matrix, held in
//                 shared memory with rows padded to b + 1 entries (no bank conflicts along
//                 columns), left-looking with the rows of each column shared out;
//   any b whose workspace does not fit in shared memory: team_kernel with the workspace in a
//                 global scratch tensor (3 b (b+1) + 3 b entries per block), documented fallback.
// The whole pipeline of docs/contract.md §2 runs in one launch: read H once, factorise with the damping
// retries, form the correction, solve, write P (or the factor). The scalar rules (pivot test,
// damping sequence, tau, fallback, status, the factor's layout) come from block_rules.h and
// factor_layout.h, shared with the CPU kernels.
//
// This header needs nothing from torch or the CUDA runtime, so that tests/cuda_emulation can
// compile it for the host and run it with one host thread per CUDA thread (no GPU needed).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../block_rules.h"
#include "../factor_layout.h"

// The kernel's dynamic shared memory (the emulation defines its own).
#ifndef HSC_DYNAMIC_SHARED
#define HSC_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace hsc::cuda {

// The kernel's arguments: those of every backend, plus the global workspace used when a matrix's
// workspace does not fit in shared memory.
template <class T>
struct Params : CorrectionArgs<T> {
  T* scratch = nullptr;
};

// The damping search of docs/contract.md §2 for one block, shared by both kernels: tries d_0 = damping,
// d_{i+1} = max(2 d_i, tau), at most max_tries values, until factorise(d) (which must answer the
// same on every thread of the team) succeeds. Returns whether one did; `used` gets the last value
// tried and `raised` whether it was past d_0.
template <class T, class Factorise>
__device__ bool search_damping(T damping, T tau, int max_tries, Factorise factorise, T& used,
                               bool& raised) {
  T d = damping;
  for (int t = 0; t < max_tries; ++t) {
    used = d;
    if (factorise(d)) {
      raised = t > 0;
      return true;
    }
    d = next_damping<T>(d, tau);
    if (!LaneOps<T>::usable_pivot(d, T(0))) break;  // an overflowing damping never gives a factor
  }
  return false;
}

// The threads that own one matrix: the whole thread block (b > 32).
struct Team {
  int rank;
  int size;
  __device__ __forceinline__ void sync() const { __syncthreads(); }
};

// Per-team scalars in shared memory.
template <class T>
struct TeamScalars {
  T* reduce;  // team.size entries
  T* value;   // one broadcast value
  int* flag;  // one broadcast flag
};

// combine(v of every thread of the team), returned to every thread.
template <class T, class Combine>
__device__ T team_reduce(const Team& team, const TeamScalars<T>& sc, T v, Combine combine) {
  sc.reduce[team.rank] = v;
  team.sync();
  if (team.rank == 0) {
    T m = sc.reduce[0];
    for (int t = 1; t < team.size; ++t) m = combine(m, sc.reduce[t]);
    sc.value[0] = m;
  }
  team.sync();
  const T out = sc.value[0];
  team.sync();
  return out;
}

// The maximum of v over the team, returned to every thread.
template <class T>
__device__ T team_max(const Team& team, const TeamScalars<T>& sc, T v) {
  return team_reduce(team, sc, v, [](T x, T y) { return LaneOps<T>::max(x, y); });
}

// In-place lower Cholesky of a's lower triangle; false (for the whole team) at the first pivot
// that is not usable (finite and > min_pivot). Left-looking: for column j every thread reduces its rows i >= j, then
// rank 0 takes the pivot and the rows are scaled.
template <class T>
__device__ bool team_cholesky(const Team& team, const TeamScalars<T>& sc, Block<T> a,
                              T min_pivot) {
  const int b = a.b;
  for (int j = 0; j < b; ++j) {
    const T* rj = a.row(j);
    for (int i = j + team.rank; i < b; i += team.size) {
      T* ri = a.row(i);
      T acc = ri[j];
      for (int k = 0; k < j; ++k) acc -= ri[k] * rj[k];
      ri[j] = acc;
    }
    team.sync();
    if (team.rank == 0) {
      const T d = a(j, j);
      const bool ok = LaneOps<T>::usable_pivot(d, min_pivot);
      sc.flag[0] = ok;
      if (ok) {
        const T r = LaneOps<T>::sqrt(d);
        a(j, j) = r;
        sc.value[0] = T(1) / r;
      }
    }
    team.sync();
    if (!sc.flag[0]) return false;  // uniform: every thread reads the same flag
    const T inv = sc.value[0];
    for (int i = j + 1 + team.rank; i < b; i += team.size) a(i, j) *= inv;
    team.sync();
  }
  return true;
}

// w = l^{-1} (lower triangles): one thread per column, forward substitution of e_j.
template <class T>
__device__ void team_invert_lower(const Team& team, Block<T> l, Block<T> w) {
  const int b = l.b;
  for (int i = team.rank; i < b; i += team.size) w(i, i) = T(1) / l(i, i);
  team.sync();
  for (int j = team.rank; j < b; j += team.size) {
    for (int i = j + 1; i < b; ++i) {
      T acc = l(i, j) * w(j, j);
      for (int k = j + 1; k < i; ++k) acc += l(i, k) * w(k, j);
      w(i, j) = -acc * w(i, i);
    }
  }
  team.sync();
}

// out = w^T w for lower-triangular w (lower triangle, or all of it when `full`).
template <class T>
__device__ void team_lower_gram(const Team& team, Block<T> w, Block<T> out, bool full) {
  const int b = w.b;
  for (int e = team.rank; e < b * b; e += team.size) {
    const int i = e / b, j = e % b;
    if (j > i) continue;
    T acc = w(i, i) * w(i, j);
    for (int k = i + 1; k < b; ++k) acc += w(k, i) * w(k, j);
    out(i, j) = acc;
  }
  team.sync();
  if (full) {
    for (int e = team.rank; e < b * b; e += team.size) {
      const int i = e / b, j = e % b;
      if (j > i) out(i, j) = out(j, i);
    }
    team.sync();
  }
}

// out = s^2 + mu2 I (lower triangle) for a full symmetric s.
template <class T>
__device__ void team_square_plus_shift(const Team& team, Block<T> s, T mu2, Block<T> out) {
  const int b = s.b;
  for (int e = team.rank; e < b * b; e += team.size) {
    const int i = e / b, j = e % b;
    if (j > i) continue;
    T acc = s(i, 0) * s(j, 0);
    for (int k = 1; k < b; ++k) acc += s(i, k) * s(j, k);
    out(i, j) = i == j ? acc + mu2 : acc;
  }
  team.sync();
}

// out = x y for full x and y.
template <class T>
__device__ void team_multiply(const Team& team, Block<T> x, Block<T> y, Block<T> out) {
  const int b = x.b;
  for (int e = team.rank; e < b * b; e += team.size) {
    const int i = e / b, j = e % b;
    T acc = x(i, 0) * y(0, j);
    for (int k = 1; k < b; ++k) acc += x(i, k) * y(k, j);
    out(i, j) = acc;
  }
  team.sync();
}

// x = (l l^T)^{-1} x: column-oriented substitutions, the updates of each column in parallel.
template <class T>
__device__ void team_cholesky_solve(const Team& team, Block<T> l, T* x) {
  const int b = l.b;
  for (int j = 0; j < b; ++j) {
    if (team.rank == 0) x[j] /= l(j, j);
    team.sync();
    for (int i = j + 1 + team.rank; i < b; i += team.size) x[i] -= l(i, j) * x[j];
    team.sync();
  }
  for (int j = b - 1; j >= 0; --j) {
    if (team.rank == 0) x[j] /= l(j, j);
    team.sync();
    for (int i = team.rank; i < j; i += team.size) x[i] -= l(j, i) * x[j];
    team.sync();
  }
}

// Entries of one matrix's workspace: s, a, m (rows padded to b + 1), then x, y, g.
__host__ __device__ inline int64_t workspace_entries(int b) {
  return 3 * int64_t(b) * (b + 1) + 3 * int64_t(b);
}

__host__ __device__ inline size_t aligned16(size_t bytes) { return (bytes + 15) / 16 * 16; }

template <class T>
__host__ __device__ size_t scalar_bytes(int team_size) {
  return aligned16((team_size + 1) * sizeof(T) + sizeof(int));
}

template <class T>
__global__ void team_kernel(Params<T> p, int team_size, int teams_per_block,
                                 size_t bytes_per_team, bool workspace_in_shared) {
  HSC_DYNAMIC_SHARED(smem);
  const int slot = threadIdx.x / team_size;
  const int64_t n = int64_t(blockIdx.x) * teams_per_block + slot;
  if (n >= p.N) return;  // never taken: one matrix per thread block, and no block past N
  const Team team{static_cast<int>(threadIdx.x % team_size), team_size};
  unsigned char* mine = smem + slot * bytes_per_team;
  const int b = p.b, ld = b + 1;
  T* ws = workspace_in_shared ? reinterpret_cast<T*>(mine) : p.scratch + n * workspace_entries(b);
  unsigned char* scalars =
      workspace_in_shared ? mine + aligned16(workspace_entries(b) * sizeof(T)) : mine;
  const TeamScalars<T> sc{reinterpret_cast<T*>(scalars), reinterpret_cast<T*>(scalars) + team_size,
                          reinterpret_cast<int*>(reinterpret_cast<T*>(scalars) + team_size + 1)};
  const Block<T> s{ws, b, ld}, a{ws + b * ld, b, ld}, m{ws + 2 * b * ld, b, ld};
  T* x = ws + 3 * b * ld;
  T* y = x + b;
  T* g = y + b;

  // S = (H + H^T)/2, its largest entry and whether it is finite.
  const T* h = p.H + n * b * b;
  T max_abs = 0, non_finite = 0;
  for (int e = team.rank; e < b * b; e += team.size) {
    const int i = e / b, j = e % b;
    const T v = symmetric_entry(h[i * b + j], h[j * b + i]);
    if (!LaneOps<T>::finite(v)) non_finite = 1;
    else max_abs = LaneOps<T>::max(max_abs, LaneOps<T>::abs(v));
    s(i, j) = v;
  }
  max_abs = team_max(team, sc, max_abs);
  const T damping = p.damping_in[n];
  // A negative, infinite or NaN damping is not checked on the host (that would synchronise): such
  // a block takes the fallback, as a non-finite H does.
  const bool finite = team_max(team, sc, non_finite) == T(0) && damping >= T(0) &&
                      LaneOps<T>::finite(damping);
  if (!finite)
    for (int e = team.rank; e < b * b; e += team.size) s(e / b, e % b) = (e / b == e % b) ? T(1) : T(0);
  team.sync();

  T used = damping;
  bool ok = false, raised = false;
  if (finite && p.mode == Mode::kCholesky) {
    T diagonal = -std::numeric_limits<T>::infinity();
    for (int i = team.rank; i < b; i += team.size) diagonal = LaneOps<T>::max(diagonal, s(i, i));
    const T diagonal_max = team_max(team, sc, diagonal);  // S's largest diagonal entry
    ok = search_damping(damping, damping_floor<T>(max_abs), p.max_tries, [&](T d) {
      for (int e = team.rank; e < b * b; e += team.size) {
        const int i = e / b, j = e % b;
        if (j < i) a(i, j) = s(i, j);
        else if (j == i) a(i, i) = s(i, i) + d;
      }
      team.sync();
      if (!team_cholesky(team, sc, a, damped_min_pivot<T>(diagonal_max + d, b))) return false;
      team_invert_lower(team, a, m);        // m = L^{-1}
      team_lower_gram(team, m, a, false);   // a = A^{-1}
      for (int e = team.rank; e < b * b; e += team.size) {  // a = S + d I + mu^2 A^{-1}
        const int i = e / b, j = e % b;
        if (j < i) a(i, j) = s(i, j) + p.mu2 * a(i, j);
        else if (j == i) a(i, i) = (s(i, i) + d) + p.mu2 * a(i, i);
      }
      team.sync();
      return team_cholesky(team, sc, a, correction_min_pivot(p.mu));  // a = L_M
    }, used, raised);
  } else if (finite) {
    for (int i = team.rank; i < b; i += team.size) s(i, i) += damping;  // A = S + delta I
    team.sync();
    team_square_plus_shift(team, s, p.mu2, a);
    ok = team_cholesky(team, sc, a, shifted_square_min_pivot(p.mu2));  // a = L_C, C = A^2 + mu^2 I
  }

  if (team.rank == 0) {
    p.damping_out[n] = used;
    p.status[n] = status_code(finite, ok, raised);
  }

  if (p.P != nullptr) {
    for (int64_t c = 0; c < p.r; ++c) {
      for (int i = team.rank; i < b; i += team.size) {
        g[i] = p.G[(n * b + i) * p.r + c];
        x[i] = g[i];
      }
      team.sync();
      const T* out = x;
      if (ok) {
        team_cholesky_solve(team, a, x);
        if (p.mode == Mode::kSingularSafe) {
          for (int i = team.rank; i < b; i += team.size) {
            T acc = s(i, 0) * x[0];
            for (int k = 1; k < b; ++k) acc += s(i, k) * x[k];
            y[i] = acc;
          }
          team.sync();
          out = y;
        }
      }
      for (int i = team.rank; i < b; i += team.size)
        p.P[(n * b + i) * p.r + c] = ok ? out[i] : fallback_step(g[i], p.mu2);
      team.sync();
    }
  } else {
    Block<T> f = a;
    if (ok) {
      team_invert_lower(team, a, m);
      // M^{-1} (its lower triangle is all that is written), or all of C^{-1} in singular_safe mode
      team_lower_gram(team, m, a, p.mode == Mode::kSingularSafe);
      if (p.mode == Mode::kSingularSafe) {
        team_multiply(team, s, a, m);     // A C^{-1}
        f = m;
      }
    }
    const T fallback = fallback_step<T>(T(1), p.mu2);
    const int64_t entries = packed_size(b);
    // correct_: a failed block with keep_failed[n] leaves its factor as it was
    if (ok || p.keep_failed == nullptr || !p.keep_failed[n]) {
      for (int e = team.rank; e < b * b; e += team.size) {  // the lower triangle, packed and tiled
        const int i = e / b, j = e % b;
        if (j <= i)
          p.factor[tiled_offset(n, packed_index(i, j), entries)] =
              ok ? f(i, j) : (i == j ? fallback : T(0));
      }
    }
  }
}

// ---- b <= 32: a warp per matrix, held in registers -----------------------------------------
// Lane i holds row i of every matrix of the pipeline in a register array of B >= b entries;
// rows and columns b..B-1 are identity padding, which leaves the factorisations of the real part
// as they are (a padding pivot is 1, or 1 + mu^2 in M), and lanes B..31 only take part in the
// shuffles. A value of another row comes by __shfl_sync: O(B^2) shuffles and O(B^2) FMAs per
// lane for each factorisation, inverse and product. Every loop over a register array has bounds
// known at compile time, so that the arrays stay in registers.

constexpr unsigned kFullMask = 0xffffffffu;

template <class T>
__device__ __forceinline__ T from_lane(T v, int lane) {
  return __shfl_sync(kFullMask, v, lane);
}

template <class T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = LaneOps<T>::max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// In-place lower Cholesky factorisation, row `lane` of the matrix in a[] (its lower part is
// read): false, for the whole warp, at the first pivot that is not usable (finite, > min_pivot;
// the identity padding's pivots, rows >= b, only > 0). On success lane i holds L(i, 0..i) in
// a[0..i].
template <class T, int B>
__device__ bool warp_cholesky(T (&a)[B], int lane, int b, T min_pivot) {
#pragma unroll
  for (int k = 0; k < B; ++k) {
    const T pivot = from_lane(a[k], k);
    // the same for every lane
    if (!LaneOps<T>::usable_pivot(pivot, k < b ? min_pivot : T(0))) return false;
    const T r = LaneOps<T>::sqrt(pivot);
    const T lik = a[k] / r;  // L(lane, k) for lanes below k
    if (lane == k) a[k] = r;
    if (lane > k) a[k] = lik;
#pragma unroll
    for (int j = k + 1; j < B; ++j) {
      const T ljk = from_lane(lik, j);
      if (lane >= j) a[j] -= lik * ljk;
    }
  }
  return true;
}

// w = L^{-1} by rows: row k is final once divided by L(k, k), then every later row subtracts
// its multiple of it.
template <class T, int B>
__device__ void warp_invert_lower(const T (&l)[B], T (&w)[B], int lane) {
#pragma unroll
  for (int j = 0; j < B; ++j) w[j] = j == lane ? T(1) : T(0);
#pragma unroll
  for (int k = 0; k < B; ++k) {
    if (lane == k) {
#pragma unroll
      for (int j = 0; j <= k; ++j) w[j] /= l[k];
    }
#pragma unroll
    for (int j = 0; j <= k; ++j) {
      const T wkj = from_lane(w[j], k);
      if (lane > k) w[j] -= l[k] * wkj;
    }
  }
}

// out = w^T w (row `lane`, whole) for lower-triangular w: out(i, j) = sum_k w(k, i) w(k, j).
template <class T, int B>
__device__ void warp_lower_gram(const T (&w)[B], T (&out)[B], int lane) {
#pragma unroll
  for (int j = 0; j < B; ++j) out[j] = T(0);
#pragma unroll
  for (int k = 0; k < B; ++k) {
    T row[B];  // row k of w
    T wki = T(0);
#pragma unroll
    for (int j = 0; j <= k; ++j) {
      row[j] = from_lane(w[j], k);
      if (j == lane) wki = row[j];
    }
#pragma unroll
    for (int j = 0; j <= k; ++j) out[j] += wki * row[j];
  }
}

// out = x y (row `lane`) for full x and y held by rows; x's row in x_row.
template <class T, int B>
__device__ void warp_multiply(const T (&x_row)[B], const T (&y)[B], T (&out)[B]) {
#pragma unroll
  for (int j = 0; j < B; ++j) out[j] = T(0);
#pragma unroll
  for (int k = 0; k < B; ++k) {
#pragma unroll
    for (int j = 0; j < B; ++j) out[j] += x_row[k] * from_lane(y[j], k);
  }
}

// x = (L L^T)^{-1} g for L held by rows; lane i's entry of g in, of x out.
template <class T, int B>
__device__ T warp_cholesky_solve(const T (&l)[B], T x, int lane) {
#pragma unroll
  for (int k = 0; k < B; ++k) {  // L y = g
    if (lane == k) x /= l[k];
    const T xk = from_lane(x, k);
    if (lane > k) x -= l[k] * xk;
  }
#pragma unroll
  for (int k = B - 1; k >= 0; --k) {  // L^T x = y
    if (lane == k) x /= l[k];
    const T xk = from_lane(x, k);
    T lki = T(0);  // L(k, lane)
#pragma unroll
    for (int j = 0; j < k; ++j) {
      const T v = from_lane(l[j], k);
      if (j == lane) lki = v;
    }
    if (lane < k) x -= lki * xk;
  }
  return x;
}

// The whole pipeline of docs/contract.md §2 for b <= B <= 32: one warp per matrix, warps_per_block matrices
// per thread block. Whole warps leave together; nothing else is synchronised across warps.
template <class T, int B>
__global__ void warp_kernel(Params<T> p, int warps_per_block) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t n = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  if (n >= p.N) return;
  const int b = p.b;
  const bool real = lane < b;

  // Row `lane` of S = (H + H^T)/2, identity outside the real block; its largest entry and
  // whether it is finite, over the warp.
  T s[B];
  T max_abs = T(0), non_finite = T(0);
  const T* h = p.H + n * b * b;
#pragma unroll
  for (int j = 0; j < B; ++j) {
    T v = j == lane ? T(1) : T(0);
    if (real && j < b) {
      v = symmetric_entry(h[lane * b + j], h[j * b + lane]);
      if (!LaneOps<T>::finite(v)) non_finite = T(1);
      else max_abs = LaneOps<T>::max(max_abs, LaneOps<T>::abs(v));
    }
    s[j] = v;
  }
  max_abs = warp_max(max_abs);
  const T damping = p.damping_in[n];
  // A negative, infinite or NaN damping is not checked on the host (that would synchronise): such
  // a block takes the fallback, as a non-finite H does.
  const bool finite = warp_max(non_finite) == T(0) && damping >= T(0) && LaneOps<T>::finite(damping);
  if (!finite) {
#pragma unroll
    for (int j = 0; j < B; ++j) s[j] = j == lane ? T(1) : T(0);
  }

  T a[B], w[B], m[B];
  T used = damping;
  bool ok = false, raised = false;
  if (finite && p.mode == Mode::kCholesky) {
    T diagonal = -std::numeric_limits<T>::infinity();  // S's largest diagonal entry, over the warp
#pragma unroll
    for (int j = 0; j < B; ++j)
      if (real && j == lane) diagonal = s[j];
    const T diagonal_max = warp_max(diagonal);
    ok = search_damping(damping, damping_floor<T>(max_abs), p.max_tries, [&](T d) {
#pragma unroll
      for (int j = 0; j < B; ++j) a[j] = s[j] + (real && j == lane ? d : T(0));
      if (!warp_cholesky<T, B>(a, lane, b, damped_min_pivot<T>(diagonal_max + d, b))) return false;
      warp_invert_lower<T, B>(a, w, lane);  // w = L^{-1}
      warp_lower_gram<T, B>(w, m, lane);    // m = A^{-1}
#pragma unroll
      for (int j = 0; j < B; ++j) m[j] = (s[j] + (real && j == lane ? d : T(0))) + p.mu2 * m[j];
      return warp_cholesky<T, B>(m, lane, b, correction_min_pivot(p.mu));  // m = L_M
    }, used, raised);
  } else if (finite) {
#pragma unroll
    for (int j = 0; j < B; ++j) a[j] = s[j] + (real && j == lane ? damping : T(0));  // A
    warp_multiply<T, B>(a, a, m);  // A^2 (A is symmetric: row k of A is column k)
#pragma unroll
    for (int j = 0; j < B; ++j)
      if (j == lane) m[j] += p.mu2;  // C = A^2 + mu^2 I
    ok = warp_cholesky<T, B>(m, lane, b, shifted_square_min_pivot(p.mu2));  // m = L_C
  }

  if (lane == 0) {
    p.damping_out[n] = used;
    p.status[n] = status_code(finite, ok, raised);
  }

  if (p.P != nullptr) {
    for (int64_t c = 0; c < p.r; ++c) {
      const T g = real ? p.G[(n * b + lane) * p.r + c] : T(0);
      T x = g;
      if (ok) {
        x = warp_cholesky_solve<T, B>(m, g, lane);  // M^{-1} g, or C^{-1} g
        if (p.mode == Mode::kSingularSafe) {  // A C^{-1} g
          T ax = T(0);
#pragma unroll
          for (int k = 0; k < B; ++k) ax += a[k] * from_lane(x, k);
          x = ax;
        }
      }
      if (real) p.P[(n * b + lane) * p.r + c] = ok ? x : fallback_step(g, p.mu2);
    }
  } else {
    if (ok) {
      warp_invert_lower<T, B>(m, w, lane);
      warp_lower_gram<T, B>(w, m, lane);  // M^{-1}, or C^{-1} in singular_safe mode
      if (p.mode == Mode::kSingularSafe) {
        warp_multiply<T, B>(a, m, w);  // A C^{-1}
#pragma unroll
        for (int j = 0; j < B; ++j) m[j] = w[j];
      }
    }
    const T fallback = fallback_step<T>(T(1), p.mu2);
    const int64_t entries = packed_size(b);
    // correct_: a failed block with keep_failed[n] leaves its factor as it was
    if (real && (ok || p.keep_failed == nullptr || !p.keep_failed[n])) {
#pragma unroll
      for (int j = 0; j < B; ++j)
        if (j <= lane)
          p.factor[tiled_offset(n, packed_index(lane, j), entries)] =
              ok ? m[j] : (j == lane ? fallback : T(0));
    }
  }
}

// How a launch covers N blocks of size b: see the top of this file.
struct Mapping {
  bool warp;               // a warp per matrix, in registers (warp_kernel; else team_kernel)
  int rows;                // warp_kernel's register rows B >= b (4, 8, 16 or 32)
  int team_size;           // threads per matrix
  int teams_per_block;     // matrices per thread block
  bool in_shared;          // the workspace fits in shared memory (else the global scratch)
  size_t bytes_per_team;   // dynamic shared memory per team
  int64_t blocks;          // thread blocks of the grid

  size_t shared_bytes() const { return teams_per_block * bytes_per_team; }
  int threads() const { return team_size * teams_per_block; }
};

template <class T>
Mapping choose_mapping(int64_t N, int b, size_t max_shared) {
  Mapping m;
  m.warp = b <= 32;
  m.rows = b <= 4 ? 4 : b <= 8 ? 8 : b <= 16 ? 16 : 32;
  m.team_size = m.warp ? 32 : b <= 64 ? 64 : b <= 128 ? 128 : 256;
  m.teams_per_block = m.warp ? 4 : 1;
  if (m.warp) {  // no shared memory
    m.in_shared = true;
    m.bytes_per_team = 0;
  } else {
    const size_t ws_bytes = aligned16(workspace_entries(b) * sizeof(T));
    m.in_shared = ws_bytes + scalar_bytes<T>(m.team_size) <= max_shared;
    m.bytes_per_team = (m.in_shared ? ws_bytes : 0) + scalar_bytes<T>(m.team_size);
  }
  m.blocks = (N + m.teams_per_block - 1) / m.teams_per_block;
  return m;
}

}  // namespace hsc::cuda
