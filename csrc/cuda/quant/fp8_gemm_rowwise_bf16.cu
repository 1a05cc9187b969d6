// fp8_gemm kernels for per-tensor / row-wise scales, bfloat16 output (fp8_gemm_kernels.cuh).
#include "cuda/quant/fp8_gemm_kernels.cuh"

namespace kernels::cuda::fp8 {

const Family kRowwiseBf16 = RowwiseFamily<cutlass::bfloat16_t>::family();

}  // namespace kernels::cuda::fp8
