// n / d for 0 <= n < 2^31 and a divisor fixed at launch: a multiply-high, an add and a shift
// (Granlund and Montgomery's method) instead of the ~20-instruction integer division, for index
// math in inner loops (a token's page, with any page size).
#pragma once
#include <cstdint>

namespace kernels::cuda {

struct FastDiv {
  uint32_t d = 1, m = 1, shift = 0;

  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor) {
    while ((uint64_t{1} << shift) < d) ++shift;
    m = static_cast<uint32_t>((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d) / d + 1);
  }

#ifdef __CUDACC__
  __device__ __forceinline__ int div(int n) const {
    const uint32_t u = static_cast<uint32_t>(n);
    return static_cast<int>((__umulhi(u, m) + u) >> shift);
  }
#endif
};

}  // namespace kernels::cuda
