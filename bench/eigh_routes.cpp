// The CPU eigensolver's two routes on the same lane groups: cyclic Jacobi (csrc/cpu/lane_eigh.h)
// against Householder tridiagonalisation + implicit QL (csrc/cpu/lane_tridiagonal.h), per block
// size, the measurement behind kTridiagonalFrom. One thread, no torch:
//
//     g++ -O3 -march=native -fno-math-errno -ffp-contract=fast -std=c++17 -Icsrc \
//         bench/eigh_routes.cpp -o /tmp/eigh_routes && /tmp/eigh_routes
//
// Prints a markdown table: microseconds per block of each route (the eigen-decomposition of the
// scaled block with vectors, the load excluded), best of 5 passes over 256 Gaussian symmetric blocks.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/lane_group.h"

using namespace hsc;
using namespace hsc::cpu;

template <class T>
void measure(int b) {
  using V = Vec<T>;
  using Ops = LaneOps<V>;
  constexpr int W = kLanes<T>;
  const int groups = 256 / W;
  Group<T> grp(b);
  std::mt19937_64 rng(b);
  std::normal_distribution<double> normal;
  std::vector<V> blocks(size_t(groups) * b * b);
  for (int g = 0; g < groups; ++g)
    for (int i = 0; i < b; ++i)
      for (int j = 0; j <= i; ++j) {
        V v;
        for (int l = 0; l < W; ++l) v[l] = T(normal(rng));
        blocks[(size_t(g) * b + i) * b + j] = blocks[(size_t(g) * b + j) * b + i] = v;
      }
  std::vector<V> scratch(9 * b);
  double best[2] = {1e30, 1e30};
  for (int pass = 0; pass < 5; ++pass) {
    for (int route = 0; route < 2; ++route) {
      double seconds = 0;
      for (int g = 0; g < groups; ++g) {
        for (int i = 0; i < b; ++i)
          for (int j = 0; j < b; ++j) grp.ws.s(i, j) = blocks[(size_t(g) * b + i) * b + j];
        int sweeps;
        const auto t0 = std::chrono::steady_clock::now();
        if (route == 0) {
          V squares = Ops::splat(0);
          for (int i = 0; i < b; ++i)
            for (int j = 0; j < b; ++j) {
              squares += grp.ws.s(i, j) * grp.ws.s(i, j);
              grp.ws.m(i, j) = Ops::splat(i == j ? T(1) : T(0));
            }
          jacobi_eigen<V>(grp.ws.s, grp.ws.m, Ops::sqrt(squares), Ops::all_lanes(), 30, sweeps);
        } else {
          V* d = scratch.data();
          householder_tridiagonal<V>(grp.ws.s, d, d + b, d + 2 * b, d + 5 * b, grp.ws.m);
          implicit_ql<V>(d, d + b, grp.ws.m, d + 3 * b, d + 4 * b, Ops::all_lanes(), 30, sweeps);
        }
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
      best[route] = std::min(best[route], seconds / (groups * W) * 1e6);
    }
  }
  std::printf("| %s | %d | %.2f | %.2f | %.2fx |\n", sizeof(T) == 4 ? "float32" : "float64", b, best[0], best[1],
              best[0] / best[1]);
}

int main() {
  std::printf("| dtype | b | Jacobi us/block | tridiagonal + QL us/block | Jacobi / tridiagonal |\n|---|---|---|---|---|\n");
  for (int b : {4, 6, 8, 9, 12, 16, 24, 32, 48, 64}) measure<float>(b);
  for (int b : {4, 6, 8, 9, 12, 16, 24, 32, 48, 64}) measure<double>(b);
}
