// Float sums across a group of lanes or across a whole block, every thread receiving the total.
#pragma once

namespace kernels::cuda {

// Sum over aligned groups of `width` lanes (a power of two <= 32). Every lane of the warp must
// call it (full mask), so callers keep out-of-range lanes alive with a zero contribution.
__device__ __forceinline__ float group_sum(float v, int width) {
  for (int offset = width / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over a one-dimensional block whose size is a multiple of 32. Called once per kernel (the
// shared slots are not reused), by every thread of the block.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_totals[32];
  v = group_sum(v, 32);
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_totals[threadIdx.x / 32] = v;
  __syncthreads();
  // Every warp reduces the warp totals itself (no second barrier); all get the same bits.
  v = lane < blockDim.x / 32 ? warp_totals[lane] : 0.f;
  return group_sum(v, 32);
}

}  // namespace kernels::cuda

namespace kernels::cuda {

// Maximum over aligned groups of `width` lanes, as group_sum.
__device__ __forceinline__ float group_max(float v, int width) {
  for (int offset = width / 2; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Maximum over a one-dimensional block whose size is a multiple of 32, as block_sum.
__device__ __forceinline__ float block_max(float v) {
  __shared__ float warp_maxima[32];
  v = group_max(v, 32);
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_maxima[threadIdx.x / 32] = v;
  __syncthreads();
  v = lane < blockDim.x / 32 ? warp_maxima[lane] : 0.f;
  return group_max(v, 32);
}

}  // namespace kernels::cuda
