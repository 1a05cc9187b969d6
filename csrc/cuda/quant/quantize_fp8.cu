// FP8 (e4m3) quantisation: per token (a block per row), per 1 x 128 group (a warp per group) and
// per tensor (an amax pass, then a quantise pass). Memory-bound: each element is read twice at
// most (the second read of a row or group comes from L1 / L2) and written once as one byte.
#include <cuda_fp8.h>

#include <algorithm>

#include "cuda/common/launch.cuh"
#include "cuda/common/reduce.cuh"
#include "cuda/common/vec.cuh"
#include "cuda/quant/quantize_fp8.h"

namespace kernels::cuda {
namespace {

constexpr float kFp8Max = 448.f;
constexpr float kAmaxFloor = 1e-10f;
constexpr int kGroup = 128;
constexpr int kThreads = 256;

// IEEE division: under --use_fast_math a plain `/` by the constant becomes a multiply by 1 / 448,
// one ulp off the reference's scale for about a third of the values of amax.
__device__ __forceinline__ float scale_of(float amax) {
  return __fdiv_rn(fmaxf(amax, kAmaxFloor), kFp8Max);
}

// N elements divided by scale (IEEE division, as the reference: a multiply by 1 / scale could
// land one code away on a rounding boundary), saturated and rounded to e4m3, stored as N bytes.
template <int N>
__device__ __forceinline__ void store_fp8(uint8_t* q, const float (&v)[N], float scale) {
  static_assert(N % 2 == 0 || N == 1);
  if constexpr (N == 1) {
    *q = __nv_cvt_float_to_fp8(__fdiv_rn(v[0], scale), __NV_SATFINITE, __NV_E4M3);
  } else {
    uint16_t pairs[N / 2];
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const float2 f = make_float2(__fdiv_rn(v[i], scale), __fdiv_rn(v[i + 1], scale));
      pairs[i / 2] = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
    }
    // N bytes in one store: the caller's q is N-aligned on the wide path.
    if constexpr (N == 8) {
      *reinterpret_cast<uint2*>(q) = make_uint2(pairs[0] | uint32_t{pairs[1]} << 16,
                                                pairs[2] | uint32_t{pairs[3]} << 16);
    } else if constexpr (N == 4) {
      *reinterpret_cast<uint32_t*>(q) = pairs[0] | uint32_t{pairs[1]} << 16;
    } else {
#pragma unroll
      for (int i = 0; i < N / 2; ++i) reinterpret_cast<uint16_t*>(q)[i] = pairs[i];
    }
  }
}

template <int N, bool kWide, typename T>
__device__ __forceinline__ float load_abs_max(const T* x, float (&v)[N]) {
  unpack(load_vec<N, kWide>(x), v);
  float m = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i) m = fmaxf(m, fabsf(v[i]));
  return m;
}

// One block per row; N elements per thread per step (cols % N == 0).
template <typename T, int N, bool kWide>
__global__ void __launch_bounds__(kThreads) quantize_token_kernel(uint8_t* q, float* scales,
                                                                  const T* x, int64_t cols) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  uint8_t* qr = q + row * cols;
  float v[N];
  float amax = 0.f;
  for (int64_t c = threadIdx.x * N; c < cols; c += kThreads * N)
    amax = fmaxf(amax, load_abs_max<N, kWide>(xr + c, v));
  const float scale = scale_of(block_max(amax));
  if (threadIdx.x == 0) scales[row] = scale;
  for (int64_t c = threadIdx.x * N; c < cols; c += kThreads * N) {
    unpack(load_vec<N, kWide>(xr + c), v);
    store_fp8<N>(qr + c, v, scale);
  }
}

// One warp per (row, group of 128 columns), 4 elements per lane; the last group of a row may be
// partial (then element-wise).
template <typename T, bool kWide>
__global__ void __launch_bounds__(kThreads) quantize_group_kernel(uint8_t* q, float* scales,
                                                                  const T* x, int64_t rows,
                                                                  int64_t cols, bool column_major) {
  const int64_t groups = (cols + kGroup - 1) / kGroup;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  if (warp >= rows * groups) return;  // whole warps leave together
  const int64_t row = warp / groups, group = warp % groups;
  const int lane = threadIdx.x % 32;
  const int64_t c0 = group * kGroup + lane * 4;
  const int64_t offset = row * cols + c0;
  const bool whole = (group + 1) * kGroup <= cols;
  float v[4] = {0.f, 0.f, 0.f, 0.f};
  float amax = 0.f;
  if (whole) {
    amax = load_abs_max<4, kWide>(x + offset, v);
  } else {
    for (int i = 0; i < 4; ++i)
      if (c0 + i < cols) {
        v[i] = bits_to_float<T>(load_vec<1, false>(x + offset + i).w[0]);
        amax = fmaxf(amax, fabsf(v[i]));
      }
  }
  const float scale = scale_of(group_max(amax, 32));
  if (lane == 0) scales[column_major ? group * rows + row : row * groups + group] = scale;
  if (whole && kWide) {
    store_fp8<4>(q + offset, v, scale);
  } else {
    for (int i = 0; i < 4; ++i)
      if (c0 + i < cols) store_fp8<1>(q + offset + i, {v[i]}, scale);
  }
}

// Per tensor, pass 1: the amax of everything into *amax_bits (non-negative floats order as their
// bits do, so an integer atomicMax reduces them).
template <typename T, int N, bool kWide>
__global__ void __launch_bounds__(kThreads) tensor_amax_kernel(uint32_t* amax_bits, const T* x,
                                                               int64_t count) {
  float v[N];
  float amax = 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * N;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * N; i < count;
       i += stride)
    amax = fmaxf(amax, load_abs_max<N, kWide>(x + i, v));
  amax = block_max(amax);
  if (threadIdx.x == 0) atomicMax(amax_bits, __float_as_uint(amax));
}

// Per tensor, pass 2: quantise with the static scale, or with the scale of pass 1's amax.
template <typename T, int N, bool kWide>
__global__ void __launch_bounds__(kThreads) tensor_quantize_kernel(
    uint8_t* q, float* scale_out, const T* x, int64_t count, const float* static_scale,
    const uint32_t* amax_bits) {
  const float scale = static_scale ? *static_scale : scale_of(__uint_as_float(*amax_bits));
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale_out = scale;
  float v[N];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * N;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * N; i < count;
       i += stride) {
    unpack(load_vec<N, kWide>(x + i), v);
    store_fp8<N>(q + i, v, scale);
  }
}

template <typename T, int N, bool kWide>
cudaError_t launch_per_tensor(uint8_t* q, float* scale_out, const T* x, int64_t count,
                              const float* static_scale, uint32_t* amax_scratch,
                              cudaStream_t stream) {
  // Enough blocks to fill the device a few times over; each thread strides through the rest.
  const int blocks = static_cast<int>(
      count == 0 ? 1 : std::min<int64_t>(ceil_div(count, int64_t{kThreads} * N), 132 * 8));
  if (!static_scale) {
    cudaError_t status = cudaMemsetAsync(amax_scratch, 0, sizeof(uint32_t), stream);
    if (status != cudaSuccess) return status;
    tensor_amax_kernel<T, N, kWide><<<blocks, kThreads, 0, stream>>>(amax_scratch, x, count);
  }
  tensor_quantize_kernel<T, N, kWide>
      <<<blocks, kThreads, 0, stream>>>(q, scale_out, x, count, static_scale, amax_scratch);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_quantize_fp8(uint8_t* q, float* scales, const void* x, int64_t rows,
                                int64_t cols, Fp8Granularity granularity, bool column_major,
                                const float* static_scale, uint32_t* amax_scratch, Dtype dtype,
                                cudaStream_t stream) {
  if (rows == 0 && granularity != Fp8Granularity::kTensor) return cudaSuccess;
  cudaError_t status = cudaSuccess;
  dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* xt = static_cast<const T*>(x);
    // Wide when every N-element run starts 16-byte (8 elements) or 8-byte (4) aligned.
    const bool wide8 = cols % 8 == 0 && aligned(x, 8 * sizeof(T)) && aligned(q, 8);
    const bool wide4 = cols % 4 == 0 && aligned(x, 4 * sizeof(T)) && aligned(q, 4);
    switch (granularity) {
      case Fp8Granularity::kToken:
        if (wide8) {
          quantize_token_kernel<T, 8, true><<<rows, kThreads, 0, stream>>>(q, scales, xt, cols);
        } else {
          quantize_token_kernel<T, 1, false><<<rows, kThreads, 0, stream>>>(q, scales, xt, cols);
        }
        status = cudaGetLastError();
        break;
      case Fp8Granularity::kGroup128: {
        const int64_t warps = rows * ceil_div(cols, kGroup);
        const int64_t blocks = ceil_div(warps * 32, kThreads);
        if (wide4) {
          quantize_group_kernel<T, true>
              <<<blocks, kThreads, 0, stream>>>(q, scales, xt, rows, cols, column_major);
        } else {
          quantize_group_kernel<T, false>
              <<<blocks, kThreads, 0, stream>>>(q, scales, xt, rows, cols, column_major);
        }
        status = cudaGetLastError();
        break;
      }
      case Fp8Granularity::kTensor:
        status = wide8 ? launch_per_tensor<T, 8, true>(q, scales, xt, rows * cols, static_scale,
                                                       amax_scratch, stream)
                       : launch_per_tensor<T, 1, false>(q, scales, xt, rows * cols, static_scale,
                                                        amax_scratch, stream);
        break;
    }
  });
  return status;
}

}  // namespace kernels::cuda
