// Launcher of the scaled FP8 GEMM (plain pointers, no torch): out[M, N] = (a * scale_a) @
// (b * scale_b)^T (+ bias), a e4m3 [M, K] and b e4m3 [N, K], both K-contiguous, out contiguous.
// CUTLASS 3.x sm_90a kernels (warp-specialised, TMA); see fp8_gemm_kernels.cuh.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "cuda/common/dtype.h"

namespace kernels::cuda {

struct Fp8GemmArgs {
  void* out;            // [m, n] of out_dtype (bf16 or fp16)
  const void* a;        // e4m3 [m, k]
  const void* b;        // e4m3 [n, k]
  const float* scale_a;
  const float* scale_b;
  const void* bias;     // [n] of out_dtype, or null
  int m, n, k;
  Dtype out_dtype;
  bool blockwise;
  // Per-tensor / row-wise: whether scale_a is [m] (else one value) and scale_b [n] (else one).
  bool scale_a_per_row, scale_b_per_row;
  // Per-tensor / row-wise: FP8 fast accumulation over the whole of K (else promotion into float32
  // every 128 of K, as blockwise always does).
  bool fast_accum;
  // Blockwise: scale_a is [m, ceil(k / 128)] column-major with columns scale_a_ld floats apart
  // (scale_a_ld >= m rounded up to 4, a multiple of 4, scale_a 16-byte aligned: the kernels read
  // it by TMA, rows up to that rounding included);
  // scale_b is [ceil(n / 128), ceil(k / 128)] row-major.
  int64_t scale_a_ld;
};

// Whether the kernels can run on this device: an sm_90 GPU, and a library built for sm_90a.
// Returns null when they can, else why not.
const char* fp8_gemm_unsupported_reason(int device);

// Bytes of scratch memory the launch needs (stream-K partial tiles); 0 when none.
size_t fp8_gemm_workspace_size(const Fp8GemmArgs& args, int device);

// workspace: at least fp8_gemm_workspace_size bytes (any content; the launch initialises it).
// Returns cudaErrorNotSupported when CUTLASS rejects the problem (alignment), else the launch
// status.
cudaError_t launch_fp8_gemm(const Fp8GemmArgs& args, void* workspace, int device,
                            cudaStream_t stream);

}  // namespace kernels::cuda
