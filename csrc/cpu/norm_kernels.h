// RMSNorm and fused add + RMSNorm over a range of rows, written once over the vector layer.
// A row is read from memory once: the sum of squares accumulates in registers, and the second
// sweep finds the row still in L1 (8-16 KiB for the usual hidden sizes). Both sweeps work in
// pairs of vectors (Vec::load2), the cheapest unit to convert from and to 16-bit floats.
#pragma once
#include <cmath>
#include <cstdint>

#include "cpu/vec_tail.h"

namespace kernels::cpu {

// Sum of squares of the first `body` elements (a multiple of 2N) of a row whose pairs come from
// load_pair(i, a, b). Four accumulators hide the FMA latency.
template <class Vec, class LoadPair>
inline Vec sum_of_squares(int64_t body, LoadPair load_pair) {
  constexpr int64_t W = 2 * Vec::N;
  Vec acc0 = Vec::set1(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int64_t i = 0;
  for (; i + 2 * W <= body; i += 2 * W) {
    Vec a, b, c, d;
    load_pair(i, a, b);
    load_pair(i + W, c, d);
    acc0 = fmadd(a, a, acc0);
    acc1 = fmadd(b, b, acc1);
    acc2 = fmadd(c, c, acc2);
    acc3 = fmadd(d, d, acc3);
  }
  if (i < body) {
    Vec a, b;
    load_pair(i, a, b);
    acc0 = fmadd(a, a, acc0);
    acc1 = fmadd(b, b, acc1);
  }
  return (acc0 + acc1) + (acc2 + acc3);
}

template <class Vec>
inline Vec rms_scale(Vec sum_sq, int64_t hidden, float eps) {
  return Vec::set1(1.0f / std::sqrt(hsum(sum_sq) / float(hidden) + eps));
}

template <class Vec, class T>
void rms_norm_rows(const T* x, int64_t x_row_stride, const T* weight, T* out, int64_t hidden,
                   float eps, int64_t begin, int64_t end) {
  constexpr int64_t W = 2 * Vec::N;
  const int64_t body = hidden - hidden % W;
  const int64_t tail = hidden - body;
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = x + row * x_row_stride;
    T* o = out + row * hidden;
    Vec sum_sq = sum_of_squares<Vec>(
        body, [&](int64_t i, Vec& a, Vec& b) { Vec::load2(xr + i, a, b); });
    Vec ta = Vec::set1(0.0f), tb = ta;
    if (tail) {
      load2_n(xr + body, tail, ta, tb);
      sum_sq = fmadd(ta, ta, fmadd(tb, tb, sum_sq));
    }
    const Vec scale = rms_scale(sum_sq, hidden, eps);
    for (int64_t i = 0; i < body; i += W) {
      Vec a, b, wa, wb;
      Vec::load2(xr + i, a, b);
      Vec::load2(weight + i, wa, wb);
      Vec::store2(o + i, (a * scale) * wa, (b * scale) * wb);
    }
    if (tail) {
      Vec wa, wb;
      load2_n(weight + body, tail, wa, wb);
      store2_n(o + body, (ta * scale) * wa, (tb * scale) * wb, tail);
    }
  }
}

// The normalisation uses the float32 sum x + residual, not its rounded copy: both sweeps
// recompute it from x and residual, which stay unmodified until the second sweep writes them.
template <class Vec, class T>
void fused_add_rms_norm_rows(T* x, T* residual, const T* weight, int64_t hidden, float eps,
                             int64_t begin, int64_t end) {
  constexpr int64_t W = 2 * Vec::N;
  const int64_t body = hidden - hidden % W;
  const int64_t tail = hidden - body;
  for (int64_t row = begin; row < end; ++row) {
    T* xr = x + row * hidden;
    T* rr = residual + row * hidden;
    const auto sum_pair = [&](int64_t i, Vec& a, Vec& b) {
      Vec ra, rb;
      Vec::load2(xr + i, a, b);
      Vec::load2(rr + i, ra, rb);
      a = a + ra;
      b = b + rb;
    };
    Vec sum_sq = sum_of_squares<Vec>(body, sum_pair);
    Vec ta = Vec::set1(0.0f), tb = ta;
    if (tail) {
      Vec ra, rb;
      load2_n(xr + body, tail, ta, tb);
      load2_n(rr + body, tail, ra, rb);
      ta = ta + ra;
      tb = tb + rb;
      sum_sq = fmadd(ta, ta, fmadd(tb, tb, sum_sq));
    }
    const Vec scale = rms_scale(sum_sq, hidden, eps);
    for (int64_t i = 0; i < body; i += W) {
      Vec a, b, wa, wb;
      sum_pair(i, a, b);
      Vec::store2(rr + i, a, b);
      Vec::load2(weight + i, wa, wb);
      Vec::store2(xr + i, (a * scale) * wa, (b * scale) * wb);
    }
    if (tail) {
      Vec wa, wb;
      store2_n(rr + body, ta, tb, tail);
      load2_n(weight + body, tail, wa, wb);
      store2_n(xr + body, (ta * scale) * wa, (tb * scale) * wb, tail);
    }
  }
}

}  // namespace kernels::cpu
