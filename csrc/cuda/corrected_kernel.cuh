// The kernel of hsc::correct, hsc::correct_ and hsc::precondition on CUDA (launched from
// precondition_cuda.cu), and its thread mapping.
//
// Thread mapping: a "team" of threads owns one block matrix, held in shared memory with rows
// padded to b + 1 entries (no bank conflicts along columns).
//   b <= 32       a warp per matrix, four matrices per thread block, __syncwarp only;
//   32 < b <= 256 a thread block (64, 128 or 256 threads) per matrix;
//   any b whose workspace does not fit in shared memory: the same kernel with the workspace in a
//                 global scratch tensor (3 b (b+1) + 3 b entries per block), documented fallback.
// The whole pipeline of SPEC §2 runs in one launch: read H once, factorise with the damping
// retries, form the correction, solve, write P (or the factor). The scalar rules (pivot test,
// damping sequence, tau, fallback, status, the factor's layout) come from block_math.h, shared
// with the CPU kernels.
//
// This header needs nothing from torch or the CUDA runtime, so that tests/cuda_emulation can
// compile it for the host and run it with one host thread per CUDA thread (no GPU needed).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../block_math.h"

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

// The threads that own one matrix: a warp, or the whole thread block.
template <bool kWarp>
struct Team {
  int rank;
  int size;
  __device__ __forceinline__ void sync() const {
    if constexpr (kWarp) {
      __syncwarp();
    } else {
      __syncthreads();
    }
  }
};

// Per-team scalars in shared memory.
template <class T>
struct TeamScalars {
  T* reduce;  // team.size entries
  T* value;   // one broadcast value
  int* flag;  // one broadcast flag
};

// The maximum of v over the team, returned to every thread.
template <class T, bool kWarp>
__device__ T team_max(const Team<kWarp>& team, const TeamScalars<T>& sc, T v) {
  sc.reduce[team.rank] = v;
  team.sync();
  if (team.rank == 0) {
    T m = sc.reduce[0];
    for (int t = 1; t < team.size; ++t) m = LaneOps<T>::max(m, sc.reduce[t]);
    sc.value[0] = m;
  }
  team.sync();
  const T out = sc.value[0];
  team.sync();
  return out;
}

// In-place lower Cholesky of a's lower triangle; false (for the whole team) at the first pivot
// that is not usable (finite and > min_pivot). Left-looking: for column j every thread reduces its rows i >= j, then
// rank 0 takes the pivot and the rows are scaled.
template <class T, bool kWarp>
__device__ bool team_cholesky(const Team<kWarp>& team, const TeamScalars<T>& sc, Block<T> a,
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
template <class T, bool kWarp>
__device__ void team_invert_lower(const Team<kWarp>& team, Block<T> l, Block<T> w) {
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
template <class T, bool kWarp>
__device__ void team_lower_gram(const Team<kWarp>& team, Block<T> w, Block<T> out, bool full) {
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
template <class T, bool kWarp>
__device__ void team_square_plus_shift(const Team<kWarp>& team, Block<T> s, T mu2, Block<T> out) {
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
template <class T, bool kWarp>
__device__ void team_multiply(const Team<kWarp>& team, Block<T> x, Block<T> y, Block<T> out) {
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
template <class T, bool kWarp>
__device__ void team_cholesky_solve(const Team<kWarp>& team, Block<T> l, T* x) {
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

template <class T, bool kWarp>
__global__ void corrected_kernel(Params<T> p, int team_size, int teams_per_block,
                                 size_t bytes_per_team, bool workspace_in_shared) {
  HSC_DYNAMIC_SHARED(smem);
  const int slot = threadIdx.x / team_size;
  const int64_t n = int64_t(blockIdx.x) * teams_per_block + slot;
  // Only whole warps leave (warp teams, never synchronised across warps); a block team always
  // has a matrix.
  if (n >= p.N) return;
  const Team<kWarp> team{static_cast<int>(threadIdx.x % team_size), team_size};
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
    const T tau = damping_floor<T>(max_abs);
    T d = damping;
    for (int t = 0; t < p.max_tries; ++t) {
      for (int e = team.rank; e < b * b; e += team.size) {
        const int i = e / b, j = e % b;
        if (j < i) a(i, j) = s(i, j);
        else if (j == i) a(i, i) = s(i, i) + d;
      }
      team.sync();
      used = d;
      if (team_cholesky(team, sc, a, T(0))) {
        team_invert_lower(team, a, m);        // m = L^{-1}
        team_lower_gram(team, m, a, false);   // a = A^{-1}
        for (int e = team.rank; e < b * b; e += team.size) {  // a = S + d I + mu^2 A^{-1}
          const int i = e / b, j = e % b;
          if (j < i) a(i, j) = s(i, j) + p.mu2 * a(i, j);
          else if (j == i) a(i, i) = (s(i, i) + d) + p.mu2 * a(i, i);
        }
        team.sync();
        ok = team_cholesky(team, sc, a, correction_min_pivot(p.mu));  // a = L_M
      }
      if (ok) {
        raised = t > 0;
        break;
      }
      d = next_damping<T>(d, tau);
      if (!LaneOps<T>::usable_pivot(d, T(0))) break;  // an overflowing damping never gives a factor
    }
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
    if (ok || !p.keep_failed) {  // correct_ with keep_failed leaves a failed block's factor as it was
      for (int e = team.rank; e < b * b; e += team.size) {  // the lower triangle, packed and tiled
        const int i = e / b, j = e % b;
        if (j <= i)
          p.factor[tiled_offset(n, packed_index(i, j), entries)] =
              ok ? f(i, j) : (i == j ? fallback : T(0));
      }
    }
  }
}

// How a launch covers N blocks of size b: see the top of this file.
struct Mapping {
  bool warp;               // a warp per matrix (else a thread block)
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
  m.team_size = m.warp ? 32 : b <= 64 ? 64 : b <= 128 ? 128 : 256;
  m.teams_per_block = m.warp ? 4 : 1;
  const size_t ws_bytes = aligned16(workspace_entries(b) * sizeof(T));
  m.in_shared = m.teams_per_block * (ws_bytes + scalar_bytes<T>(m.team_size)) <= max_shared;
  m.bytes_per_team = (m.in_shared ? ws_bytes : 0) + scalar_bytes<T>(m.team_size);
  m.blocks = (N + m.teams_per_block - 1) / m.teams_per_block;
  return m;
}

}  // namespace hsc::cuda
