// Device-side element access. A Vec is N elements held as 32-bit words: one wide load or store
// when aligned (16 bytes: LDG.E.128 / STG.E.128), two 16-bit elements per register. All math is
// float32; pack() rounds once, at the store.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/dtype.h"

namespace kernels::cuda {

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  // 16-bit elements kept one per variable would each take a whole register once the vector lives
  // across a branch; whole words do not. (Only a single 16-bit element has no whole word.)
  using Word = std::conditional_t<sizeof(T) * N % 4 == 0, uint32_t, uint16_t>;
  static constexpr int kWords = sizeof(T) * N / sizeof(Word);
  Word w[kWords];
};

template <typename To, typename From>
__device__ __forceinline__ To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  __builtin_memcpy(&to, &from, sizeof(To));
  return to;
}

// One element, given its bits (the low 16 bits for half / bfloat16), as float.
template <typename T>
__device__ __forceinline__ float bits_to_float(uint32_t bits) {
  if constexpr (std::is_same_v<T, float>) {
    return __uint_as_float(bits);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __uint_as_float(bits << 16);
  } else {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
  }
}

// One float rounded to T, as bits.
template <typename T>
__device__ __forceinline__ uint32_t float_to_bits(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return __float_as_uint(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  } else {
    return __half_as_ushort(__float2half_rn(v));
  }
}

// Two floats rounded to 16-bit T and packed in one word (one conversion instruction).
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return bit_cast<uint32_t>(__floats2bfloat162_rn(lo, hi));
  } else {
    return bit_cast<uint32_t>(__floats2half2_rn(lo, hi));
  }
}

template <typename T, int N>
__device__ __forceinline__ void unpack(const Vec<T, N>& v, float (&out)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if constexpr (sizeof(T) == 4 || Vec<T, N>::kWords == N) {
      out[i] = bits_to_float<T>(v.w[i]);
    } else {
      out[i] = bits_to_float<T>(i % 2 ? v.w[i / 2] >> 16 : v.w[i / 2] & 0xffffu);
    }
  }
}

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> pack(const float (&in)[N]) {
  Vec<T, N> v;
  if constexpr (Vec<T, N>::kWords == N) {
#pragma unroll
    for (int i = 0; i < N; ++i) v.w[i] = float_to_bits<T>(in[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; i += 2) v.w[i / 2] = pack_pair<T>(in[i], in[i + 1]);
  }
  return v;
}

// Loads N elements at p: one wide load when kWide (p aligned to the N elements' total size),
// else N element loads (a row, stride or base pointer that is not aligned).
template <int N, bool kWide, typename T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  if constexpr (kWide) {
    return *reinterpret_cast<const Vec<T, N>*>(p);
  } else if constexpr (sizeof(T) == 4 || N == 1) {
    Vec<T, N> v;
    using Word = typename Vec<T, N>::Word;
#pragma unroll
    for (int i = 0; i < N; ++i) v.w[i] = reinterpret_cast<const Word*>(p)[i];
    return v;
  } else {
    Vec<T, N> v;
    const uint16_t* e = reinterpret_cast<const uint16_t*>(p);
#pragma unroll
    for (int i = 0; i < N; i += 2) v.w[i / 2] = e[i] | static_cast<uint32_t>(e[i + 1]) << 16;
    return v;
  }
}

// Stores N elements at p, with the same alignment rule as load_vec.
template <int N, bool kWide, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  if constexpr (kWide) {
    *reinterpret_cast<Vec<T, N>*>(p) = v;
  } else if constexpr (sizeof(T) == 4 || N == 1) {
    using Word = typename Vec<T, N>::Word;
#pragma unroll
    for (int i = 0; i < N; ++i) reinterpret_cast<Word*>(p)[i] = v.w[i];
  } else {
    uint16_t* e = reinterpret_cast<uint16_t*>(p);
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      e[i] = static_cast<uint16_t>(v.w[i / 2]);
      e[i + 1] = static_cast<uint16_t>(v.w[i / 2] >> 16);
    }
  }
}

// Calls f(T{}) with T the CUDA element type of dtype.
template <typename F>
void dispatch_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat32:
      f(float{});
      break;
    case Dtype::kFloat16:
      f(__half{});
      break;
    case Dtype::kBFloat16:
      f(__nv_bfloat16{});
      break;
  }
}

}  // namespace kernels::cuda
