// What launchers ask of the driver about a kernel before launching it: whether the device runs its
// sm_90a binary, and the opt-in to more than 48 KB of dynamic shared memory. Both are driver calls:
// done once per kernel and device, not on every launch (and so not during graph capture).
#pragma once
#include <cuda_runtime_api.h>

#include <atomic>

namespace kernels::cuda {

constexpr int kMaxDevices = 64;

// Whether the current device runs an sm_90a binary of `kernel` (not another target's PTX
// JIT-compiled into an empty body, nor nothing). A failed query's error is cleared, so that it
// does not linger as the next launch's.
inline bool runs_sm90a_binary(const void* kernel) {
  cudaFuncAttributes attr{};
  const bool found = cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && attr.binaryVersion == 90;
  (void)cudaGetLastError();
  return found;
}

// Raises `kernel`'s dynamic shared-memory limit to `bytes` on `device` unless `raised` (the
// caller's record for this kernel) says it was done there already.
inline cudaError_t raise_smem_once(const void* kernel, int bytes, int device,
                                   std::atomic<bool> (&raised)[kMaxDevices]) {
  const bool cached = device >= 0 && device < kMaxDevices;
  if (cached && raised[device].load(std::memory_order_acquire)) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess && cached) raised[device].store(true, std::memory_order_release);
  return e;
}

}  // namespace kernels::cuda
