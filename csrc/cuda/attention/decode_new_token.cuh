// The decode kernel's work on each sequence's newest token when it rotates and stores it itself
// (DecodeNewToken, paged_attention.h): RoPE of the CTA's query heads and of the new K row, and
// the K / V rows' store into the cache. Rotation in float32, rounded once to T: what
// rotary_embedding_ computes. Each warp does the work its own MMAs need, through its own corner
// of shared memory: it stages the position's cos / sin row as float32 and rotates every query head
// of the CTA, so only __syncwarp orders it and no CTA barrier sits before the main loop (a CTA-wide
// version, with two barriers there, cost the kernel 2.5 us at 64 x 192). The loops run over a
// warp's lanes, not unrolled per fragment: the code stays small (a first version, unrolled over
// each lane's q fragments, grew the kernel by 70% and its instruction-cache misses cost more than
// the launch it saved).
#pragma once
#include <cstdint>

#include "cuda/attention/paged_attention.h"
#include "cuda/common/vec.cuh"

namespace kernels::cuda {

// The position's cos / sin row: loaded into registers (one round trip), then staged as float32 in
// `table` ([0, rot_dim / 2) cos, [rot_dim / 2, rot_dim) sin); NaN when pos is outside
// [0, max_position), as rotary_embedding_ gives. `tid` counts the kThreads threads that share the
// table.
template <typename T, int D, int kThreads>
struct RopeRow {
  static constexpr int kPer = (D + kThreads - 1) / kThreads;  // rot_dim <= D
  float x[kPer];

  __device__ __forceinline__ void load(const DecodeNewToken& nt, int64_t pos, int tid) {
    const bool ok = pos >= 0 && pos < nt.max_position;
    const int64_t row = pos * nt.rot_dim;
#pragma unroll
    for (int it = 0; it < kPer; ++it) {
      const int i = tid + it * kThreads;
      x[it] = __int_as_float(0x7fc00000);
      if (ok && i < nt.rot_dim) {
        x[it] = nt.cos_sin_float32 ? static_cast<const float*>(nt.cos_sin)[row + i]
                                   : bits_to_float<T>(static_cast<const uint16_t*>(nt.cos_sin)[row + i]);
      }
    }
  }

  __device__ __forceinline__ void stage(float* table, const DecodeNewToken& nt, int tid) const {
#pragma unroll
    for (int it = 0; it < kPer; ++it) {
      if (tid + it * kThreads < nt.rot_dim) table[tid + it * kThreads] = x[it];
    }
  }
};

// The word (dim pair d, d + 1) that dims d, d + 1 rotate with under neox: rot_dim / 2 away (a
// multiple of 4, so one word); -1 for gptj (the pair itself) and for unrotated dims.
__device__ __forceinline__ int partner_word(int d, int rot_dim, bool neox) {
  if (!neox || d >= rot_dim) return -1;
  const int half = rot_dim / 2;
  return (d < half ? d + half : d - half) / 2;
}

// Dims d, d + 1 (the word x) rotated, p the partner word (neox); table as stage_rope_row left it.
template <typename T>
__device__ __forceinline__ uint32_t rotate_word(uint32_t x, uint32_t p, int d, const float* table, int rot_dim,
                                                bool neox) {
  if (d >= rot_dim) return x;
  const int half = rot_dim / 2;
  const float x0 = bits_to_float<T>(x & 0xffffu), x1 = bits_to_float<T>(x >> 16);
  float o0, o1;
  if (neox) {
    const bool first = d < half;
    const int i = first ? d : d - half;
    const float p0 = bits_to_float<T>(p & 0xffffu), p1 = bits_to_float<T>(p >> 16);
    const float sign = first ? -1.f : 1.f;
    o0 = x0 * table[i] + sign * (p0 * table[half + i]);
    o1 = x1 * table[i + 1] + sign * (p1 * table[half + i + 1]);
  } else {
    const int i = d / 2;
    o0 = x0 * table[i] - x1 * table[half + i];
    o1 = x1 * table[i] + x0 * table[half + i];
  }
  return pack_pair<T>(o0, o1);
}

// A lane's share of the new token's words, loaded at once (one round trip, issued before the first
// K / V tiles) and rotated once its warp's cos / sin table is staged: a 32nd of up to GP query
// heads (rows D / 2 words apart from q_rows; every warp rotates them all) and, in the first warp
// of the CTA that stores it, a chunk of the K row or the V row.
template <typename T, int D, int GP>
struct NewTokenWords {
  static constexpr int kQ = (GP * D / 2 + 31) / 32;  // q words per lane
  static constexpr int kChunks = D / 8;              // 16-byte chunks of a row
  static_assert(2 * kChunks <= 32, "the first warp stores both rows, a chunk a lane");
  uint32_t q[kQ], q_partner[kQ];
  Vec<T, 8> chunk;
  uint32_t k_partner[4];

  // stores: this CTA stores the rows (only warp 0's lanes load them).
  __device__ __forceinline__ void load(const uint32_t* q_rows, int nh, const DecodeNewToken& nt, int64_t b, int kvh,
                                       bool stores, int tid, int lane) {
#pragma unroll
    for (int it = 0; it < kQ; ++it) {
      const int u = lane + it * 32;
      const bool valid = u < nh * (D / 2);
      const uint32_t* row = q_rows + (valid ? u / (D / 2) * (D / 2) : 0);
      const int pw = partner_word(2 * (u % (D / 2)), nt.rot_dim, nt.neox);
      q[it] = valid ? row[u % (D / 2)] : 0u;
      q_partner[it] = valid && pw >= 0 ? row[pw] : 0u;
    }
    if (stores && tid < 2 * kChunks) {
      const bool is_k = tid < kChunks;
      const int c = is_k ? tid : tid - kChunks;
      const T* src = row_of(nt, b, kvh, is_k);
      chunk = load_vec<8, true>(src + 8 * c);
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const int pw = is_k ? partner_word(8 * c + 2 * w, nt.rot_dim, nt.neox) : -1;
        k_partner[w] = pw >= 0 ? reinterpret_cast<const uint32_t*>(src)[pw] : 0u;
      }
    }
  }

  // The rotated q words into out ([nh][D / 2], q_rows' layout), the warp's copy.
  __device__ __forceinline__ void rotate_q(uint32_t* out, int nh, const float* table, const DecodeNewToken& nt,
                                           int lane) const {
#pragma unroll
    for (int it = 0; it < kQ; ++it) {
      const int u = lane + it * 32;
      if (u < nh * (D / 2)) out[u] = rotate_word<T>(q[it], q_partner[it], 2 * (u % (D / 2)), table, nt.rot_dim, nt.neox);
    }
  }

  // K (rotated) and V into cache slot `slot`; lanes of the first warp (tid < 32).
  __device__ __forceinline__ void store(const float* table, const DecodeNewToken& nt, int kvh, int64_t slot,
                                        int64_t token_stride, int tid) const {
    if (tid >= 2 * kChunks) return;
    const bool is_k = tid < kChunks;
    const int c = is_k ? tid : tid - kChunks;
    Vec<T, 8> out = chunk;
    if (is_k) {
#pragma unroll
      for (int w = 0; w < 4; ++w) out.w[w] = rotate_word<T>(chunk.w[w], k_partner[w], 8 * c + 2 * w, table, nt.rot_dim, nt.neox);
    }
    const int64_t dst = slot * token_stride + static_cast<int64_t>(kvh) * D + 8 * c;
    store_vec<8, true>(static_cast<T*>(is_k ? nt.k_cache : nt.v_cache) + dst, out);
  }

  static __device__ __forceinline__ const T* row_of(const DecodeNewToken& nt, int64_t b, int kvh, bool is_k) {
    return static_cast<const T*>(is_k ? nt.k : nt.v) + b * (is_k ? nt.k_stride : nt.v_stride) +
           static_cast<int64_t>(kvh) * D;
  }
};

}  // namespace kernels::cuda
