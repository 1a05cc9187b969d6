// fp8_gemm kernels for blockwise (1x128 / 128x128) scales, bfloat16 output (fp8_gemm_kernels.cuh).
#include "cuda/quant/fp8_gemm_kernels.cuh"

namespace kernels::cuda::fp8 {

const Family kBlockwiseBf16 = BlockwiseFamily<cutlass::bfloat16_t>::family();

}  // namespace kernels::cuda::fp8
