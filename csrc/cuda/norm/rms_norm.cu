// rms_norm launcher: picks the element type and the vectorized or element-wise kernels.
#include "cuda/norm/rms_norm.h"
#include "cuda/norm/rms_norm_kernels.cuh"

namespace kernels::cuda {

cudaError_t launch_rms_norm(void* out, const void* x, const void* weight, int64_t rows,
                            int64_t hidden, int64_t x_stride, float eps, Dtype dtype,
                            cudaStream_t stream) {
  cudaError_t status = cudaSuccess;
  dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int kW = kVec16<T>;
    const bool wide = hidden % kW == 0 && x_stride % kW == 0 && aligned(out, 16) &&
                      aligned(x, 16) && aligned(weight, 16);
    const norm::NormArgs<T> args{static_cast<T*>(out),
                                 nullptr,
                                 static_cast<const T*>(x),
                                 static_cast<const T*>(weight),
                                 rows,
                                 static_cast<int>(hidden),
                                 x_stride,
                                 eps};
    status = norm::launch_norm<T, false>(args, wide, stream);
  });
  return status;
}

}  // namespace kernels::cuda
