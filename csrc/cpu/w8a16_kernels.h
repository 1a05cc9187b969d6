// INT8 weight-only GEMM (w8a16_gemm): out[M, N] = a[M, K] @ W^T, W[n, k] = q[n, k] * s[n, k / G]
// with q int8 and one scale per G = group_size consecutive k of a row (GGUF Q8_0: G = 32,
// float16 scales). Written once over the vector layer (Vec::load_int8).
//
// Decode multiplies one or a few rows of a by a weight far larger than the caches, so the kernel
// is a GEMV that must stream the int8 weight at memory speed: each vector of N weights is
// sign-extended and converted to float in registers (exact) and multiplied into every row of a
// tile of up to 4 rows while it is there; a group's products are summed unscaled and the sum
// scaled once (one FMA per group and row). A vector never straddles two groups: G is 32, 64 or
// 128 and N is 8 or 16, so K (a multiple of G) needs no tail.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/kernel_table.h"
#include "cpu/vec_tail.h"

namespace kernels::cpu {

// Rows [begin, end) of half-precision a to float32 (a_converted); float32 a is read in place.
template <class Vec, class T>
void w8a16_prepare_rows(const W8A16Args& p, int64_t begin, int64_t end) {
  const T* a = static_cast<const T*>(p.a);
  for (int64_t m = begin; m < end; ++m) to_float32<Vec>(a + m * p.k, p.a_converted + m * p.k, p.k);
}

// One group: the G weights at w against MR rows of a (row stride a_stride); each row's products
// are summed unscaled, and the sum times the group's scale is added to sum[r].
template <class Vec, int G, int MR>
inline void w8a16_group(const int8_t* w, const float* a, int64_t a_stride, float scale, Vec* sum) {
  constexpr int N = Vec::N, V = G / N;  // vectors per group
  static_assert(G % N == 0 && V >= 2, "a group is whole vectors, at least two");
  // Two independent FMA chains per row: one would leave the FMA units waiting on its latency.
  constexpr int C = 2;
  Vec acc[MR][C];
  for (int j = 0; j < V; ++j) {
    const Vec x = Vec::load_int8(w + j * N);
    for (int r = 0; r < MR; ++r) {
      const Vec av = Vec::load(a + r * a_stride + j * N);
      acc[r][j % C] = j < C ? x * av : fmadd(x, av, acc[r][j % C]);
    }
  }
  const Vec sc = Vec::set1(scale);
  for (int r = 0; r < MR; ++r) {
    Vec v = acc[r][0];
    for (int c = 1; c < C; ++c) v = v + acc[r][c];
    sum[r] = fmadd(v, sc, sum[r]);
  }
}

// MR rows of a (row stride a_stride) against one channel's int8 weights w [groups * G] and float32
// scales s [groups]. total[r * stride] gets lanes whose sum is out[r] = sum_k a[r][k] q_k s_g.
template <class Vec, int G, int MR>
inline void w8a16_dot_tile(const int8_t* w, int64_t groups, const float* a, int64_t a_stride,
                           const float* s, Vec* total, int64_t stride) {
  // With one row, S chains of scaled sums take alternate groups, so that one group's scaling
  // does not wait on the previous one's. Their index must be a compile-time constant (a loop
  // over pairs of groups) or the sums live on the stack.
  constexpr int S = MR == 1 ? 2 : 1;
  Vec sum[S][MR];
  for (int c = 0; c < S; ++c) {
    for (int r = 0; r < MR; ++r) sum[c][r] = Vec::set1(0.0f);
  }
  int64_t g = 0;
  for (; g + S <= groups; g += S) {
    for (int c = 0; c < S; ++c) {
      w8a16_group<Vec, G, MR>(w + (g + c) * G, a + (g + c) * G, a_stride, s[g + c], sum[c]);
    }
  }
  for (; g < groups; ++g) w8a16_group<Vec, G, MR>(w + g * G, a + g * G, a_stride, s[g], sum[0]);
  for (int r = 0; r < MR; ++r) {
    Vec v = sum[0][r];
    for (int c = 1; c < S; ++c) v = v + sum[c][r];
    total[r * stride] = v;
  }
}

// Output channels [begin, end), for every row of a.
template <class Vec, class T, int G>
void w8a16_channels(const W8A16Args& p, int64_t begin, int64_t end) {
  // Channels per block: their scales are converted together, every row tile passes over the
  // block's weights while they are in L1 / L2, and the block's sums are reduced together.
  constexpr int64_t NB = 16;
  static_assert(NB % Vec::N == 0, "hsum_lanes reduces N channels at a time");
  const int64_t groups = p.k / G;
  std::vector<float> buf(NB * groups + NB * p.m);
  float* scale = buf.data();         // [NB, groups]
  float* o = scale + NB * groups;    // [M, NB]
  Vec total[4 * NB];                 // [row in tile, channel in block]
  for (int64_t n0 = begin; n0 < end; n0 += NB) {
    const int64_t nb = std::min(NB, end - n0);
    any_to_float32<Vec>(p.scale_dtype, p.scales, n0 * groups, scale, nb * groups);
    for (int64_t m0 = 0; m0 < p.m;) {
      const int64_t mr = p.m - m0 >= 4 ? 4 : p.m - m0 >= 2 ? 2 : 1;
      const float* a = p.a_float + m0 * p.k;
      for (int64_t t = 0; t < nb; ++t) {
        const int8_t* w = p.qweight + (n0 + t) * p.k;
        const float* s = scale + t * groups;
        if (mr == 4) {
          w8a16_dot_tile<Vec, G, 4>(w, groups, a, p.k, s, total + t, NB);
        } else if (mr == 2) {
          w8a16_dot_tile<Vec, G, 2>(w, groups, a, p.k, s, total + t, NB);
        } else {
          w8a16_dot_tile<Vec, G, 1>(w, groups, a, p.k, s, total + t, NB);
        }
      }
      for (int64_t r = 0; r < mr; ++r) {
        for (int64_t t = nb; t < NB; ++t) total[r * NB + t] = Vec::set1(0.0f);
        float* row = o + (m0 + r) * NB;
        for (int64_t t = 0; t < NB; t += Vec::N) hsum_lanes(total + r * NB + t).store(row + t);
      }
      m0 += mr;
    }
    T* out = static_cast<T*>(p.out);
    for (int64_t m = 0; m < p.m; ++m) from_float32<Vec>(o + m * NB, out + m * p.n + n0, nb);
  }
}

}  // namespace kernels::cpu
