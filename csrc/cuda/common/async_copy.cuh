// cp.async (sm_80+): 16-byte global -> shared copies that bypass the registers, grouped and
// waited on per pipeline stage; and the block's dynamic shared memory.
#pragma once
#include <cstdint>

namespace kernels::cuda {

// Copies 16 bytes from global `src` to shared `dst`, or zero-fills `dst` without reading when
// !valid (src must still be a valid address: it is not dereferenced, but ptxas wants one).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
               "r"(src_bytes)
               : "memory");
}

// Closes the current group of cp.async copies (a group may be empty).
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most kPending of this thread's groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// The block's dynamic shared memory, 16-byte aligned.
__device__ __forceinline__ char* dynamic_smem() {
  extern __shared__ __align__(16) char kernels_dynamic_smem[];
  return kernels_dynamic_smem;
}

}  // namespace kernels::cuda
