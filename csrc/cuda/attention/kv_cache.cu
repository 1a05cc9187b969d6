// store_kv_cache and merge_attention_states: pure streams of 16-byte vectors (element-wise
// fallbacks for rows, strides or pointers that are not 16-byte aligned).
#include <cmath>

#include "cuda/attention/paged_attention.h"
#include "cuda/common/launch.cuh"
#include "cuda/common/pdl.cuh"
#include "cuda/common/vec.cuh"

namespace kernels::cuda {
namespace {

// One token per blockIdx.x, blockIdx.y * blockDim.x + threadIdx.x its W-element unit of the row
// (kv_heads * head_dim elements, packed in k, v and the caches alike).
template <typename T, int W>
__global__ void __launch_bounds__(128) store_kv_cache_kernel(
    const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ k_cache,
    T* __restrict__ v_cache, const int64_t* __restrict__ slot_mapping, int64_t row,
    int64_t k_stride, int64_t v_stride, int64_t num_slots) {
  constexpr bool kWide = W > 1;
  let_dependents_start();  // decode attention, next, is placed meanwhile (it waits for this kernel)
  const int64_t t = blockIdx.x;
  const int64_t e = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * W;
  if (e >= row) return;
  const int64_t slot = slot_mapping[t];
  // -1 is padding; any other slot outside the caches is a bad index: never written.
  if (slot < 0 || slot >= num_slots) return;
  const Vec<T, W> kv = load_vec<W, kWide>(k + t * k_stride + e);
  const Vec<T, W> vv = load_vec<W, kWide>(v + t * v_stride + e);
  store_vec<W, kWide>(k_cache + slot * row + e, kv);
  store_vec<W, kWide>(v_cache + slot * row + e, vv);
}

template <typename T, int W>
void launch_store(const void* k, const void* v, void* k_cache, void* v_cache,
                  const int64_t* slot_mapping, int64_t tokens, int64_t row, int64_t k_stride,
                  int64_t v_stride, int64_t num_slots, cudaStream_t stream) {
  const int64_t units = row / W;
  const int threads = static_cast<int>(units >= 128 ? 128 : round_up(static_cast<int>(units), 32));
  const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(ceil_div(units, threads)));
  store_kv_cache_kernel<T, W><<<grid, threads, 0, stream>>>(
      static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(k_cache),
      static_cast<T*>(v_cache), slot_mapping, row, k_stride, v_stride, num_slots);
}

// One W-element unit of v per thread, over all rows * dim / W units; the row's first unit also
// writes its lse.
template <typename T, int W>
__global__ void __launch_bounds__(256) merge_states_kernel(
    T* __restrict__ v, float* __restrict__ lse, const T* __restrict__ v_a,
    const float* __restrict__ lse_a, const T* __restrict__ v_b, const float* __restrict__ lse_b,
    int64_t units, int64_t units_per_row, bool has_v) {
  constexpr bool kWide = W > 1;
  const int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u >= units) return;
  const int64_t r = u / units_per_row;
  const float a = lse_a[r];
  const float b = lse_b[r];
  const float m = fmaxf(a, b);
  float wa = 0.f, wb = 0.f, l = -INFINITY;
  // Both parts empty: v = 0, lse = -inf. A NaN lse propagates through ea or eb.
  if (m != -INFINITY) {
    const float ea = __expf(a - m);
    const float eb = __expf(b - m);
    const float s = ea + eb;
    l = m + __logf(s);
    wa = ea / s;
    wb = eb / s;
  }
  if (u % units_per_row == 0) lse[r] = l;
  if (!has_v) return;
  float fa[W], fb[W], o[W];
  unpack(load_vec<W, kWide>(v_a + u * W), fa);
  unpack(load_vec<W, kWide>(v_b + u * W), fb);
#pragma unroll
  for (int i = 0; i < W; ++i) o[i] = fa[i] * wa + fb[i] * wb;
  store_vec<W, kWide>(v + u * W, pack<T>(o));
}

template <typename T, int W>
void launch_merge(void* v, float* lse, const void* v_a, const float* lse_a, const void* v_b,
                  const float* lse_b, int64_t rows, int64_t dim, cudaStream_t stream) {
  // dim 0: one unit per row, which writes only the lse.
  const bool has_v = dim > 0;
  const int64_t units_per_row = has_v ? dim / W : 1;
  const int64_t units = rows * units_per_row;
  constexpr int kThreads = 256;
  merge_states_kernel<T, W><<<static_cast<unsigned>(ceil_div(units, kThreads)), kThreads, 0,
                              stream>>>(static_cast<T*>(v), lse, static_cast<const T*>(v_a),
                                        lse_a, static_cast<const T*>(v_b), lse_b, units,
                                        units_per_row, has_v);
}

}  // namespace

cudaError_t launch_store_kv_cache(const void* k, const void* v, void* k_cache, void* v_cache,
                                  const int64_t* slot_mapping, int64_t tokens, int64_t row,
                                  int64_t k_stride, int64_t v_stride, int64_t num_slots,
                                  Dtype dtype, cudaStream_t stream) {
  if (tokens == 0 || row == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int kW = kVec16<T>;
    if (row % kW == 0 && k_stride % kW == 0 && v_stride % kW == 0 && aligned(k, 16) &&
        aligned(v, 16) && aligned(k_cache, 16) && aligned(v_cache, 16)) {
      launch_store<T, kW>(k, v, k_cache, v_cache, slot_mapping, tokens, row, k_stride, v_stride,
                          num_slots, stream);
    } else {
      launch_store<T, 1>(k, v, k_cache, v_cache, slot_mapping, tokens, row, k_stride, v_stride,
                         num_slots, stream);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_merge_attention_states(void* v, float* lse, const void* v_a, const float* lse_a,
                                          const void* v_b, const float* lse_b, int64_t rows,
                                          int64_t dim, Dtype dtype, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int kW = kVec16<T>;
    if (dim > 0 && dim % kW == 0 && aligned(v, 16) && aligned(v_a, 16) && aligned(v_b, 16)) {
      launch_merge<T, kW>(v, lse, v_a, lse_a, v_b, lse_b, rows, dim, stream);
    } else {
      launch_merge<T, 1>(v, lse, v_a, lse_a, v_b, lse_b, rows, dim, stream);
    }
  });
  return cudaGetLastError();
}

}  // namespace kernels::cuda
