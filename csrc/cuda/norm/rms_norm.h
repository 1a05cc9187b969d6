// Launchers of the RMSNorm kernels (plain pointers, no torch). Each returns the launch status;
// rows == 0 launches nothing.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/common/dtype.h"

namespace kernels::cuda {

// out[rows, hidden] (contiguous) = x / sqrt(mean(x^2) + eps) * weight; x's rows are x_stride
// elements apart.
cudaError_t launch_rms_norm(void* out, const void* x, const void* weight, int64_t rows,
                            int64_t hidden, int64_t x_stride, float eps, Dtype dtype,
                            cudaStream_t stream);

// In place on contiguous [rows, hidden] x and residual: residual = x + residual, then
// x = rms_norm(the float32 sum) * weight.
cudaError_t launch_fused_add_rms_norm(void* x, void* residual, const void* weight, int64_t rows,
                                      int64_t hidden, float eps, Dtype dtype, cudaStream_t stream);

}  // namespace kernels::cuda
