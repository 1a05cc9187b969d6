// The vector layer without ISA extensions: plain loops over a few lanes, which the compiler
// maps onto whatever the baseline target has (SSE2 on x86-64, NEON on arm64). Only included by
// isa_scalar.cpp. Everything lives in its own namespace so that no inline function here can be
// merged by the linker with a same-named one built with AVX flags.
//
// Every vec_*.h provides the same interface, which is all the kernels use: Vec (N float lanes;
// set1, load / store from and to float, Half, BFloat16 with round-to-nearest-even, load2 /
// store2), Mask, and + - * /, fmadd, fnmadd, abs, clamp, round_nearest, pow2i, square_error,
// less, select, hsum, pair_swap, max, hmax,
// hsum_lanes, for int4 weights Nibbles and lane_groups, and for int8 weights load_int8.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/dtypes.h"

namespace kernels::cpu::scalar {

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float to_float(float f) { return f; }
inline float to_float(BFloat16 h) { return float_of(uint32_t(h.bits) << 16); }

// c ? a : b with masks: the conversions below must not branch, or the loops over the lanes would
// not vectorise (the compiler will not if-convert float arithmetic on its own).
inline uint32_t pick(bool c, uint32_t a, uint32_t b) {
  const uint32_t m = 0u - uint32_t(c);
  return (a & m) | (b & ~m);
}

inline float to_float(Half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000) << 16;
  const uint32_t rest = h.bits & 0x7FFF;
  // Subnormals are rest * 2^-24, computed without a float subnormal (which flush-to-zero modes
  // would drop); normals only need the exponent rebiased; infinity and NaN keep their mantissa.
  const uint32_t subnormal = bits_of(float(int32_t(rest)) * 0x1p-24f);
  const uint32_t normal = (rest << 13) + ((127 - 15) << 23);
  uint32_t r = pick(rest < 0x400, subnormal, normal);
  r = pick(rest >= 0x7C00, (rest << 13) | 0x7F800000, r);
  return float_of(sign | r);
}

inline BFloat16 to_bfloat16(float f) {
  const uint32_t u = bits_of(f);
  // Round to nearest even: add just under half an ulp, plus one more when the kept part is odd.
  const uint32_t rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16;
  return {uint16_t(pick(f != f, 0x7FC0, rounded))};
}

inline Half to_half(float f) {
  const uint32_t u = bits_of(f);
  const uint32_t sign = (u >> 16) & 0x8000;
  const uint32_t a = u & 0x7FFFFFFF;
  // Normal: rebias the exponent, then round the 13 surplus mantissa bits away to nearest even; a
  // carry out of the mantissa correctly bumps the exponent.
  const uint32_t normal = (a - ((127 - 15) << 23) + 0xFFF + ((a >> 13) & 1)) >> 13;
  // Subnormal: multiples of 2^-24, the ulp of floats in [0.5, 1); adding 0.5 lets the FPU round
  // to nearest even, and the low mantissa bits are the result.
  const uint32_t subnormal = bits_of(float_of(a) + 0.5f) - bits_of(0.5f);
  uint32_t r = pick(a < 0x38800000, subnormal, normal);
  r = pick(a >= 0x477FF000, 0x7C00, r);  // |f| >= 65520 rounds to infinity
  r = pick(a > 0x7F800000, 0x7E00, r);
  return {uint16_t(sign | r)};
}

struct Vec {
  static constexpr int N = 8;
  float v[N];

  static Vec set1(float x) {
    Vec r;
    for (int i = 0; i < N; ++i) r.v[i] = x;
    return r;
  }
  template <class T>
  static Vec load(const T* p) {
    Vec r;
    for (int i = 0; i < N; ++i) r.v[i] = to_float(p[i]);
    return r;
  }
  void store(float* p) const {
    for (int i = 0; i < N; ++i) p[i] = v[i];
  }
  void store(BFloat16* p) const {
    for (int i = 0; i < N; ++i) p[i] = to_bfloat16(v[i]);
  }
  void store(Half* p) const {
    for (int i = 0; i < N; ++i) p[i] = to_half(v[i]);
  }

  // 2N elements as two vectors; the AVX layers may permute them (store2 undoes it), so these are
  // only for elementwise work in which every operand is loaded the same way.
  template <class T>
  static void load2(const T* p, Vec& a, Vec& b) {
    a = load(p);
    b = load(p + N);
  }
  template <class T>
  static void store2(T* p, Vec a, Vec b) {
    a.store(p);
    b.store(p + N);
  }

  // Packed int4 weights (w4a16_gemm): N 32-bit words of 8 four-bit values q_0..q_7 each, q_J in
  // bits 4J..4J+3. get<J>() is q_J * 16^(J % 4) of every word, as float (exact), as in the AVX
  // layers.
  struct Nibbles {
    uint32_t w[N];
    static Nibbles load(const int32_t* p) {
      Nibbles r;
      std::memcpy(r.w, p, sizeof(r.w));
      return r;
    }
    // The first `count` (< N) words; the others read as zero.
    static Nibbles load_partial(const int32_t* p, int64_t count) {
      Nibbles r;
      for (int i = 0; i < N; ++i) r.w[i] = i < count ? uint32_t(p[i]) : 0u;
      return r;
    }
    template <int J>
    Vec get() const {
      Vec r;
      for (int i = 0; i < N; ++i) {
        r.v[i] = float((w[i] >> (16 * (J / 4))) & (0xFu << (4 * (J % 4))));
      }
      return r;
    }
  };
  // N int8 weights (w8a16_gemm) as float, exact.
  static Vec load_int8(const int8_t* p) {
    Vec r;
    for (int i = 0; i < N; ++i) r.v[i] = float(p[i]);
    return r;
  }
  // Lane i = s[i / L], for L = 4, 8 or 16 lanes per group. Lanes from `count` on are zero.
  template <int L>
  static Vec lane_groups(const float* s, int64_t count = N) {
    Vec r;
    for (int i = 0; i < N; ++i) r.v[i] = i < count ? s[i / L] : 0.0f;
    return r;
  }
};
struct Mask {
  bool m[Vec::N];
};

template <class F>
inline Vec map(F f) {
  Vec r;
  for (int i = 0; i < Vec::N; ++i) r.v[i] = f(i);
  return r;
}

inline Vec operator+(Vec a, Vec b) {
  return map([&](int i) { return a.v[i] + b.v[i]; });
}
inline Vec operator-(Vec a, Vec b) {
  return map([&](int i) { return a.v[i] - b.v[i]; });
}
inline Vec operator*(Vec a, Vec b) {
  return map([&](int i) { return a.v[i] * b.v[i]; });
}
inline Vec operator/(Vec a, Vec b) {
  return map([&](int i) { return a.v[i] / b.v[i]; });
}
inline Vec fmadd(Vec a, Vec b, Vec c) {
  return map([&](int i) { return a.v[i] * b.v[i] + c.v[i]; });
}
inline Vec fnmadd(Vec a, Vec b, Vec c) {
  return map([&](int i) { return c.v[i] - a.v[i] * b.v[i]; });
}
inline Vec abs(Vec a) {
  return map([&](int i) { return std::fabs(a.v[i]); });
}
// NaN passes through.
inline Vec clamp(Vec a, float lo, float hi) {
  return map([&](int i) { return a.v[i] < lo ? lo : (a.v[i] > hi ? hi : a.v[i]); });
}
// Adding and removing 1.5 * 2^23 leaves no fraction bits, so the FPU rounds to nearest even;
// baseline x86-64 has no rounding instruction.
inline Vec round_nearest(Vec a) {
  return map([&](int i) { return (a.v[i] + 0x1.8p23f) - 0x1.8p23f; });
}
// 2^n for integral n in [-127, 128]: -127 gives 0 and 128 gives infinity. NaN stays NaN
// (converting it to an integer would be undefined).
inline Vec pow2i(Vec n) {
  return map([&](int i) {
    const float k = n.v[i];
    return k != k ? k : float_of(uint32_t(int32_t(k) + 127) << 23);
  });
}
// a * a - sq, exactly, for sq = a * a rounded.
inline Vec square_error(Vec a, Vec sq) {
  return map([&](int i) { return std::fma(a.v[i], a.v[i], -sq.v[i]); });
}
inline Mask less(Vec a, Vec b) {
  Mask m;
  for (int i = 0; i < Vec::N; ++i) m.m[i] = a.v[i] < b.v[i];
  return m;
}
inline Vec select(Mask m, Vec a, Vec b) {
  return map([&](int i) { return m.m[i] ? a.v[i] : b.v[i]; });
}
inline float hsum(Vec a) {
  float s = 0.f;
  for (int i = 0; i < Vec::N; ++i) s += a.v[i];
  return s;
}
// Lanes (0 1)(2 3)... swapped within each pair.
inline Vec pair_swap(Vec a) {
  return map([&](int i) { return a.v[i ^ 1]; });
}
// Lane-wise maximum and the largest lane (attention's running max; no NaN handling needed).
inline Vec max(Vec a, Vec b) {
  return map([&](int i) { return a.v[i] > b.v[i] ? a.v[i] : b.v[i]; });
}
inline float hmax(Vec a) {
  float m = a.v[0];
  for (int i = 1; i < Vec::N; ++i) m = a.v[i] > m ? a.v[i] : m;
  return m;
}
// Lane i = hsum(a[i]) for N vectors.
inline Vec hsum_lanes(const Vec* a) {
  return map([&](int i) { return hsum(a[i]); });
}

}  // namespace kernels::cpu::scalar
