// Just enough of CUDA's execution model to run csrc/cuda/corrected_kernel.cuh on the host: one
// std::thread per CUDA thread, barriers for __syncwarp and __syncthreads, a heap buffer for the
// dynamic shared memory. Slow, and blind to what only hardware shows (bank conflicts, the memory
// model's weaker orderings), but it runs the kernel's own indexing, team partitioning,
// synchronisation and early exits, so AddressSanitizer and a deadlock timeout can check them
// without a GPU.
#pragma once

#include <atomic>
#include <barrier>
#include <cstdint>
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
    std::vector<std::thread> team;
    for (int t = 0; t < threads; ++t) {
      team.emplace_back([&, t] {
        thread_index = Dim3{static_cast<unsigned>(t)};
        block_index = Dim3{static_cast<unsigned>(blk)};
        block_dim = Dim3{static_cast<unsigned>(threads)};
        block_flag = &flag;
        shared_memory = shared.data();
        warp_barrier = warps[t / 32].get();
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
