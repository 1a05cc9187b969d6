// Warpgroup MMA (sm_90a): shared-memory matrix descriptors for 128-byte-swizzled tiles and
// m64nNk16 calls (float32 accumulators, bf16 / fp16 inputs) over CuTe's PTX wrappers, whose
// accumulator arguments are spelled out one by one; here they are an array.
//
// A 128-byte-swizzled tile, as the descriptors below assume: rows of 64 elements (128 bytes), row r
// at r * 128, its 16-byte chunk c at chunk c ^ (r % 8) (sw128_offset); the tile's base 1024-byte
// aligned. Wider rows are split into such panels of 64 columns, one after the other.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include <cute/arch/mma_sm90_gmma.hpp>

namespace kernels::cuda {

namespace gmma = cute::SM90::GMMA;

// Byte offset of 16-byte chunk c (0..7) of row r in a 128-byte-swizzled panel.
__host__ __device__ constexpr int sw128_offset(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

// Descriptor of an operand at shared address `addr` (generic -> shared, bytes) in such panels.
// K-major (rows are M or N, contiguous along K): the k16 step's 32 bytes start at addr, 8-row
// groups 1024 bytes apart. MN-major (rows are K, contiguous along M or N): 8-row K groups 1024
// bytes apart, 64-column panels `panel_bytes` apart.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t panel_bytes = 16) {
  return static_cast<uint64_t>((addr >> 4) & 0x3FFF) |
         static_cast<uint64_t>((panel_bytes >> 4) & 0x3FFF) << 16 |
         static_cast<uint64_t>(1024 >> 4) << 32 |
         static_cast<uint64_t>(1) << 62;  // 128-byte swizzle
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Makes this thread's generic-proxy writes to shared memory (st.shared, cp.async once waited)
// visible to the async proxy that wgmma reads through; a barrier after it publishes them.
__device__ __forceinline__ void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Keeps the compiler from moving reads or writes of accumulators across the asynchronous MMA:
// every register is an operand of an empty volatile asm, ordered with the wgmma asms.
template <int N>
__device__ __forceinline__ void fence_registers(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_registers(uint32_t (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

namespace detail {
template <class T, int N, gmma::Major kB>
struct GmmaOps;
#define KERNELS_GMMA_OPS(TYPE, NAME, N)                                            \
  template <gmma::Major kB>                                                        \
  struct GmmaOps<TYPE, N, kB> {                                                    \
    using SS = gmma::MMA_64x##N##x16_F32##NAME##_SS<gmma::Major::K, kB>;           \
    using RS = gmma::MMA_64x##N##x16_F32##NAME##_RS<gmma::Major::K, kB>;           \
  };
KERNELS_GMMA_OPS(__nv_bfloat16, BF16BF16, 64)
KERNELS_GMMA_OPS(__nv_bfloat16, BF16BF16, 128)
KERNELS_GMMA_OPS(__half, F16F16, 64)
KERNELS_GMMA_OPS(__half, F16F16, 128)
#undef KERNELS_GMMA_OPS

template <class Op, int N, size_t... I>
__device__ __forceinline__ void ss(float (&d)[N], uint64_t a, uint64_t b, bool acc, std::index_sequence<I...>) {
  Op::fma(a, b, d[I]..., acc ? gmma::ScaleOut::One : gmma::ScaleOut::Zero);
}
template <class Op, int N, size_t... I>
__device__ __forceinline__ void rs(float (&d)[N], const uint32_t* a, uint64_t b, bool acc,
                                   std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]..., acc ? gmma::ScaleOut::One : gmma::ScaleOut::Zero);
}
}  // namespace detail

// d[64 x N] (+)= A[64 x 16] B[16 x N], A and B in shared memory (A K-major). d's layout per warp w
// of the group: rows 16w + lane / 4 (+ 8), columns 8j + 2 (lane % 4) (+ 1) in d[4j .. 4j + 3],
// mma.sync's C fragment repeated along N. acc = false overwrites d.
template <class T, int N, gmma::Major kB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t a, uint64_t b, bool acc) {
  detail::ss<typename detail::GmmaOps<T, N, kB>::SS>(d, a, b, acc, std::make_index_sequence<N / 2>{});
}

// The same with A from registers a[0..3], mma.sync's m16n8k16 A fragment per warp (its 16 rows);
// they must not change until the MMA has completed.
template <class T, int N, gmma::Major kB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t* a, uint64_t b, bool acc) {
  detail::rs<typename detail::GmmaOps<T, N, kB>::RS>(d, a, b, acc, std::make_index_sequence<N / 2>{});
}

__device__ __forceinline__ void wgmma_fence() { cute::warpgroup_arrive(); }
__device__ __forceinline__ void wgmma_commit() { cute::warpgroup_commit_batch(); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() { cute::warpgroup_wait<kPending>(); }

}  // namespace kernels::cuda
