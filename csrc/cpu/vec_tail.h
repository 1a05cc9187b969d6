// Partial vectors for the end of a row: the tail goes through a zero-padded buffer, so it runs the
// same vector code (and rounds the same way) as the body, and nothing past the row is touched.
// Templates over the vector type: each ISA translation unit gets its own instances.
#pragma once
#include <cstdint>
#include <cstring>

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

}  // namespace kernels::cpu
