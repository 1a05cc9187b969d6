// Launcher of the CUDA W4A16 GEMM (plain pointers, no torch): out[M, N] = a[M, K] @ W^T with W
// dequantised from our packed INT4 layout (python/kernels/ops/quant.py): qweight int32 [N, K / 8],
// element (n, k) in bits 4 (k % 8) .. + 3 of word (n, k / 8); scales [N, K / group_size]; an
// optional uint8 zero point or float min per group.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/common/dtype.h"

namespace kernels::cuda {

// How each weight is dequantised: (q - 8) s, (q - z) s, or q s + m.
enum class W4A16Mode { kSymmetric, kZeroPoints, kMins };

// The largest M the kernel takes (tokens padded to tiles of 8, up to 4 of them); beyond it the
// re-read MMAs make it slower than the Triton kernel (benchmarks/NOTES.md).
constexpr int kW4A16MaxM = 32;

struct W4A16Problem {
  void* out;                    // [m, n], a's dtype, contiguous
  const void* a;                // [m, k], float16 or bfloat16, contiguous, 16-byte aligned
  const int32_t* qweight;       // [n, k / 8], contiguous, 16-byte aligned
  const void* scales;           // [n, k / group_size], scale_dtype
  const void* extra;            // zero points (uint8) or mins (scale_dtype), or null (symmetric)
  int64_t m, n, k;              // 1 <= m <= kW4A16MaxM; k % 32 == 0
  int group_size;               // 32, 64 or 128
  W4A16Mode mode;
  Dtype dtype;                  // a's and out's: kFloat16 or kBFloat16
  Dtype scale_dtype;            // scales' (and mins'): any of the three
};

// Launches on `stream` (device `device` current). Returns the launch status; cudaErrorInvalidValue
// for arguments outside the contract above.
cudaError_t launch_w4a16_gemm(const W4A16Problem& p, int device, cudaStream_t stream);

}  // namespace kernels::cuda
