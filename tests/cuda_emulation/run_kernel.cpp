// Runs the CUDA kernels (csrc/cuda/*_kernel.cuh) on the host under emulate.h, on inputs written
// by tests/test_cuda_emulation.py:
//   run_kernel DIR     reads DIR/params.txt; kernel 0 (correct / correct_ / precondition) reads
//                      the raw arrays H.bin, damping.bin (one value per block) and G.bin
//                      (precondition) or factor.bin (correct, updated in place) and writes
//                      damping_out.bin, status.bin, P.bin or factor.bin and scratch.bin (the
//                      global workspace, if used); kernel 1
//                      (accumulate_probes) reads state.bin, hvps.bin, signs.bin and mask.bin and
//                      writes state.bin and accepted.bin; kernel 2 (solve) reads factor.bin and
//                      G.bin and writes P.bin; kernel 3 (fold_estimate_) reads state.bin,
//                      estimate.bin and mask.bin and writes state.bin and accepted.bin; kernel 4
//                      (eigh) reads H.bin and writes eigenvalues.bin, eigenvectors.bin,
//                      status.bin and scratch.bin (the global workspace, if used); kernel 5
//                      (from an eigen-decomposition: correct_from_eigh_, and the spectral modes
//                      after eigh) reads eigenvalues.bin, eigenvectors.bin, status.bin and
//                      factor.bin (+ keep_failed.bin) or G.bin, and writes factor.bin or P.bin,
//                      launching the kernels in the order the op does; kernel 6 (graft_)
//                      reads P.bin, G.bin and ends.bin and writes P.bin and finite.bin.
// Outputs start as sentinels (kNotWritten, kStatusNotWritten, kEigenNotWritten, accepted 2), not
// zeros, as the op's at::empty buffers hold anything: an entry a kernel forgets to write shows.
#include "emulate.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../../csrc/cuda/accumulate_probes_kernel.cuh"
#include "../../csrc/cuda/correct_from_eigh_kernel.cuh"
#include "../../csrc/cuda/correct_kernel.cuh"
#include "../../csrc/cuda/eigh_kernel.cuh"
#include "../../csrc/cuda/fold_estimate_kernel.cuh"
#include "../../csrc/cuda/graft_kernel.cuh"
#include "../../csrc/cuda/solve_kernel.cuh"

namespace {

// What an output holds before a kernel writes it. -7 is no status, and no damping a test passes in.
template <class T>
constexpr T kNotWritten = std::numeric_limits<T>::quiet_NaN();
constexpr int32_t kStatusNotWritten = -7;
template <class T>
constexpr T kDampingNotWritten = T(-7);
// eigh's outputs hold NaN for status 2, so their sentinel is finite (and no eigenvalue or vector
// entry of the tests' blocks).
template <class T>
constexpr T kEigenNotWritten = T(-7777);

std::map<std::string, double> read_params(const std::string& path) {
  std::map<std::string, double> out;
  std::ifstream in(path);
  std::string key;
  double value;
  while (in >> key >> value) out[key] = value;
  return out;
}

template <class T>
std::vector<T> read_array(const std::string& path, size_t count) {
  std::vector<T> v(count);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(v.data()), count * sizeof(T));
  if (static_cast<size_t>(in.gcount()) != count * sizeof(T)) {
    std::fprintf(stderr, "short read: %s\n", path.c_str());
    std::exit(2);
  }
  return v;
}

template <class T>
void write_array(const std::string& path, const std::vector<T>& v) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

template <class T>
int run(const std::string& dir, std::map<std::string, double>& prm) {
  using namespace hsc;
  using namespace hsc::cuda;
  const int64_t N = static_cast<int64_t>(prm["N"]), r = static_cast<int64_t>(prm["r"]);
  const int b = static_cast<int>(prm["b"]);
  const bool fused = prm["fused"] != 0;
  std::vector<T> H = read_array<T>(dir + "/H.bin", N * b * b);
  std::vector<T> damping = read_array<T>(dir + "/damping.bin", N);
  std::vector<T> damping_out(N, kDampingNotWritten<T>), G, P, factor;
  std::vector<int32_t> status(N, kStatusNotWritten);
  std::vector<uint8_t> keep;  // correct_'s keep_failed flags, one byte per block
  Params<T> p;
  p.H = H.data();
  p.damping_in = damping.data();
  p.damping_out = damping_out.data();
  p.status = status.data();
  if (fused) {
    G = read_array<T>(dir + "/G.bin", N * b * r);
    P.assign(N * b * r, kNotWritten<T>);
    p.G = G.data();
    p.P = P.data();
    p.r = r;
  } else {
    factor = read_array<T>(dir + "/factor.bin", tile_count(N) * packed_size(b) * kTile);
    // What the host does before the launch (csrc/correct_call.h, zero_unused_lanes): the lanes of
    // the last tile past the last block are set to 0; the kernels write real blocks only.
    const int64_t used = N % kTile, entries = packed_size(b);
    if (used != 0)
      for (int64_t e = 0; e < entries; ++e)
        for (int64_t l = used; l < kTile; ++l) factor[tiled_offset((tile_count(N) - 1) * kTile + l, e, entries)] = T(0);
    p.factor = factor.data();
    if (prm["keep_failed"] != 0) {
      keep = read_array<uint8_t>(dir + "/keep_failed.bin", N);
      p.keep_failed = reinterpret_cast<const bool*>(keep.data());
    }
  }
  p.N = N;
  p.b = b;
  p.mu = static_cast<T>(prm["scale"]);
  p.mu2 = static_cast<T>(prm["scale"] * prm["scale"]);
  p.mode = prm["mode"] == 0 ? Mode::kCholesky : Mode::kSingularSafe;
  p.max_tries = static_cast<int>(prm["max_tries"]);
  const Mapping m = choose_mapping<T>(N, b, static_cast<size_t>(prm["max_shared"]));
  // Sentinel-filled (NaN: the op's scratch is at::empty, it holds anything) and written out, as
  // eigh's: an entry a kernel reads before writing it turns its block's result NaN, and the test
  // checks that each block wrote its own region.
  std::vector<T> scratch;
  if (!m.in_shared) {
    scratch.assign(N * workspace_entries(b), kNotWritten<T>);
    p.scratch = scratch.data();
  }
  if (N > 0) {
    if (m.warp) {
      auto kernel = m.rows == 4 ? warp_kernel<T, 4> : m.rows == 8 ? warp_kernel<T, 8>
                    : m.rows == 16 ? warp_kernel<T, 16> : warp_kernel<T, 32>;
      emulation::launch(kernel, m.blocks, m.threads(), m.shared_bytes(), p, m.teams_per_block);
    } else {
      emulation::launch(team_kernel<T>, m.blocks, m.threads(), m.shared_bytes(), p,
                        m.team_size, m.teams_per_block, m.bytes_per_team, m.in_shared);
    }
  }
  write_array(dir + "/damping_out.bin", damping_out);
  write_array(dir + "/status.bin", status);
  if (fused) {
    write_array(dir + "/P.bin", P);
  } else {
    write_array(dir + "/factor.bin", factor);
  }
  write_array(dir + "/scratch.bin", scratch);
  std::printf("mapping warp=%d rows=%d team=%d teams_per_block=%d in_shared=%d blocks=%lld\n",
              m.warp, m.rows, m.team_size, m.teams_per_block, m.in_shared,
              static_cast<long long>(m.blocks));
  return 0;
}

template <class T>
int run_accumulate(const std::string& dir, std::map<std::string, double>& prm) {
  const int64_t S = static_cast<int64_t>(prm["S"]), N = static_cast<int64_t>(prm["N"]);
  const int64_t b = static_cast<int64_t>(prm["b"]);
  std::vector<T> state = read_array<T>(dir + "/state.bin", N * b * b);
  std::vector<T> hvps = read_array<T>(dir + "/hvps.bin", S * b * N * b);
  std::vector<T> signs = read_array<T>(dir + "/signs.bin", S * N);
  std::vector<uint8_t> mask = read_array<uint8_t>(dir + "/mask.bin", N * b);
  std::vector<uint8_t> accepted(N, 2);
  static_assert(sizeof(bool) == 1, "bool arrays are read as bytes");
  emulation::launch(hsc::cuda::accumulate_probes_kernel<T>, N, hsc::cuda::kFoldThreads, 0, state.data(),
                    static_cast<const T*>(hvps.data()), static_cast<const T*>(signs.data()),
                    reinterpret_cast<const bool*>(mask.data()), reinterpret_cast<bool*>(accepted.data()),
                    S, N, b, static_cast<T>(prm["ema"]), prm["first"] != 0);
  write_array(dir + "/state.bin", state);
  write_array(dir + "/accepted.bin", accepted);
  return 0;
}

template <class T>
int run_fold(const std::string& dir, std::map<std::string, double>& prm) {
  const int64_t N = static_cast<int64_t>(prm["N"]), b = static_cast<int64_t>(prm["b"]);
  std::vector<T> state = read_array<T>(dir + "/state.bin", N * b * b);
  std::vector<T> estimate = read_array<T>(dir + "/estimate.bin", N * b * b);
  std::vector<uint8_t> mask = read_array<uint8_t>(dir + "/mask.bin", N * b);
  std::vector<uint8_t> accepted(N, 2);
  if (N > 0)
    emulation::launch(hsc::cuda::fold_estimate_kernel<T>, N, hsc::cuda::kFoldThreads, 0, state.data(),
                      static_cast<const T*>(estimate.data()), reinterpret_cast<const bool*>(mask.data()),
                      reinterpret_cast<bool*>(accepted.data()), b, static_cast<T>(prm["ema"]),
                      prm["first"] != 0);
  write_array(dir + "/state.bin", state);
  write_array(dir + "/accepted.bin", accepted);
  return 0;
}

template <class T>
int run_solve(const std::string& dir, std::map<std::string, double>& prm) {
  const int64_t N = static_cast<int64_t>(prm["N"]), r = static_cast<int64_t>(prm["r"]);
  const int b = static_cast<int>(prm["b"]);
  std::vector<T> factor = read_array<T>(dir + "/factor.bin", hsc::tile_count(N) * hsc::packed_size(b) * hsc::kTile);
  std::vector<T> G = read_array<T>(dir + "/G.bin", N * b * r);
  std::vector<T> P(N * b * r, kNotWritten<T>);
  const int64_t threads = N * b * r;
  const int64_t blocks = (threads + hsc::cuda::kSolveThreads - 1) / hsc::cuda::kSolveThreads;
  if (threads > 0)
    emulation::launch(hsc::cuda::solve_kernel<T>, blocks, hsc::cuda::kSolveThreads, 0,
                      static_cast<const T*>(factor.data()), static_cast<const T*>(G.data()), P.data(),
                      N, b, r);
  write_array(dir + "/P.bin", P);
  return 0;
}


template <class T>
int run_eigh(const std::string& dir, std::map<std::string, double>& prm) {
  using namespace hsc::cuda;
  const int64_t N = static_cast<int64_t>(prm["N"]);
  const int b = static_cast<int>(prm["b"]);
  std::vector<T> H = read_array<T>(dir + "/H.bin", N * b * b);
  std::vector<T> values(N * b, kEigenNotWritten<T>), vectors(N * b * b, kEigenNotWritten<T>);
  std::vector<int32_t> status(N, kStatusNotWritten);
  EighParams<T> p{H.data(), values.data(), vectors.data(), status.data(), N, b,
                  static_cast<int>(prm["max_sweeps"])};
  const Mapping m = choose_eigh_mapping<T>(N, b, static_cast<size_t>(prm["max_shared"]));
  // Sentinel-filled and written out: thread blocks run one after another here, so blocks that
  // shared a region of the scratch would not collide; the test checks that each block's was
  // written (a non-finite block's holds its NaN or Inf).
  std::vector<T> scratch;
  if (!m.in_shared) {
    scratch.assign(N * eigh_workspace_entries(b), kEigenNotWritten<T>);
    p.scratch = scratch.data();
  }
  if (N > 0) {
    if (m.warp) {
      auto kernel = m.rows == 4 ? eigh_warp_kernel<T, 4> : m.rows == 8 ? eigh_warp_kernel<T, 8>
                    : m.rows == 16 ? eigh_warp_kernel<T, 16> : eigh_warp_kernel<T, 32>;
      emulation::launch(kernel, m.blocks, m.threads(), m.shared_bytes(), p, m.teams_per_block);
    } else {
      emulation::launch(eigh_team_kernel<T>, m.blocks, m.threads(), m.shared_bytes(), p, m.team_size,
                        static_cast<bool>(m.in_shared));
    }
  }
  write_array(dir + "/eigenvalues.bin", values);
  write_array(dir + "/eigenvectors.bin", vectors);
  write_array(dir + "/status.bin", status);
  write_array(dir + "/scratch.bin", scratch);
  std::printf("mapping warp=%d rows=%d team=%d in_shared=%d blocks=%lld\n", m.warp, m.rows, m.team_size,
              m.in_shared, static_cast<long long>(m.blocks));
  return 0;
}

// The launches of csrc/cuda/correct_from_eigh_cuda.cu: the multipliers, then the factor (compose)
// or the step (project, expand). `fallback` 0: the rounding of correct / correct_ (mu^2 rounded
// once), 1: that of correct_from_eigh_ (mu rounded, then squared); `power` 0.5: M^-1/2
// (correct_from_eigh_).
template <class T>
int run_from_eigh(const std::string& dir, std::map<std::string, double>& prm) {
  using namespace hsc;
  using namespace hsc::cuda;
  const int64_t N = static_cast<int64_t>(prm["N"]), r = static_cast<int64_t>(prm["r"]);
  const int b = static_cast<int>(prm["b"]);
  const bool fused = prm["fused"] != 0;
  const double scale = prm["scale"];
  const Mode mode = static_cast<Mode>(static_cast<int>(prm["mode"]));
  std::vector<T> values = read_array<T>(dir + "/eigenvalues.bin", N * b);
  std::vector<T> vectors = read_array<T>(dir + "/eigenvectors.bin", N * b * b);
  std::vector<int32_t> status = read_array<int32_t>(dir + "/status.bin", N);
  std::vector<T> f(N * b, kNotWritten<T>);
  const T mu = static_cast<T>(scale), mu2 = static_cast<T>(scale * scale);
  auto grid = [](int64_t threads) { return (threads + kComposeThreads - 1) / kComposeThreads; };
  if (N > 0)
    emulation::launch(multiplier_kernel<T>, grid(N * b), kComposeThreads, 0,
                      static_cast<const T*>(values.data()), static_cast<const int32_t*>(status.data()),
                      f.data(), N, b, mu, mode, !fused && prm["power"] == 0.5);
  if (fused) {
    std::vector<T> G = read_array<T>(dir + "/G.bin", N * b * r);
    std::vector<T> Y(N * b * r, kNotWritten<T>), P(N * b * r, kNotWritten<T>);
    if (N > 0) {
      emulation::launch(project_kernel<T>, grid(N * b * r), kComposeThreads, 0,
                        static_cast<const T*>(vectors.data()), static_cast<const T*>(f.data()),
                        static_cast<const int32_t*>(status.data()), static_cast<const T*>(G.data()),
                        Y.data(), N, b, r);
      emulation::launch(expand_kernel<T>, grid(N * b * r), kComposeThreads, 0,
                        static_cast<const T*>(vectors.data()), static_cast<const T*>(Y.data()),
                        static_cast<const int32_t*>(status.data()), static_cast<const T*>(G.data()),
                        P.data(), N, b, r, mu2);
    }
    write_array(dir + "/P.bin", P);
    return 0;
  }
  std::vector<T> factor = read_array<T>(dir + "/factor.bin", tile_count(N) * packed_size(b) * kTile);
  // The host's zero_unused_lanes (csrc/checks.h): the kernels write real blocks only.
  const int64_t used = N % kTile, entries = packed_size(b);
  if (used != 0)
    for (int64_t e = 0; e < entries; ++e)
      for (int64_t l = used; l < kTile; ++l) factor[tiled_offset((tile_count(N) - 1) * kTile + l, e, entries)] = T(0);
  std::vector<uint8_t> keep;
  if (prm["keep_failed"] != 0) keep = read_array<uint8_t>(dir + "/keep_failed.bin", N);
  T fallback = prm["fallback"] == 0 ? fallback_step<T>(T(1), mu2) : fallback_step<T>(T(1), mu * mu);
  if (prm["power"] == 0.5) fallback = std::sqrt(fallback);
  if (N > 0)
    emulation::launch(compose_kernel<T>, grid(N * entries), kComposeThreads, 0, factor.data(),
                      static_cast<const T*>(vectors.data()), static_cast<const T*>(f.data()),
                      static_cast<const int32_t*>(status.data()),
                      keep.empty() ? nullptr : reinterpret_cast<const bool*>(keep.data()), N, b, fallback);
  write_array(dir + "/factor.bin", factor);
  return 0;
}

template <class T>
int run_graft(const std::string& dir, std::map<std::string, double>& prm) {
  const int64_t N = static_cast<int64_t>(prm["N"]), b = static_cast<int64_t>(prm["b"]);
  const int64_t S = static_cast<int64_t>(prm["S"]);
  std::vector<T> P = read_array<T>(dir + "/P.bin", N * b);
  std::vector<T> G = read_array<T>(dir + "/G.bin", N * b);
  std::vector<int64_t> ends = read_array<int64_t>(dir + "/ends.bin", S);
  std::vector<uint8_t> finite(S, 2);
  if (S > 0)
    emulation::launch(hsc::cuda::graft_kernel<T>, S, hsc::cuda::kGraftThreads, hsc::cuda::kGraftSharedBytes,
                      P.data(), static_cast<const T*>(G.data()), static_cast<const int64_t*>(ends.data()),
                      reinterpret_cast<bool*>(finite.data()), N, b);
  write_array(dir + "/P.bin", P);
  write_array(dir + "/finite.bin", finite);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: run_kernel DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  auto prm = read_params(dir + "/params.txt");
  if (prm["kernel"] == 6)
    return prm["itemsize"] == 8 ? run_graft<double>(dir, prm) : run_graft<float>(dir, prm);
  if (prm["kernel"] == 5)
    return prm["itemsize"] == 8 ? run_from_eigh<double>(dir, prm) : run_from_eigh<float>(dir, prm);
  if (prm["kernel"] == 4)
    return prm["itemsize"] == 8 ? run_eigh<double>(dir, prm) : run_eigh<float>(dir, prm);
  if (prm["kernel"] == 3)
    return prm["itemsize"] == 8 ? run_fold<double>(dir, prm) : run_fold<float>(dir, prm);
  if (prm["kernel"] == 2)
    return prm["itemsize"] == 8 ? run_solve<double>(dir, prm) : run_solve<float>(dir, prm);
  if (prm["kernel"] == 1)
    return prm["itemsize"] == 8 ? run_accumulate<double>(dir, prm) : run_accumulate<float>(dir, prm);
  return prm["itemsize"] == 8 ? run<double>(dir, prm) : run<float>(dir, prm);
}
