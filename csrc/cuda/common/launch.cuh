// Host-side integer helpers for launch shapes.
#pragma once
#include <cstdint>

namespace kernels::cuda {

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr int round_up(int a, int b) { return (a + b - 1) / b * b; }

constexpr int next_pow2(int a) {
  int p = 1;
  while (p < a) p *= 2;
  return p;
}

// Whether p is aligned to `bytes` (a power of two).
inline bool aligned(const void* p, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace kernels::cuda
