// torch's current CUDA stream on a device, for launches to join the caller's stream order.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace kernels::cuda {

cudaStream_t current_stream(int32_t device_index);

}  // namespace kernels::cuda
