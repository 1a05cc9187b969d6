// Partial vectors for the end of a row: the tail goes through a zero-padded buffer, so it runs the
// same vector code (and rounds the same way) as the body, and nothing past the row is touched.
// Templates over the vector type: each ISA translation unit gets its own instances.
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/dtypes.h"

namespace kernels::cpu {

template <class Vec, class T>
inline Vec load_n(const T* p, int64_t n) {
  T buf[Vec::N] = {};
  std::memcpy(buf, p, n * sizeof(T));
  return Vec::load(buf);
}

template <class Vec, class T>
inline void store_n(T* p, Vec a, int64_t n) {
  T buf[Vec::N];
  a.store(buf);
  std::memcpy(p, buf, n * sizeof(T));
}

// The same for Vec::load2 / store2 (2N elements as two vectors).
template <class Vec, class T>
inline void load2_n(const T* p, int64_t n, Vec& a, Vec& b) {
  T buf[2 * Vec::N] = {};
  std::memcpy(buf, p, n * sizeof(T));
  Vec::load2(buf, a, b);
}

template <class Vec, class T>
inline void store2_n(T* p, Vec a, Vec b, int64_t n) {
  T buf[2 * Vec::N];
  Vec::store2(buf, a, b);
  std::memcpy(p, buf, n * sizeof(T));
}

template <class Vec, class Src>
inline void to_float32(const Src* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + Vec::N <= n; i += Vec::N) Vec::load(src + i).store(dst + i);
  if (i < n) store_n(dst + i, load_n<Vec>(src + i, n - i), n - i);
}

template <class Vec, class Dst>
inline void from_float32(const float* src, Dst* dst, int64_t n) {
  int64_t i = 0;
  for (; i + Vec::N <= n; i += Vec::N) Vec::load(src + i).store(dst + i);
  if (i < n) store_n(dst + i, load_n<Vec>(src + i, n - i), n - i);
}

// n elements of a float tensor of dtype `dtype` (from element `offset`) to float32: the group
// parameters of the weight-only GEMMs, whose dtype is independent of a's.
template <class Vec>
inline void any_to_float32(DType dtype, const void* src, int64_t offset, float* dst, int64_t n) {
  switch (dtype) {
    case DType::Float32: return to_float32<Vec>(static_cast<const float*>(src) + offset, dst, n);
    case DType::Float16: return to_float32<Vec>(static_cast<const Half*>(src) + offset, dst, n);
    case DType::BFloat16:
      return to_float32<Vec>(static_cast<const BFloat16*>(src) + offset, dst, n);
  }
}

}  // namespace kernels::cpu
