// What launchers size grids, clusters and shared memory by: a device's facts, queried once.
#pragma once
#include <cuda_runtime_api.h>

#include <atomic>

namespace kernels::cuda {

struct DeviceFacts {
  int sms;
  int major;  // compute capability
  int smem;   // opt-in shared memory per block, bytes
};

// Cached per device after the first successful query (no attribute calls during graph capture).
// When a query fails: an H100's SM count, but no clusters and 99 KB (the safe choices).
inline DeviceFacts device_facts(int device) {
  static std::atomic<int> sms[64], major[64], smem[64];
  const bool cached = device >= 0 && device < 64;
  if (cached && sms[device].load(std::memory_order_acquire) != 0)
    return {sms[device].load(std::memory_order_relaxed), major[device].load(std::memory_order_relaxed),
            smem[device].load(std::memory_order_relaxed)};
  DeviceFacts f{};
  if (cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || f.sms <= 0 ||
      cudaDeviceGetAttribute(&f.major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&f.smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return {132, 8, 99 * 1024};
  }
  if (cached) {
    major[device].store(f.major, std::memory_order_relaxed);
    smem[device].store(f.smem, std::memory_order_relaxed);
    sms[device].store(f.sms, std::memory_order_release);  // last: sms != 0 means all three are set
  }
  return f;
}

}  // namespace kernels::cuda
