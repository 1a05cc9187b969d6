// fused_add_rms_norm_ launcher: picks the element type and the vectorized or element-wise kernels.
#include "cuda/norm/rms_norm.h"
#include "cuda/norm/rms_norm_kernels.cuh"

namespace kernels::cuda {

cudaError_t launch_fused_add_rms_norm(void* x, void* residual, const void* weight, int64_t rows,
                                      int64_t hidden, float eps, Dtype dtype, cudaStream_t stream) {
  cudaError_t status = cudaSuccess;
  dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int kW = kVec16<T>;
    const bool wide =
        hidden % kW == 0 && aligned(x, 16) && aligned(residual, 16) && aligned(weight, 16);
    const norm::NormArgs<T> args{static_cast<T*>(x),
                                 static_cast<T*>(residual),
                                 static_cast<const T*>(x),
                                 static_cast<const T*>(weight),
                                 rows,
                                 static_cast<int>(hidden),
                                 hidden,
                                 eps};
    status = norm::launch_norm<T, true>(args, wide, stream);
  });
  return status;
}

}  // namespace kernels::cuda
