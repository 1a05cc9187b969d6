// The kernel families of fp8_gemm (granularity x output type), one per .cu file so that each
// file's CUTLASS instantiations compile as a job of their own. Torch- and CUTLASS-free: the
// dispatcher (fp8_gemm.cu) includes it.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

#include "cuda/quant/fp8_gemm.h"

namespace kernels::cuda::fp8 {

// Problems with m <= kSmallMaxM run a family's swapped (out^T = b a^T) kernel: data-parallel
// when k <= kMaxUnsplitK or its tiles fill at most half the SMs, else stream-K; larger ones the GEMM as written (fp8_gemm_kernels.cuh): row-wise 128 x 192 and blockwise
// 128 x 128 tiles, persistent when they fill at least kMinWaveFillPercent of their waves' slots
// (one tile per SM each), stream-K otherwise; with fast accumulation, a stream-K 128 x 256 kernel
// from kLargeMinM tokens and kLargeMinK deep on, a persistent ping-pong 128 x 128 one below.
constexpr int kSmallMaxM = 128;
constexpr int kMaxUnsplitK = 2048;
constexpr int kLargeMinM = 512;
constexpr int kLargeMinK = 4096;
constexpr int kMinWaveFillPercent = 80;

struct Family {
  size_t (*workspace_size)(const Fp8GemmArgs& args, int device, int sm_count);
  cudaError_t (*launch)(const Fp8GemmArgs& args, void* workspace, int device, int sm_count,
                        cudaStream_t stream);
};

extern const Family kRowwiseBf16;    // fp8_gemm_rowwise_bf16.cu
extern const Family kRowwiseFp16;    // fp8_gemm_rowwise_fp16.cu
extern const Family kRowwiseFastBf16;  // fp8_gemm_rowwise_fast_bf16.cu
extern const Family kRowwiseFastFp16;  // fp8_gemm_rowwise_fast_fp16.cu
extern const Family kBlockwiseBf16;  // fp8_gemm_blockwise_bf16.cu
extern const Family kBlockwiseFp16;  // fp8_gemm_blockwise_fp16.cu

}  // namespace kernels::cuda::fp8
