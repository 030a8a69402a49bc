// Just enough of CUDA's execution model to run the kernels of csrc/cuda/*_kernel.cuh on the
// host: one std::thread per CUDA thread, barriers for __syncwarp and __syncthreads, a heap buffer
// for the dynamic shared memory. Slow, and blind to what only hardware shows (bank conflicts, the
// memory model's weaker orderings), but it runs the kernels' own indexing, team partitioning,
// synchronisation and early exits, so AddressSanitizer and a deadlock timeout can check them
// without a GPU.
#pragma once

#include <array>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

namespace emulation {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

inline thread_local Dim3 thread_index, block_index, block_dim;
inline thread_local unsigned char* shared_memory = nullptr;
inline thread_local std::barrier<>* warp_barrier = nullptr;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local std::atomic<int>* block_flag = nullptr;  // for __syncthreads_or
inline thread_local std::array<uint64_t, 32>* warp_exchange = nullptr;  // for the shuffles

// Runs kernel(args...) over `blocks` thread blocks of `threads` threads (a multiple of 32) with
// `shared_bytes` of dynamic shared memory each, one block after another.
template <class Kernel, class... Args>
void launch(Kernel kernel, int64_t blocks, int threads, size_t shared_bytes, Args... args) {
  for (int64_t blk = 0; blk < blocks; ++blk) {
    std::vector<unsigned char> shared(shared_bytes + 16);
    std::barrier<> block(threads);
    std::atomic<int> flag{0};
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    for (int w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<std::array<uint64_t, 32>> exchange((threads + 31) / 32);
    std::vector<std::thread> team;
    for (int t = 0; t < threads; ++t) {
      team.emplace_back([&, t] {
        thread_index = Dim3{static_cast<unsigned>(t)};
        block_index = Dim3{static_cast<unsigned>(blk)};
        block_dim = Dim3{static_cast<unsigned>(threads)};
        block_flag = &flag;
        shared_memory = shared.data();
        warp_barrier = warps[t / 32].get();
        warp_exchange = &exchange[t / 32];
        block_barrier = &block;
        kernel(args...);
      });
    }
    for (auto& th : team) th.join();
  }
}

}  // namespace emulation

#define threadIdx (emulation::thread_index)
#define blockIdx (emulation::block_index)
#define blockDim (emulation::block_dim)
#define HSC_DYNAMIC_SHARED(name) unsigned char* name = emulation::shared_memory
inline void __syncwarp() { emulation::warp_barrier->arrive_and_wait(); }
inline void __syncthreads() { emulation::block_barrier->arrive_and_wait(); }
inline int __syncthreads_or(int predicate) {
  __syncthreads();  // the previous call's reset is done
  if (predicate) emulation::block_flag->store(1);
  __syncthreads();
  const int any = emulation::block_flag->load();
  __syncthreads();
  if (emulation::thread_index.x == 0) emulation::block_flag->store(0);
  return any;
}

// Every lane of the warp must call these, as with the full mask on hardware.
template <class T>
T __shfl_sync(unsigned /*mask*/, T value, int source) {
  static_assert(sizeof(T) <= 8, "values up to 8 bytes");
  auto& slots = *emulation::warp_exchange;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  slots[emulation::thread_index.x % 32] = bits;
  __syncwarp();
  bits = slots[source & 31];
  __syncwarp();
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return __shfl_sync(mask, value, static_cast<int>(emulation::thread_index.x % 32) ^ lane_mask);
}
// Whether the predicate holds on any lane of the warp, for every lane (the slots as a shuffle uses
// them, between two warp barriers).
inline int __any_sync(unsigned /*mask*/, int predicate) {
  auto& slots = *emulation::warp_exchange;
  slots[emulation::thread_index.x % 32] = predicate != 0;
  __syncwarp();
  int any = 0;
  for (uint64_t p : slots) any |= p != 0;
  __syncwarp();
  return any;
}
