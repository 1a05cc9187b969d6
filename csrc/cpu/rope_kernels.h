// Rotary embedding in place on q and k, over a range of (token, head) items, written once over
// the vector layer. The cos/sin row of a token is converted to float32 (and, for the GPT-J
// pairing, laid out lane by lane) once, then reused for all of that token's heads.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/kernel_table.h"
#include "cpu/vec_tail.h"

namespace kernels::cpu {

// NeoX pairs (i, i + half): both halves are contiguous, so each is a plain vector.
template <class Vec, class T>
inline void rotate_neox(T* x, const float* cos, const float* sin, int64_t half) {
  constexpr int N = Vec::N;
  int64_t i = 0;
  for (; i + N <= half; i += N) {
    const Vec x1 = Vec::load(x + i), x2 = Vec::load(x + half + i);
    const Vec c = Vec::load(cos + i), s = Vec::load(sin + i);
    fnmadd(x2, s, x1 * c).store(x + i);
    fmadd(x1, s, x2 * c).store(x + half + i);
  }
  if (i < half) {
    const int64_t n = half - i;
    const Vec x1 = load_n<Vec>(x + i, n), x2 = load_n<Vec>(x + half + i, n);
    const Vec c = load_n<Vec>(cos + i, n), s = load_n<Vec>(sin + i, n);
    store_n(x + i, fnmadd(x2, s, x1 * c), n);
    store_n(x + half + i, fmadd(x1, s, x2 * c), n);
  }
}

// GPT-J pairs (2i, 2i + 1) are neighbouring lanes: x' = x * cos2 + swap(x) * sin2, where cos2
// repeats each cos twice and sin2 holds (-sin, +sin) per pair. Vector widths and the tail start
// are even, so no pair straddles two vectors.
template <class Vec, class T>
inline void rotate_gptj(T* x, const float* cos2, const float* sin2, int64_t rot_dim) {
  constexpr int N = Vec::N;
  int64_t i = 0;
  for (; i + N <= rot_dim; i += N) {
    const Vec v = Vec::load(x + i);
    fmadd(pair_swap(v), Vec::load(sin2 + i), v * Vec::load(cos2 + i)).store(x + i);
  }
  if (i < rot_dim) {
    const int64_t n = rot_dim - i;
    const Vec v = load_n<Vec>(x + i, n);
    store_n(x + i, fmadd(pair_swap(v), load_n<Vec>(sin2 + i, n), v * load_n<Vec>(cos2 + i, n)),
            n);
  }
}

// Item t * (q_heads + k_heads) + h is head h of token t, q heads before k heads.
template <class Vec, class T, class Cache>
void rotary_embedding_items(const RopeArgs& a, int64_t begin, int64_t end) {
  const int64_t heads = a.q_heads + a.k_heads;
  const int64_t rot = a.rot_dim, half = rot / 2;
  const Cache* cache = static_cast<const Cache*>(a.cos_sin_cache);
  // row: the cache row in float32 (cos then sin); cos2/sin2: the GPT-J lane layout.
  std::vector<float> scratch(3 * rot);
  float* row = scratch.data();
  float* cos2 = row + rot;
  float* sin2 = cos2 + rot;
  int64_t loaded = -1;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t t = item / heads, h = item % heads;
    if (t != loaded) {
      to_float32<Vec>(cache + a.positions[t] * rot, row, rot);
      if (!a.is_neox) {
        for (int64_t i = 0; i < half; ++i) {
          cos2[2 * i] = cos2[2 * i + 1] = row[i];
          sin2[2 * i] = -row[half + i];
          sin2[2 * i + 1] = row[half + i];
        }
      }
      loaded = t;
    }
    T* x = h < a.q_heads
               ? static_cast<T*>(a.q) + t * a.q_token_stride + h * a.head_dim
               : static_cast<T*>(a.k) + t * a.k_token_stride + (h - a.q_heads) * a.head_dim;
    if (a.is_neox) {
      rotate_neox<Vec>(x, row, row + half, half);
    } else {
      rotate_gptj<Vec>(x, cos2, sin2, rot);
    }
  }
}

}  // namespace kernels::cpu
