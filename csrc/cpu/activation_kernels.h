// Gated activations act(x[:, :d]) * x[:, d:] over a range of output elements, written once over
// the vector layer. Splitting by element rather than by row keeps every thread busy when there
// are few, long rows (decode). Elementwise, so the work goes in pairs of vectors (Vec::load2),
// the cheapest unit to convert from and to 16-bit floats.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/vec_tail.h"

namespace kernels::cpu {

template <class Vec, class T, Vec (*Act)(Vec)>
void gated_activation(const T* x, T* out, int64_t d, int64_t begin, int64_t end) {
  constexpr int64_t W = 2 * Vec::N;
  for (int64_t e = begin; e < end;) {
    const int64_t row = e / d, col = e % d;
    const int64_t n = std::min(d - col, end - e);
    const T* gate = x + row * 2 * d + col;
    const T* up = gate + d;
    T* o = out + row * d + col;
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      Vec g0, g1, u0, u1;
      Vec::load2(gate + i, g0, g1);
      Vec::load2(up + i, u0, u1);
      Vec::store2(o + i, Act(g0) * u0, Act(g1) * u1);
    }
    if (i < n) {
      Vec g0, g1, u0, u1;
      load2_n(gate + i, n - i, g0, g1);
      load2_n(up + i, n - i, u0, u1);
      store2_n(o + i, Act(g0) * u0, Act(g1) * u1, n - i);
    }
    e += n;
  }
}

}  // namespace kernels::cpu
