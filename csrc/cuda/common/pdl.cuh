// Programmatic dependent launch (sm_90+): a kernel launched with launch_overlapping_producer may
// start while the kernel before it in the stream (its producer) is still running, once every CTA
// of the producer has called let_dependents_start or exited; its launch then overlaps the
// producer's tail instead of following it. wait_for_producer blocks until the producer has
// finished and its writes are visible: a dependent calls it before reading anything, since any
// kernel may come before it (an exited CTA's writes are not yet guaranteed visible either). Older
// GPUs launch it normally and both calls compile to nothing.
#pragma once
#include <cuda_runtime_api.h>

#include "device.h"

namespace kernels::cuda {

__device__ __forceinline__ void wait_for_producer() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Called by a producer: its dependents may launch now (they still wait for its completion before
// reading anything it writes). A no-op for a kernel launched after it without the attribute.
__device__ __forceinline__ void let_dependents_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <typename... Params, typename... Args>
cudaError_t launch_overlapping_producer(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                        cudaStream_t stream, Args&&... args) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device_facts(device).major < 9) {
    (void)cudaGetLastError();
    kernel<<<grid, block, smem, stream>>>(static_cast<Params>(args)...);
    return cudaGetLastError();
  }
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

}  // namespace kernels::cuda
