// The kernels of hsc::eigh on CUDA (launched from eigh_cuda.cu; correct_cuda.cu runs them for the
// spectral modes), and their thread mapping: the eigen-decomposition of S = (H + H^T)/2 of every
// block by Jacobi rotations in a parallel ordering.
//
// Thread mapping:
//   b <= 32   eigh_warp_kernel: a warp per matrix, four matrices per thread block; lane i holds
//             row i of A and row i of V in registers (B = 4, 8, 16 or 32 entries, identity
//             padding, as warp_kernel of correct_kernel.cuh); no shared memory, no block-wide
//             barrier;
//   b > 32    eigh_team_kernel: a thread block (64, 128 or 256 threads) per matrix, A and V in
//             shared memory with rows padded to n + 1 entries (n = b rounded up to even), or in a
//             global scratch tensor (2 n (n + 1) entries per matrix) when they do not fit.
// The ordering: the round-robin ("circle") schedule of n indices (n = B, or b rounded up to even;
// the extra indices are identity padding, never rotated): a sweep is n - 1 rounds, each of n/2
// disjoint pairs, every pair once per sweep. The pairs of a round rotate at once: A <- J^T A J,
// V <- V J with J the product of their rotations.
// Per block the rules are those of the CPU (cpu/lane_eigh.h), from eigen_rules.h: S scaled by
// 2^scaling_exponent(max |S_ij|) (eigenvalues scaled back exactly), a pair rotated only where
// |a_pq| > rotation_threshold(||A||_F, b), converged after a whole sweep that rotated nothing;
// status 0 (converged), 2 (NaN or Inf in H: NaN eigenpairs), 3 (not converged within
// max_sweeps: the last iterate); eigenvalues ascending, eigenvectors as columns. The CPU rotates
// one pair after another in cyclic-by-rows order, so the two agree within rounding, not bit for
// bit, and a block may need one sweep more or less here.
//
// This header needs nothing from torch or the CUDA runtime, so that tests/cuda_emulation can
// compile it for the host and run it with one host thread per CUDA thread (no GPU needed).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "../block_rules.h"
#include "../eigen_rules.h"
#include "correct_kernel.cuh"  // Team, TeamScalars, team_reduce, team_max, from_lane, warp_max, Mapping

namespace hsc::cuda {

template <class T>
struct EighParams {
  const T* H;            // [N, b, b], contiguous
  T* eigenvalues;        // [N, b]
  T* eigenvectors;       // [N, b, b], column j the eigenvector of eigenvalue j
  int32_t* status;       // [N]
  int64_t N;
  int b;
  int max_sweeps;
  T* scratch = nullptr;  // team kernel: A and V of each matrix where they do not fit in shared memory
};

// The round-robin schedule of n (even) indices. In the circle method, player n - 1 stays at
// position 1 and the others turn one place each round; positions (2k, 2k + 1) play each other.
// Indices are labelled by their position in round 0, so that round 0 pairs (0, 1), (2, 3), ...
// and a matrix held in round-0 order needs no relabelling at the start or the end of a sweep.
struct RoundRobin {
  // The player at position `pos` in round r (0 <= r < n - 1).
  HSC_HD static int player(int pos, int r, int n) {
    const int m = n - 1;
    if (pos == 1) return m;
    const int k = pos >> 1;
    const int x = (pos & 1) ? r - k : r + k;
    return x < 0 ? x + m : x >= m ? x - m : x;
  }
  // The position of `player` in round r.
  HSC_HD static int seat(int player, int r, int n) {
    const int m = n - 1;
    if (player == m) return 1;
    int k = player - r;
    k = k < 0 ? k + m : k;               // player = r + k (mod m), 0 <= k < m
    return k < n / 2 ? 2 * k : 2 * (m - k) + 1;
  }
  // The index (round-0 position) at position `pos` in round r, and the position of index x.
  HSC_HD static int index_at(int pos, int r, int n) { return seat(player(pos, r, n), 0, n); }
  HSC_HD static int position_of(int x, int r, int n) { return seat(player(x, 0, n), r, n); }
  // Where the index at position `pos` sits in the next round (the same move in every round).
  HSC_HD static constexpr int next_position(int pos, int n) {
    return pos == 1 ? 1 : pos == 0 ? 3 : pos == 2 ? 0 : (pos & 1) == 0 ? pos - 2
           : pos == n - 1 ? n - 2 : pos + 2;
  }
};

template <class T>
HSC_HD T power_of_two(int e) {
  return static_cast<T>(::ldexp(1.0, e));  // exact: |e| stays within the normal range of T
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  // A butterfly: lane l adds v_l + v_{l^o}, its partner v_{l^o} + v_l, the same bits, so every
  // lane ends with the same sum.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// ---- b <= 32: a warp per matrix, held in registers -----------------------------------------
// Lane i holds row i of A and of V in register arrays of B entries, their columns at the
// positions of the current round: the pairs of every round are then the register positions
// (2k, 2k + 1), known at compile time, and after each round the arrays are permuted to the next
// round's positions (register moves; after n - 1 rounds the order is back to the indices').
// Lanes B..31 only take part in the shuffles.

// One round r of the schedule on row `lane` of A (a, with its diagonal in d) and of V (v).
// Returns whether any pair of the warp was rotated.
template <class T, int B>
__device__ bool warp_jacobi_round(T (&a)[B], T (&v)[B], T& d, T threshold, int lane, int r) {
  const bool member = lane < B;
  const int pos = member ? RoundRobin::position_of(lane, r, B) : 0;
  const int partner = member ? RoundRobin::index_at(pos ^ 1, r, B) : lane;
  const bool first = (pos & 1) == 0;  // this lane's index is the pair's p (at an even position)
  // a_pq is taken from p's row: the two rows' copies of an entry are updated in different
  // orders and may differ by rounding, so both lanes must use the same one.
  T pair_entry = T(0);
#pragma unroll
  for (int m = 0; m < B; ++m)
    if (m == (pos ^ 1)) pair_entry = a[m];
  const T from_p = from_lane(pair_entry, partner);
  const T d_partner = from_lane(d, partner);
  const T apq = first ? pair_entry : from_p;
  // Both lanes of a pair compute the same rotation from the same three values.
  const bool rotate = member && LaneOps<T>::less(threshold, LaneOps<T>::abs(apq));
  const Rotation<T> rot =
      Rotation<T>::of(first ? d : d_partner, first ? d_partner : d, apq, rotate);
  const bool any = __any_sync(kFullMask, rotate) != 0;
  if (any) {
    // Columns (A J, V J): every pair's rotation, from the lane of its p, applied within the row.
#pragma unroll
    for (int k = 0; k < B / 2; ++k) {
      const int owner = RoundRobin::index_at(2 * k, r, B);
      const Rotation<T> col{T(0), from_lane(rot.s, owner), from_lane(rot.tau, owner)};
      col.apply(a[2 * k], a[2 * k + 1]);
      col.apply(v[2 * k], v[2 * k + 1]);
    }
    // Rows (J^T A): this row with the partner's, entry by entry (p takes apply's first output,
    // q the second: the same formula with s and tau negated).
    const T s = first ? rot.s : -rot.s, tau = first ? rot.tau : -rot.tau;
#pragma unroll
    for (int m = 0; m < B; ++m) {
      const T other = from_lane(a[m], partner);
      a[m] = a[m] - s * (other + tau * a[m]);
    }
    // The pair's own 2 x 2 block, as on the CPU: a_pp - t a_pq, a_qq + t a_pq, a_pq = 0.
    const T shift = rot.t * apq;
    d = first ? d - shift : d + shift;
#pragma unroll
    for (int m = 0; m < B; ++m) {
      if (m == pos) a[m] = d;
      if (rotate && m == (pos ^ 1)) a[m] = T(0);
    }
  }
  T next[B];
#pragma unroll
  for (int m = 0; m < B; ++m) next[RoundRobin::next_position(m, B)] = a[m];
#pragma unroll
  for (int m = 0; m < B; ++m) a[m] = next[m];
#pragma unroll
  for (int m = 0; m < B; ++m) next[RoundRobin::next_position(m, B)] = v[m];
#pragma unroll
  for (int m = 0; m < B; ++m) v[m] = next[m];
  return any;
}

template <class T, int B>
__global__ void eigh_warp_kernel(EighParams<T> p, int warps_per_block) {
  static_assert(B % 2 == 0 && B >= 4 && B <= 32, "B: 4, 8, 16 or 32 register rows");
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t n = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  if (n >= p.N) return;
  const int b = p.b;
  const bool real = lane < b;

  // Row `lane` of S (identity outside the real block), its largest entry and finiteness over
  // the warp; V = I.
  T a[B], v[B];
  T max_abs = T(0), non_finite = T(0);
  const T* h = p.H + n * b * b;
#pragma unroll
  for (int j = 0; j < B; ++j) {
    T x = j == lane ? T(1) : T(0);
    if (real && j < b) {
      x = symmetric_entry(h[lane * b + j], h[j * b + lane]);
      if (!LaneOps<T>::finite(x)) non_finite = T(1);
      else max_abs = LaneOps<T>::max(max_abs, LaneOps<T>::abs(x));
    }
    a[j] = x;
    v[j] = j == lane ? T(1) : T(0);
  }
  T* values = p.eigenvalues + n * b;
  T* vectors = p.eigenvectors + n * b * b;
  if (warp_max(non_finite) != T(0)) {  // status 2: NaN eigenpairs
    if (real) {
      values[lane] = std::numeric_limits<T>::quiet_NaN();
      for (int j = 0; j < b; ++j) vectors[lane * b + j] = std::numeric_limits<T>::quiet_NaN();
    }
    if (lane == 0) p.status[n] = kNonFinite;
    return;
  }

  // S times 2^e (exact), ||A||_F and the threshold, uniform over the warp.
  const int e = scaling_exponent<T>(warp_max(max_abs));
  const T scale = power_of_two<T>(e);
  T squares = T(0), d = T(1);
#pragma unroll
  for (int j = 0; j < B; ++j) {
    if (real && j < b) {
      a[j] *= scale;
      squares += a[j] * a[j];
    }
    if (j == lane) d = a[j];
  }
  const T threshold = rotation_threshold<T>(LaneOps<T>::sqrt(warp_sum(squares)), b);

  bool rotated = true;  // in the last sweep: not converged yet
  for (int sweep = 0; sweep < p.max_sweeps && rotated; ++sweep) {
    rotated = false;
    for (int r = 0; r < B - 1; ++r) rotated |= warp_jacobi_round<T, B>(a, v, d, threshold, lane, r);
  }

  // Ascending: the rank of this lane's eigenvalue among the real ones (ties by index); lane i
  // writes eigenvalue `rank` and row i of the eigenvectors, column rank(x) from v[x].
  int rank = 0;
#pragma unroll
  for (int y = 0; y < B; ++y) {
    const T dy = from_lane(d, y);
    if (y < b && (dy < d || (dy == d && y < lane))) ++rank;
  }
  if (real) values[rank] = d * power_of_two<T>(-e);
#pragma unroll
  for (int x = 0; x < B; ++x) {
    const int rank_x = from_lane(rank, x);
    if (real && x < b) vectors[lane * b + rank_x] = v[x];
  }
  if (lane == 0) p.status[n] = rotated ? kFailed : kFactorised;
}

// ---- b > 32: a thread block per matrix, in shared memory (or global scratch) ----------------
// Each round: the threads compute the rotations of the n/2 pairs (and the pairs' own 2 x 2
// blocks), then, after a barrier, update every off-diagonal 2 x 2 block (K, M), K < M, of A
// (one thread each, written to both triangles, so A stays exactly symmetric) and the pairs of
// columns of V.

// The order n of the padded matrix: b rounded up to even (the schedule pairs n indices).
__host__ __device__ inline int eigh_order(int b) { return b + (b & 1); }

// Entries of one matrix's workspace: A and V, n rows of n + 1 entries each.
__host__ __device__ inline int64_t eigh_workspace_entries(int b) {
  const int64_t n = eigh_order(b);
  return 2 * n * (n + 1);
}

// Bytes of the per-team scalars: the rotations (s, tau) and pairs (p, q) of a round, the
// eigenvalues' order, the reduction slots.
template <class T>
__host__ __device__ size_t eigh_scalar_bytes(int team_size, int b) {
  const int n = eigh_order(b), pairs = n / 2;
  return aligned16(2 * pairs * sizeof(T)) + aligned16((2 * pairs + n) * sizeof(int)) +
         scalar_bytes<T>(team_size);
}

template <class T>
__global__ void eigh_team_kernel(EighParams<T> p, int team_size, bool workspace_in_shared) {
  HSC_DYNAMIC_SHARED(smem);
  const int64_t nb = blockIdx.x;  // one matrix per thread block
  const Team team{static_cast<int>(threadIdx.x), team_size};
  const int b = p.b, n = eigh_order(b), pairs = n / 2, ld = n + 1;
  T* ws = workspace_in_shared ? reinterpret_cast<T*>(smem) : p.scratch + nb * eigh_workspace_entries(b);
  unsigned char* rest = workspace_in_shared ? smem + aligned16(eigh_workspace_entries(b) * sizeof(T)) : smem;
  T* rot_s = reinterpret_cast<T*>(rest);
  T* rot_tau = rot_s + pairs;
  int* pair_p = reinterpret_cast<int*>(rest + aligned16(2 * pairs * sizeof(T)));
  int* pair_q = pair_p + pairs;
  int* order = pair_q + pairs;  // order[j]: the index of the j-th smallest eigenvalue
  unsigned char* scalars =
      reinterpret_cast<unsigned char*>(pair_p) + aligned16((2 * pairs + n) * sizeof(int));
  const TeamScalars<T> sc{reinterpret_cast<T*>(scalars), reinterpret_cast<T*>(scalars) + team_size,
                          reinterpret_cast<int*>(reinterpret_cast<T*>(scalars) + team_size + 1)};
  const Block<T> A{ws, n, ld}, V{ws + n * ld, n, ld};

  // S (identity in the padding row and column), its largest entry and finiteness; V = I.
  const T* h = p.H + nb * b * b;
  T max_abs = T(0), non_finite = T(0);
  for (int e = team.rank; e < n * n; e += team.size) {
    const int i = e / n, j = e % n;
    T x = i == j ? T(1) : T(0);
    if (i < b && j < b) {
      x = symmetric_entry(h[i * b + j], h[j * b + i]);
      if (!LaneOps<T>::finite(x)) non_finite = T(1);
      else max_abs = LaneOps<T>::max(max_abs, LaneOps<T>::abs(x));
    }
    A(i, j) = x;
    V(i, j) = i == j ? T(1) : T(0);
  }
  T* values = p.eigenvalues + nb * b;
  T* vectors = p.eigenvectors + nb * b * b;
  if (team_max(team, sc, non_finite) != T(0)) {  // status 2: NaN eigenpairs
    for (int e = team.rank; e < b * b; e += team.size) vectors[e] = std::numeric_limits<T>::quiet_NaN();
    for (int i = team.rank; i < b; i += team.size) values[i] = std::numeric_limits<T>::quiet_NaN();
    if (team.rank == 0) p.status[nb] = kNonFinite;
    return;
  }
  const int exponent = scaling_exponent<T>(team_max(team, sc, max_abs));
  const T scale = power_of_two<T>(exponent);
  T squares = T(0);
  for (int e = team.rank; e < b * b; e += team.size) {
    T& x = A(e / b, e % b);
    x *= scale;
    squares += x * x;
  }
  // ||A||_F: rank 0 adds in rank order, the same bits on every thread
  const T frobenius = LaneOps<T>::sqrt(team_reduce(team, sc, squares, [](T x, T y) { return x + y; }));
  const T threshold = rotation_threshold<T>(frobenius, b);

  bool rotated = true;  // in the last sweep (uniform: from __syncthreads_or)
  for (int sweep = 0; sweep < p.max_sweeps && rotated; ++sweep) {
    rotated = false;
    for (int r = 0; r < n - 1; ++r) {
      int mine = 0;
      for (int k = team.rank; k < pairs; k += team.size) {
        const int pi = RoundRobin::index_at(2 * k, r, n), qi = RoundRobin::index_at(2 * k + 1, r, n);
        const T app = A(pi, pi), aqq = A(qi, qi), apq = A(pi, qi);
        const bool rotate = LaneOps<T>::less(threshold, LaneOps<T>::abs(apq));
        const Rotation<T> rot = Rotation<T>::of(app, aqq, apq, rotate);
        rot_s[k] = rot.s;
        rot_tau[k] = rot.tau;
        pair_p[k] = pi;
        pair_q[k] = qi;
        if (rotate) {  // the pair's own block, as on the CPU (read by no other thread this round)
          const T shift = rot.t * apq;
          A(pi, pi) = app - shift;
          A(qi, qi) = aqq + shift;
          A(pi, qi) = T(0);
          A(qi, pi) = T(0);
          mine = 1;
        }
      }
      if (!__syncthreads_or(mine)) continue;  // nothing to rotate: nothing changes this round
      rotated = true;
      for (int e = team.rank; e < pairs * pairs; e += team.size) {
        const int K = e / pairs, M = e % pairs;
        if (K >= M) continue;
        const int pk = pair_p[K], qk = pair_q[K], pm = pair_p[M], qm = pair_q[M];
        T x00 = A(pk, pm), x01 = A(pk, qm), x10 = A(qk, pm), x11 = A(qk, qm);
        const Rotation<T> rows{T(0), rot_s[K], rot_tau[K]}, cols{T(0), rot_s[M], rot_tau[M]};
        rows.apply(x00, x10);
        rows.apply(x01, x11);
        cols.apply(x00, x01);
        cols.apply(x10, x11);
        A(pk, pm) = x00;
        A(pm, pk) = x00;
        A(pk, qm) = x01;
        A(qm, pk) = x01;
        A(qk, pm) = x10;
        A(pm, qk) = x10;
        A(qk, qm) = x11;
        A(qm, qk) = x11;
      }
      for (int e = team.rank; e < b * pairs; e += team.size) {
        const int i = e / pairs, k = e % pairs;
        Rotation<T>{T(0), rot_s[k], rot_tau[k]}.apply(V(i, pair_p[k]), V(i, pair_q[k]));
      }
      team.sync();
    }
  }

  // Ascending (ties by index): order[rank of x] = x, then coalesced writes.
  const T inverse_scale = power_of_two<T>(-exponent);
  for (int x = team.rank; x < b; x += team.size) {
    const T dx = A(x, x);
    int rank = 0;
    for (int y = 0; y < b; ++y) {
      const T dy = A(y, y);
      if (dy < dx || (dy == dx && y < x)) ++rank;
    }
    order[rank] = x;
    values[rank] = dx * inverse_scale;
  }
  team.sync();
  for (int e = team.rank; e < b * b; e += team.size) vectors[e] = V(e / b, order[e % b]);
  if (team.rank == 0) p.status[nb] = rotated ? kFailed : kFactorised;
}

// How a launch of eigh covers N blocks of size b: see the top of this file (Mapping:
// correct_kernel.cuh).
template <class T>
Mapping choose_eigh_mapping(int64_t N, int b, size_t max_shared) {
  Mapping m;
  m.warp = b <= 32;
  m.rows = b <= 4 ? 4 : b <= 8 ? 8 : b <= 16 ? 16 : 32;
  m.team_size = m.warp ? 32 : b <= 64 ? 64 : b <= 128 ? 128 : 256;
  m.teams_per_block = m.warp ? 4 : 1;
  if (m.warp) {  // no shared memory
    m.in_shared = true;
    m.bytes_per_team = 0;
  } else {
    const size_t ws_bytes = aligned16(eigh_workspace_entries(b) * sizeof(T));
    const size_t rest = eigh_scalar_bytes<T>(m.team_size, b);
    m.in_shared = ws_bytes + rest <= max_shared;
    m.bytes_per_team = (m.in_shared ? ws_bytes : 0) + rest;
  }
  m.blocks = (N + m.teams_per_block - 1) / m.teams_per_block;
  return m;
}

}  // namespace hsc::cuda
