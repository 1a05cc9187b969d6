// Float sums and maxima across a group of lanes or across a whole block, every thread receiving
// the result.
#pragma once

namespace kernels::cuda {

struct Sum {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Over aligned groups of `width` lanes (a power of two <= 32). Every lane of the warp must call
// it (full mask), so callers keep out-of-range lanes alive with a neutral contribution.
template <typename Op>
__device__ __forceinline__ float group_reduce(float v, int width, Op op) {
  for (int offset = width / 2; offset > 0; offset >>= 1)
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Over a one-dimensional block whose size is a multiple of 32. Called once per kernel and
// operation (the shared slots are not reused), by every thread of the block. `neutral` fills the
// lanes past the last warp (0 for a sum, and for a maximum of non-negative values).
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, Op op, float neutral) {
  __shared__ float warp_results[32];
  v = group_reduce(v, 32, op);
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_results[threadIdx.x / 32] = v;
  __syncthreads();
  // Every warp reduces the warp results itself (no second barrier); all get the same bits.
  v = lane < blockDim.x / 32 ? warp_results[lane] : neutral;
  return group_reduce(v, 32, op);
}

__device__ __forceinline__ float group_sum(float v, int width) { return group_reduce(v, width, Sum{}); }
__device__ __forceinline__ float block_sum(float v) { return block_reduce(v, Sum{}, 0.f); }
// Maxima of magnitudes (non-negative values).
__device__ __forceinline__ float group_max(float v, int width) { return group_reduce(v, width, Max{}); }
__device__ __forceinline__ float block_max(float v) { return block_reduce(v, Max{}, 0.f); }

}  // namespace kernels::cuda
