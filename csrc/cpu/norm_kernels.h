// RMSNorm and fused add + RMSNorm over a range of rows, written once over the vector layer.
// A row is read from memory once: the sum of squares accumulates in registers, and the second
// sweep finds the row still in L1 (8-16 KiB for the usual hidden sizes).
#pragma once
#include <cmath>
#include <cstdint>

#include "cpu/vec_tail.h"

namespace kernels::cpu {

// Four accumulators hide the FMA latency; a single one would serialise the row.
template <class Vec, class RowValue>
inline float sum_of_squares(int64_t hidden, RowValue value) {
  constexpr int N = Vec::N;
  Vec acc0 = Vec::set1(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int64_t i = 0;
  for (; i + 4 * N <= hidden; i += 4 * N) {
    const Vec v0 = value(i), v1 = value(i + N), v2 = value(i + 2 * N), v3 = value(i + 3 * N);
    acc0 = fmadd(v0, v0, acc0);
    acc1 = fmadd(v1, v1, acc1);
    acc2 = fmadd(v2, v2, acc2);
    acc3 = fmadd(v3, v3, acc3);
  }
  for (; i + N <= hidden; i += N) {
    const Vec v = value(i);
    acc0 = fmadd(v, v, acc0);
  }
  return hsum((acc0 + acc1) + (acc2 + acc3));
}

template <class Vec, class T>
void rms_norm_rows(const T* x, int64_t x_row_stride, const T* weight, T* out, int64_t hidden,
                   float eps, int64_t begin, int64_t end) {
  constexpr int N = Vec::N;
  const int64_t body = hidden - hidden % N;
  const int64_t tail = hidden - body;
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = x + row * x_row_stride;
    T* o = out + row * hidden;
    float ss = sum_of_squares<Vec>(body, [&](int64_t i) { return Vec::load(xr + i); });
    Vec x_tail = Vec::set1(0.0f);
    if (tail) {
      x_tail = load_n<Vec>(xr + body, tail);
      ss += hsum(x_tail * x_tail);
    }
    const Vec scale = Vec::set1(1.0f / std::sqrt(ss / float(hidden) + eps));
    for (int64_t i = 0; i < body; i += N) {
      ((Vec::load(xr + i) * scale) * Vec::load(weight + i)).store(o + i);
    }
    if (tail) store_n(o + body, (x_tail * scale) * load_n<Vec>(weight + body, tail), tail);
  }
}

// The normalisation uses the float32 sum x + residual, not its rounded copy: both sweeps
// recompute it from x and residual, which stay unmodified until the second sweep writes them.
template <class Vec, class T>
void fused_add_rms_norm_rows(T* x, T* residual, const T* weight, int64_t hidden, float eps,
                             int64_t begin, int64_t end) {
  constexpr int N = Vec::N;
  const int64_t body = hidden - hidden % N;
  const int64_t tail = hidden - body;
  for (int64_t row = begin; row < end; ++row) {
    T* xr = x + row * hidden;
    T* rr = residual + row * hidden;
    float ss = sum_of_squares<Vec>(
        body, [&](int64_t i) { return Vec::load(xr + i) + Vec::load(rr + i); });
    Vec sum_tail = Vec::set1(0.0f);
    if (tail) {
      sum_tail = load_n<Vec>(xr + body, tail) + load_n<Vec>(rr + body, tail);
      ss += hsum(sum_tail * sum_tail);
    }
    const Vec scale = Vec::set1(1.0f / std::sqrt(ss / float(hidden) + eps));
    for (int64_t i = 0; i < body; i += N) {
      const Vec s = Vec::load(xr + i) + Vec::load(rr + i);
      s.store(rr + i);
      ((s * scale) * Vec::load(weight + i)).store(xr + i);
    }
    if (tail) {
      store_n(rr + body, sum_tail, tail);
      store_n(xr + body, (sum_tail * scale) * load_n<Vec>(weight + body, tail), tail);
    }
  }
}

}  // namespace kernels::cpu
