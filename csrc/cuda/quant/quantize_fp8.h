// Launcher of the FP8 (e4m3) quantisation kernels (plain pointers, no torch). Scales are float32,
// max(amax, 1e-10) / 448 over the values each covers; q = saturate(x / scale) rounded to nearest
// even. rows == 0 launches nothing (a dynamic per-tensor scale is then the floor's).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/common/dtype.h"

namespace kernels::cuda {

enum class Fp8Granularity { kTensor, kToken, kGroup128 };

// x [rows, cols] contiguous -> q [rows, cols] e4m3 bytes, contiguous. scales: [1] (tensor),
// [rows] (token), or [rows, ceil(cols / 128)] (group128), stored transposed (element (r, g) at
// g * rows + r) when column_major. static_scale (tensor only, may be null) is read on the device;
// amax_scratch is one 32-bit word the dynamic per-tensor path reduces into.
cudaError_t launch_quantize_fp8(uint8_t* q, float* scales, const void* x, int64_t rows,
                                int64_t cols, Fp8Granularity granularity, bool column_major,
                                const float* static_scale, uint32_t* amax_scratch, Dtype dtype,
                                cudaStream_t stream);

}  // namespace kernels::cuda
