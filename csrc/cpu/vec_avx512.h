// The vector layer on AVX-512 (F, BW, VL, DQ): 16 float lanes. Only included by isa_avx512.cpp,
// the one file built with those flags; its own namespace keeps the linker from mixing these
// inline functions with the baseline ones.
#pragma once
#include <immintrin.h>

#include "cpu/dtypes.h"

namespace kernels::cpu::avx512 {

// float32 -> bfloat16, rounded to nearest even, left in the high 16 bits of each 32-bit lane.
inline __m512i bfloat16_in_high_half(__m512 v) {
  // Add just under half an ulp, plus one more when the kept part is odd.
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  // The carry would turn a NaN into an infinity or flip its sign.
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                               _mm512_set1_epi32(0x7FC00000));
}

struct Vec {
  static constexpr int N = 16;
  __m512 v;

  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const BFloat16* p) {
    const __m512i w =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
  }
  static Vec load(const Half* p) {
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(BFloat16* p) const {
    const __m512i r = _mm512_srli_epi32(bfloat16_in_high_half(v), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
  void store(Half* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
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
  // odd ones: no widening on load and no narrowing on store, which cost ~15% of a norm or an
  // activation.
  static void load2(const BFloat16* p, Vec& even, Vec& odd) {
    const __m512i u = _mm512_loadu_si512(p);
    even = {_mm512_castsi512_ps(_mm512_slli_epi32(u, 16))};
    odd = {_mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(int(0xFFFF0000))))};
  }
  static void store2(BFloat16* p, Vec even, Vec odd) {
    const __m512i lo = _mm512_srli_epi32(bfloat16_in_high_half(even.v), 16);
    const __m512i hi =
        _mm512_and_si512(bfloat16_in_high_half(odd.v), _mm512_set1_epi32(int(0xFFFF0000)));
    _mm512_storeu_si512(p, _mm512_or_si512(lo, hi));
  }

  // Packed int4 weights (w4a16_gemm): N 32-bit words of 8 four-bit values q_0..q_7 each, q_J in
  // bits 4J..4J+3. get<J>() is q_J * 16^(J % 4) of every word, as float (exact): one AND picks
  // a value out of place, and the caller's operand carries the power of 16.
  struct Nibbles {
    __m512i lo, hi;
    static Nibbles load(const int32_t* p) {
      const __m512i w = _mm512_loadu_si512(p);
      return {w, _mm512_srli_epi32(w, 16)};
    }
    // The first `count` (< N) words; the others read as zero.
    static Nibbles load_partial(const int32_t* p, int64_t count) {
      const __m512i w = _mm512_maskz_loadu_epi32(__mmask16((1u << count) - 1), p);
      return {w, _mm512_srli_epi32(w, 16)};
    }
    template <int J>
    Vec get() const {
      const __m512i mask = _mm512_set1_epi32(0xF << (4 * (J % 4)));
      const __m512i x = _mm512_and_si512(J < 4 ? lo : hi, mask);
      return {_mm512_cvtepi32_ps(x)};
    }
  };
  // N int8 weights (w8a16_gemm) as float, exact: one sign-extending load and a conversion.
  static Vec load_int8(const int8_t* p) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))};
  }
  // Lane i = s[i / L], for L = 4, 8 or 16 lanes per group; reads s[0..3]. Lanes from `count` on
  // are zero.
  template <int L>
  static Vec lane_groups(const float* s, int64_t count = N) {
    __m512 v;
    if constexpr (L >= 16) {
      v = _mm512_set1_ps(*s);
    } else {
      const __m512i idx =
          L == 8 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                 : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
      v = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(s)));
    }
    if (count >= N) return {v};
    return {_mm512_maskz_mov_ps(__mmask16((1u << count) - 1), v)};
  }
};
struct Mask {
  __mmask16 m;
};

inline Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
inline Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec fnmadd(Vec a, Vec b, Vec c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }
inline Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
// NaN passes through: max/min return their second operand when one is NaN.
inline Vec clamp(Vec a, float lo, float hi) {
  return {_mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), a.v))};
}
inline Vec round_nearest(Vec a) {
  return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
// 2^n for integral n in [-127, 128]: -127 gives 0 and 128 gives infinity.
inline Vec pow2i(Vec n) {
  const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(e, 23))};
}
// a * a - sq, exactly, for sq = a * a rounded.
inline Vec square_error(Vec a, Vec sq) { return {_mm512_fmsub_ps(a.v, a.v, sq.v)}; }
inline Mask less(Vec a, Vec b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)}; }
inline Vec select(Mask m, Vec a, Vec b) { return {_mm512_mask_blend_ps(m.m, b.v, a.v)}; }
inline float hsum(Vec a) { return _mm512_reduce_add_ps(a.v); }
// Lanes (0 1)(2 3)... swapped within each pair.
inline Vec pair_swap(Vec a) { return {_mm512_permute_ps(a.v, 0xB1)}; }
// Lane-wise maximum and the largest lane (attention's running max; no NaN handling needed).
inline Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
inline float hmax(Vec a) { return _mm512_reduce_max_ps(a.v); }
// Lane i = hsum(a[i]) for N vectors: a transpose folded into the additions, ~3 instructions per
// sum instead of ~8 for hsum alone. Four levels, each halving the width every vector covers;
// the lanes come out transposed 4 x 4 (lane 4k + m holds input 4m + k), undone by the order in
// which the inputs are fed in.
inline Vec hsum_lanes(const Vec* a) {
  const auto in = [&](int p) { return a[4 * (p % 4) + p / 4].v; };
  __m512 s[8], t[4], w[2];
  for (int i = 0; i < 8; ++i) {
    const __m512 x = in(2 * i), y = in(2 * i + 1);
    s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int i = 0; i < 2; ++i) {
    w[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return {_mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                        _mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)))};
}

}  // namespace kernels::cpu::avx512
