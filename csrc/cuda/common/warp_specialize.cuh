// Producer / consumer warpgroups on sm_90a: shared-memory mbarriers (a stage's "full" and "empty"
// signals) and the register reallocation that gives consumers what the producer does not need.
#pragma once
#include <cstdint>

#include "cuda/common/wgmma.cuh"

namespace kernels::cuda {

// An mbarrier in shared memory that completes a phase once `count` arrivals are in.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// Arrives (release: this thread's earlier writes are visible to whoever waits on the phase).
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Waits (acquire) until the phase of parity `parity` (0 for the first, 1 for the second, ...)
// has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// Sets this warpgroup's registers per thread (multiples of 8, 24..256; every warp of the group
// executes it). Decrease in the producer first: the consumers' increase waits for the registers.
template <int kRegs>
__device__ __forceinline__ void warpgroup_registers_decrease() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void warpgroup_registers_increase() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace kernels::cuda
