// INT4 weight-only GEMM (w4a16_gemm): out[M, N] = a[M, K] @ W^T, W[n, k] dequantised from 4-bit
// values packed eight to an int32 word (value k % 8 of word k / 8 in bits 4 (k % 8) .. + 3),
// float32 accumulation. Written once over the vector layer (Vec, Vec::Nibbles, Vec::lane_groups).
//
// A block is Vec::N consecutive words of one output channel: 8 N weights. Nibbles::get<J> gives
// value J of every word times 16^(J % 4), so lane i of it multiplies a[8 i + J] / 16^(J % 4);
// w4a16_prepare_rows stores each block of a transposed to that order and so scaled ("packed" a;
// powers of two, exact unless a is below ~1e-31), once per call. The inner loop is then an AND, a
// conversion and one FMA per N weights and row (and one shift per N words). The scale of each
// group multiplies a block's partial sums lane by lane (a lane is one word, which lies in one
// group), and the zero point or min of each group is folded in afterwards from the group sums of
// a:
//   sum_k a_k (q_k - z_g) s_g = sum_g s_g (sum_{k in g} a_k q_k) - sum_g z_g s_g A_g
//   sum_k a_k (q_k s_g + m_g) = sum_g s_g (sum_{k in g} a_k q_k) + sum_g m_g A_g
// (symmetric: z_g = 8). Each weight block, once unpacked, serves up to 4 rows of a.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/kernel_table.h"
#include "cpu/vec_tail.h"


namespace kernels::cpu {

template <class F, int... J>
inline void unroll(std::integer_sequence<int, J...>, F f) {
  (f(std::integral_constant<int, J>{}), ...);
}

template <class Vec, class T>
void w4a16_prepare_rows(const W4A16Args& p, int64_t begin, int64_t end) {
  constexpr int64_t N = Vec::N, B = 8 * N;
  static_assert(kW4A16KAlign % B == 0, "packed rows are padded to whole blocks");
  constexpr float kUnscale[4] = {1.0f, 0x1p-4f, 0x1p-8f, 0x1p-12f};
  const int64_t groups = p.k / p.group_size;
  std::vector<float> row(p.k_padded, 0.0f);
  for (int64_t m = begin; m < end; ++m) {
    to_float32<Vec>(static_cast<const T*>(p.a) + m * p.k, row.data(), p.k);
    float* dst = p.a_packed + m * p.k_padded;
    for (int64_t b = 0; b < p.k_padded; b += B) {
      for (int64_t i = 0; i < N; ++i) {
        for (int64_t j = 0; j < 8; ++j) dst[b + j * N + i] = row[b + 8 * i + j] * kUnscale[j % 4];
      }
    }
    float* sums = p.a_group_sums + m * p.groups_padded;
    for (int64_t g = 0; g < groups; ++g) {
      const float* x = row.data() + g * p.group_size;
      Vec acc = Vec::set1(0.0f);
      for (int64_t i = 0; i < p.group_size; i += N) acc = acc + Vec::load(x + i);
      sums[g] = hsum(acc);
    }
    std::fill(sums + groups, sums + p.groups_padded, 0.0f);
  }
}

// MR rows of packed a (row stride a_stride) against one channel's `words` packed words; s: the
// channel's scales as float32. Lane sums of total[r * stride] = sum_k a[r][k] q_k s_{group(k)}.
template <class Vec, int L, int MR>
inline void w4a16_dot_tile(const int32_t* w, int64_t words, const float* a, int64_t a_stride,
                           const float* s, Vec* total, int64_t stride) {
  constexpr int N = Vec::N;
  // Independent FMA chains per row: a block's chain must not outlast the scheduler's window.
  constexpr int C = MR <= 2 ? 2 : 1;
  using Nibbles = typename Vec::Nibbles;
  Vec sum[MR];
  for (int r = 0; r < MR; ++r) sum[r] = Vec::set1(0.0f);
  // Lane i of a block is word `word + i`, in group (word + i) / L.
  for (int64_t word = 0; word < words; word += N) {
    Nibbles q;
    Vec sc;
    if (word + N <= words) {
      q = Nibbles::load(w + word);
      sc = Vec::template lane_groups<L>(s + word / L);
    } else {
      // Zero words against the zero padding of a, and zero scales: the groups past the
      // channel's last belong to another channel (or the padding), whose could be infinite.
      q = Nibbles::load_partial(w + word, words - word);
      sc = Vec::template lane_groups<L>(s + word / L, words - word);
    }
    const float* ab = a + word * 8;
    Vec acc[MR][C];
    unroll(std::make_integer_sequence<int, 8>{}, [&](auto J) {
      constexpr int j = decltype(J)::value;
      const Vec x = q.template get<j>();
      for (int r = 0; r < MR; ++r) {
        const Vec av = Vec::load(ab + r * a_stride + j * N);
        acc[r][j % C] = j < C ? x * av : fmadd(x, av, acc[r][j % C]);
      }
    });
    for (int r = 0; r < MR; ++r) {
      Vec v = acc[r][0];
      for (int c = 1; c < C; ++c) v = v + acc[r][c];
      sum[r] = fmadd(v, sc, sum[r]);
    }
  }
  for (int r = 0; r < MR; ++r) total[r * stride] = sum[r];
}

// L = group_size / 8: words (lanes) per group.
template <class Vec, class T, int L>
void w4a16_channels(const W4A16Args& p, int64_t begin, int64_t end) {
  constexpr int64_t N = Vec::N;
  // Channels per block: their scales are converted together, every row tile of a passes over
  // the block's weights while they are in L1 / L2, and the block's sums are reduced together.
  constexpr int64_t NB = 16;
  static_assert(NB % N == 0, "hsum_lanes reduces N channels at a time");
  const int64_t groups = p.k / p.group_size, words = p.k / 8;
  const int64_t body = groups - groups % N;
  // lane_groups reads up to 3 floats past a channel's scales: still inside buf (coef follows).
  std::vector<float> buf(2 * NB * groups + 4 + NB * p.m, 0.0f);
  float* scale = buf.data();          // [NB, groups]
  float* coef = scale + NB * groups;  // [NB, groups]: -z s, -8 s or m
  float* o = coef + NB * groups + 4;  // [M, NB]
  Vec total[4 * NB];                  // [row in tile, channel in block]
  for (int64_t n0 = begin; n0 < end; n0 += NB) {
    const int64_t nb = std::min(NB, end - n0);
    const int64_t count = nb * groups, base = n0 * groups;
    any_to_float32<Vec>(p.scale_dtype, p.scales, base, scale, count);
    if (p.mins != nullptr) {
      any_to_float32<Vec>(p.min_dtype, p.mins, base, coef, count);
    } else if (p.zero_points != nullptr) {
      const uint8_t* z = p.zero_points + base;
      for (int64_t g = 0; g < count; ++g) coef[g] = -float(z[g]) * scale[g];
    } else {
      for (int64_t g = 0; g < count; ++g) coef[g] = -8.0f * scale[g];
    }
    for (int64_t m0 = 0; m0 < p.m;) {
      const int64_t mr = p.m - m0 >= 4 ? 4 : p.m - m0 >= 2 ? 2 : 1;
      const float* a = p.a_packed + m0 * p.k_padded;
      for (int64_t t = 0; t < nb; ++t) {
        const int32_t* w = p.qweight + (n0 + t) * words;
        const float* s = scale + t * groups;
        Vec* tot = total + t;
        if (mr == 4) {
          w4a16_dot_tile<Vec, L, 4>(w, words, a, p.k_padded, s, tot, NB);
        } else if (mr == 2) {
          w4a16_dot_tile<Vec, L, 2>(w, words, a, p.k_padded, s, tot, NB);
        } else {
          w4a16_dot_tile<Vec, L, 1>(w, words, a, p.k_padded, s, tot, NB);
        }
        // The zero point / min term, sum_g c_g A_g: whole vectors into the lane sums.
        const float* c = coef + t * groups;
        for (int64_t r = 0; r < mr; ++r) {
          const float* sums = p.a_group_sums + (m0 + r) * p.groups_padded;
          Vec v = tot[r * NB];
          for (int64_t g = 0; g < body; g += N) v = fmadd(Vec::load(c + g), Vec::load(sums + g), v);
          tot[r * NB] = v;
        }
      }
      for (int64_t r = 0; r < mr; ++r) {
        for (int64_t t = nb; t < NB; ++t) total[r * NB + t] = Vec::set1(0.0f);
        float* row = o + (m0 + r) * NB;
        for (int64_t t = 0; t < NB; t += N) hsum_lanes(total + r * NB + t).store(row + t);
        // ... and the groups left over.
        const float* sums = p.a_group_sums + (m0 + r) * p.groups_padded;
        for (int64_t t = 0; t < nb; ++t) {
          for (int64_t g = body; g < groups; ++g) row[t] += coef[t * groups + g] * sums[g];
        }
      }
      m0 += mr;
    }
    T* out = static_cast<T*>(p.out);
    for (int64_t m = 0; m < p.m; ++m) from_float32<Vec>(o + m * NB, out + m * p.n + n0, nb);
  }
}

}  // namespace kernels::cpu
