// RMSNorm kernels and their launch policy, shared by rms_norm.cu and fused_add_rms_norm.cu.
//
// rows kernel: a row stays in registers from its load to its store, so memory is read once.
// `group` threads own a row, each holding kVpt units of W elements (unit u belongs to thread
// u % group, so a warp's loads are contiguous); when a row needs at most a warp, several rows
// share a 128-thread block and reduce with shuffles only.
// loop kernel: rows too long for registers; one block per row reads the row twice (the second
// read mostly hits L2).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/launch.cuh"
#include "cuda/common/reduce.cuh"
#include "cuda/common/vec.cuh"

namespace kernels::cuda::norm {

template <typename T>
struct NormArgs {
  T* out;       // rms_norm: the new rows; fused: x, normalized in place
  T* residual;  // fused only: read, then overwritten with x + residual
  const T* x;   // the input rows (fused: the same memory as out)
  const T* weight;
  int64_t rows;
  int hidden;
  int64_t x_stride;  // elements between rows of x; out and residual rows are `hidden` apart
  float eps;
};

// Units per thread of the rows kernel: 4 x 16 bytes keeps 64 bytes in flight per thread and the
// row within 64 registers; element-wise rows hold 8 elements per thread.
constexpr int kWideVpt = 4;
constexpr int kNarrowVpt = 8;
constexpr int kMaxGroup = 1024;
constexpr int kSmallRowBlock = 128;
constexpr int kLoopThreads = 512;

template <typename T, int W, int kVpt, bool kFused>
__global__ void __launch_bounds__(kMaxGroup) rms_norm_rows_kernel(const NormArgs<T> a) {
  constexpr bool kWide = W > 1;
  const int group = blockDim.x;
  const int units = a.hidden / W;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  // Out-of-range rows and units load a clamped in-range address (an L1 hit) instead of
  // branching, so the loads issue back to back; their values are never used.
  const int64_t load_row = min(row, a.rows - 1);
  const T* x = a.x + load_row * a.x_stride;
  const T* residual_in = kFused ? a.residual + load_row * a.hidden : nullptr;

  // Every load is issued before the first store: the fused stores may alias x and residual,
  // which would keep the compiler from hoisting later loads above them.
  bool ok[kVpt];
  Vec<T, W> xv[kVpt], rv[kVpt], wv[kVpt];
#pragma unroll
  for (int j = 0; j < kVpt; ++j) {
    const int u = threadIdx.x + j * group;
    ok[j] = row < a.rows && u < units;
    const int unit = min(u, units - 1);
    xv[j] = load_vec<W, kWide>(x + unit * W);
    if constexpr (kFused) rv[j] = load_vec<W, kWide>(residual_in + unit * W);
    wv[j] = load_vec<W, kWide>(a.weight + unit * W);
  }

  // The fused path keeps the float32 sum (it is normalized unrounded) and stores its rounding
  // to residual right away.
  float sum[kVpt][W];
  float sumsq = 0.f;
#pragma unroll
  for (int j = 0; j < kVpt; ++j) {
    unpack(xv[j], sum[j]);
    if constexpr (kFused) {
      float r[W];
      unpack(rv[j], r);
#pragma unroll
      for (int e = 0; e < W; ++e) sum[j][e] += r[e];
      if (ok[j]) {
        store_vec<W, kWide>(a.residual + row * a.hidden + (threadIdx.x + j * group) * W,
                            pack<T>(sum[j]));
      }
    }
#pragma unroll
    for (int e = 0; e < W; ++e) sumsq += ok[j] ? sum[j][e] * sum[j][e] : 0.f;
  }

  // group is uniform over the block, so every thread takes the same branch (block_sum syncs).
  const float total = group <= 32 ? group_sum(sumsq, group) : block_sum(sumsq);
  const float inv_rms = rsqrtf(total / a.hidden + a.eps);

#pragma unroll
  for (int j = 0; j < kVpt; ++j) {
    if (!ok[j]) continue;
    float w[W], o[W];
    unpack(wv[j], w);
    if constexpr (!kFused) unpack(xv[j], sum[j]);  // plain rms_norm re-reads its registers
#pragma unroll
    for (int e = 0; e < W; ++e) o[e] = sum[j][e] * inv_rms * w[e];
    store_vec<W, kWide>(a.out + row * a.hidden + (threadIdx.x + j * group) * W, pack<T>(o));
  }
}

template <typename T, int W, bool kFused>
__global__ void __launch_bounds__(kLoopThreads) rms_norm_loop_kernel(const NormArgs<T> a) {
  constexpr bool kWide = W > 1;
  const int units = a.hidden / W;
  const int64_t row = blockIdx.x;
  const T* x = a.x + row * a.x_stride;
  T* residual = kFused ? a.residual + row * a.hidden : nullptr;
  T* out = a.out + row * a.hidden;

  // x (+ residual) of unit u in float32; pass 2 recomputes it, so no pass writes what the
  // other reads (each unit belongs to one thread in both passes).
  auto load_sum = [&](int u, float (&s)[W]) {
    unpack(load_vec<W, kWide>(x + u * W), s);
    if constexpr (kFused) {
      float r[W];
      unpack(load_vec<W, kWide>(residual + u * W), r);
#pragma unroll
      for (int e = 0; e < W; ++e) s[e] += r[e];
    }
  };

  float sumsq = 0.f;
#pragma unroll 4
  for (int u = threadIdx.x; u < units; u += blockDim.x) {
    float s[W];
    load_sum(u, s);
#pragma unroll
    for (int e = 0; e < W; ++e) sumsq += s[e] * s[e];
  }
  const float inv_rms = rsqrtf(block_sum(sumsq) / a.hidden + a.eps);

  for (int u = threadIdx.x; u < units; u += blockDim.x) {
    float s[W], w[W], o[W];
    load_sum(u, s);
    unpack(load_vec<W, kWide>(a.weight + u * W), w);
    if constexpr (kFused) store_vec<W, kWide>(residual + u * W, pack<T>(s));
#pragma unroll
    for (int e = 0; e < W; ++e) o[e] = s[e] * inv_rms * w[e];
    store_vec<W, kWide>(out + u * W, pack<T>(o));
  }
}

template <typename T, int W, int kVpt, bool kFused>
void launch_rows(const NormArgs<T>& a, cudaStream_t stream) {
  const int threads_per_row = static_cast<int>(ceil_div(a.hidden / W, kVpt));
  int group = round_up(threads_per_row, 32);
  int rows_per_block = 1;
  if (threads_per_row <= 32) {
    group = next_pow2(threads_per_row);
    rows_per_block = kSmallRowBlock / group;
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(a.rows, rows_per_block)));
  rms_norm_rows_kernel<T, W, kVpt, kFused><<<grid, dim3(group, rows_per_block), 0, stream>>>(a);
}

// Vectorized (16-byte units) when `wide`: hidden, the row stride and every pointer are multiples
// of 16 bytes. Returns the launch status.
template <typename T, bool kFused>
cudaError_t launch_norm(const NormArgs<T>& a, bool wide, cudaStream_t stream) {
  if (a.rows == 0 || a.hidden == 0) return cudaSuccess;
  constexpr int kW = kVec16<T>;
  if (wide && a.hidden <= kMaxGroup * kWideVpt * kW) {
    launch_rows<T, kW, kWideVpt, kFused>(a, stream);
  } else if (!wide && a.hidden <= kMaxGroup * kNarrowVpt) {
    launch_rows<T, 1, kNarrowVpt, kFused>(a, stream);
  } else if (wide) {
    rms_norm_loop_kernel<T, kW, kFused>
        <<<static_cast<unsigned>(a.rows), kLoopThreads, 0, stream>>>(a);
  } else {
    rms_norm_loop_kernel<T, 1, kFused>
        <<<static_cast<unsigned>(a.rows), kLoopThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace kernels::cuda::norm
