// The vector layer on AVX2 + FMA + F16C: 8 float lanes. Only included by isa_avx2.cpp, which is
// the one file built with those flags; its own namespace keeps the linker from mixing these
// inline functions with the baseline ones.
#pragma once
#include <immintrin.h>

#include "cpu/dtypes.h"

namespace kernels::cpu::avx2 {

// float32 -> bfloat16, rounded to nearest even, left in the high 16 bits of each 32-bit lane.
inline __m256i bfloat16_in_high_half(__m256 v) {
  // Add just under half an ulp, plus one more when the kept part is odd.
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF)));
  // The carry would turn a NaN into an infinity or flip its sign.
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000),
                            _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}

struct Vec {
  static constexpr int N = 8;
  __m256 v;

  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const BFloat16* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  }
  static Vec load(const Half* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store(BFloat16* p) const {
    const __m256i r = _mm256_srli_epi32(bfloat16_in_high_half(v), 16);
    // packus works per 128-bit half; gather the two useful 64-bit quarters into the low half.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  void store(Half* p) const {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }

  // 2N elements as two vectors, in the lane order that is cheapest to convert; store2 restores
  // it. Only for elementwise work in which every operand is loaded the same way.
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
  // Two bfloat16 share each 32-bit lane, so a shift and a mask split the even elements from the
  // odd ones: no widening on load and no packing on store, which cost ~10% of a norm or an
  // activation.
  static void load2(const BFloat16* p, Vec& even, Vec& odd) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = {_mm256_castsi256_ps(_mm256_slli_epi32(u, 16))};
    odd = {_mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(int(0xFFFF0000))))};
  }
  static void store2(BFloat16* p, Vec even, Vec odd) {
    const __m256i lo = _mm256_srli_epi32(bfloat16_in_high_half(even.v), 16);
    const __m256i hi =
        _mm256_and_si256(bfloat16_in_high_half(odd.v), _mm256_set1_epi32(int(0xFFFF0000)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_or_si256(lo, hi));
  }

  // Packed int4 weights (w4a16_gemm): N 32-bit words of 8 four-bit values q_0..q_7 each, q_J in
  // bits 4J..4J+3. get<J>() is q_J * 16^(J % 4) of every word, as float (exact): one AND picks
  // a value out of place, and the caller's operand carries the power of 16.
  struct Nibbles {
    __m256i lo, hi;
    static Nibbles load(const int32_t* p) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      return {w, _mm256_srli_epi32(w, 16)};
    }
    // The first `count` (< N) words; the others read as zero.
    static Nibbles load_partial(const int32_t* p, int64_t count) {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(count)), lane);
      const __m256i w = _mm256_maskload_epi32(reinterpret_cast<const int*>(p), mask);
      return {w, _mm256_srli_epi32(w, 16)};
    }
    template <int J>
    Vec get() const {
      const __m256i mask = _mm256_set1_epi32(0xF << (4 * (J % 4)));
      const __m256i x = _mm256_and_si256(J < 4 ? lo : hi, mask);
      return {_mm256_cvtepi32_ps(x)};
    }
  };
  // N int8 weights (w8a16_gemm) as float, exact: one sign-extending load and a conversion.
  static Vec load_int8(const int8_t* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))};
  }
  // Lane i = s[i / L], for L = 4, 8 or 16 lanes per group; reads s[0..3]. Lanes from `count` on
  // are zero.
  template <int L>
  static Vec lane_groups(const float* s, int64_t count = N) {
    __m256 v;
    if constexpr (L >= 8) {
      v = _mm256_broadcast_ss(s);
    } else {
      v = _mm256_set_m128(_mm_broadcast_ss(s + 1), _mm_broadcast_ss(s));
    }
    if (count >= N) return {v};
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(count)), lane);
    return {_mm256_and_ps(v, _mm256_castsi256_ps(keep))};
  }
};
struct Mask {
  __m256 m;
};

inline Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
inline Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec fnmadd(Vec a, Vec b, Vec c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
inline Vec abs(Vec a) {
  return {_mm256_and_ps(a.v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)))};
}
// NaN passes through: max/min return their second operand when one is NaN.
inline Vec clamp(Vec a, float lo, float hi) {
  return {_mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), a.v))};
}
inline Vec round_nearest(Vec a) {
  return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
// 2^n for integral n in [-127, 128]: -127 gives 0 and 128 gives infinity.
inline Vec pow2i(Vec n) {
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(e, 23))};
}
// a * a - sq, exactly, for sq = a * a rounded.
inline Vec square_error(Vec a, Vec sq) { return {_mm256_fmsub_ps(a.v, a.v, sq.v)}; }
inline Mask less(Vec a, Vec b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)}; }
inline Vec select(Mask m, Vec a, Vec b) { return {_mm256_blendv_ps(b.v, a.v, m.m)}; }
inline float hsum(Vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// Lanes (0 1)(2 3)... swapped within each pair.
inline Vec pair_swap(Vec a) { return {_mm256_permute_ps(a.v, 0xB1)}; }
// Lane-wise maximum and the largest lane (attention's running max; no NaN handling needed).
inline Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
inline float hmax(Vec a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
// Lane i = hsum(a[i]) for N vectors: a transpose folded into the additions, ~3 instructions per
// sum instead of ~6 for hsum alone. Lane 4h + m comes out holding input 2m + h, undone by the
// order in which the inputs are fed in.
inline Vec hsum_lanes(const Vec* a) {
  const auto in = [&](int p) { return a[4 * (p % 2) + p / 2].v; };
  __m256 s[4], w[2];
  for (int i = 0; i < 4; ++i) {
    const __m256 x = in(2 * i), y = in(2 * i + 1);
    s[i] = _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31));
  }
  for (int i = 0; i < 2; ++i) {
    w[i] = _mm256_add_ps(_mm256_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return {_mm256_add_ps(_mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                        _mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)))};
}

}  // namespace kernels::cpu::avx2
