// Gated activations act(x[:, :d]) * x[:, d:] over a range of output elements, written once over
// the vector layer. Splitting by element rather than by row keeps every thread busy when there
// are few, long rows (decode).
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/vec_tail.h"

namespace kernels::cpu {

template <class Vec, class T, Vec (*Act)(Vec)>
void gated_activation(const T* x, T* out, int64_t d, int64_t begin, int64_t end) {
  constexpr int N = Vec::N;
  for (int64_t e = begin; e < end;) {
    const int64_t row = e / d, col = e % d;
    const int64_t n = std::min(d - col, end - e);
    const T* gate = x + row * 2 * d + col;
    const T* up = gate + d;
    T* o = out + row * d + col;
    int64_t i = 0;
    for (; i + N <= n; i += N) (Act(Vec::load(gate + i)) * Vec::load(up + i)).store(o + i);
    if (i < n) store_n(o + i, Act(load_n<Vec>(gate + i, n - i)) * load_n<Vec>(up + i, n - i), n - i);
    e += n;
  }
}

}  // namespace kernels::cpu
