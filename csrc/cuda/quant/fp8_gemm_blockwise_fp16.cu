// fp8_gemm kernels for blockwise (1x128 / 128x128) scales, float16 output (fp8_gemm_kernels.cuh).
#include "cuda/quant/fp8_gemm_kernels.cuh"

namespace kernels::cuda::fp8 {

const Family kBlockwiseFp16 = BlockwiseFamily<cutlass::half_t>::family();

}  // namespace kernels::cuda::fp8
