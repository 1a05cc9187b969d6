// What the paged prefill kernels share (paged_prefill.cu on mma.sync, paged_prefill_sm90.cu on
// wgmma): their parameters, and how a CTA finds its query tile, the keys that tile attends and
// whether the input lets it read them.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/common/fast_div.cuh"
#include "cuda/common/kernel_setup.h"

namespace kernels::cuda::prefill {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kNoMax = -1e30f;  // finite: exp2(m - m_new) never sees inf - inf

struct PrefillParams {
  void* out;
  float* lse;
  const void* q;
  const void* k_cache;
  const void* v_cache;
  const int32_t* page_table;
  const int32_t* qo_indptr;
  const int32_t* kv_lens;
  int64_t num_pages;
  int64_t q_stride;  // elements between tokens' q rows
  FastDiv page_div;  // by page_size
  int total_q, batch, num_heads, num_kv_heads, page_size, max_pages, window;
  // Query rows per token in a tile: 1 (one query head per CTA: the mma.sync kernel), or the GQA
  // group (the wgmma kernel: a KV head's query heads as consecutive rows, so that a sequence of a
  // few new tokens, a decode row of a mixed batch, fills a tile instead of leaving it nearly
  // empty). CTAs of blockIdx.y = hb own query heads hb * pack .. hb * pack + pack - 1; tile row r
  // is token r / pack, head r % pack (a FastDiv: plain divisions per row made a short prefill ~10%
  // slower).
  FastDiv pack;
  bool causal;
  float q_scale;   // scale * log2(e), or scale / soft_cap
  float cap_log2;  // soft_cap * log2(e), or 0 for no cap
};

__device__ __forceinline__ float tanh_fast(float x) { return 1.f - 2.f / (__expf(2.f * x) + 1.f); }

// Work item `w` -> (sequence, tile of that sequence), or seq = -1 past the last tile. Warp 0 scans
// the per-sequence tile counts 32 sequences at a time; the result goes through shared memory.
template <int kBr>
__device__ void find_work(const PrefillParams& p, int w, int* slot) {
  const int lane = threadIdx.x % 32;
  if (threadIdx.x < 32) {
    int base = 0, seq = -1, tile = 0;
    for (int b0 = 0; b0 < p.batch && seq < 0 && base <= w; b0 += 32) {
      const int b = b0 + lane;
      int nt = 0;
      if (b < p.batch) {
        const int n = p.qo_indptr[b + 1] - p.qo_indptr[b];
        nt = n > 0 ? static_cast<int>((static_cast<int64_t>(n) * p.pack.d + kBr - 1) / kBr) : 0;
      }
      int inc = nt;
#pragma unroll
      for (int off = 1; off < 32; off *= 2) {
        const int y = __shfl_up_sync(0xffffffffu, inc, off);
        if (lane >= off) inc += y;
      }
      const int first = base + inc - nt;
      const unsigned hit = __ballot_sync(0xffffffffu, w >= first && w < first + nt);
      if (hit) {
        const int src = __ffs(hit) - 1;
        seq = b0 + src;
        const int f = __shfl_sync(0xffffffffu, first, src);
        const int n_t = __shfl_sync(0xffffffffu, nt, src);
        tile = n_t - 1 - (w - f);  // the last tile first
      }
      base += __shfl_sync(0xffffffffu, inc, 31);
    }
    if (lane == 0) {
      slot[0] = seq;
      slot[1] = tile;
    }
  }
  __syncthreads();
}

// A CTA's query tile: rows [q0, q0 + rows) of sequence b's new tokens times `pack` (row r is
// token q_begin + r / pack, query head h0 + r % pack), at positions prefix + r / pack, attending
// keys [kv_lo, kv_hi) (kv_lo a multiple of kBc).
struct QueryTile {
  int b, q_begin, q0, rows, prefix, kv_lo, kv_hi;
  const int32_t* pt;  // the sequence's page-table row

  // The tile's first query head (from blockIdx, not kept in a register through the kernel).
  __device__ __forceinline__ int first_head(const PrefillParams& p) const { return blockIdx.y * p.pack.d; }
  // (token, query head) of tile row r, and its position.
  __device__ __forceinline__ int2 token_head(const PrefillParams& p, int r) const {
    const int i = q0 + r, t = p.pack.div(i);
    return make_int2(q_begin + t, first_head(p) + i - t * static_cast<int>(p.pack.d));
  }
  __device__ __forceinline__ int position(const PrefillParams& p, int r) const { return prefix + p.pack.div(q0 + r); }
};

// Finds the CTA's query tile (blockIdx.x through find_work; `slot` is two ints of shared memory)
// for query heads blockIdx.y * pack on. False when there is nothing to compute: a surplus CTA, or
// bad input (indptr outside [0, total_q] or decreasing, a kv_len below the query count or beyond
// the table, a page outside the cache among those the tile would read), for which the CTA has
// written NaN to its rows of out and lse without reading any key.
template <typename T, int D, int kBr, int kBc, int kThreads>
__device__ bool find_query_tile(const PrefillParams& p, int* slot, QueryTile& w) {
  find_work<kBr>(p, blockIdx.x, slot);
  w.b = slot[0];
  if (w.b < 0) return false;
  const int tid = threadIdx.x, ps = p.page_size, pack = p.pack.d;
  w.q_begin = p.qo_indptr[w.b];
  const int q_end = p.qo_indptr[w.b + 1];
  const int n = q_end - w.q_begin;
  const int len = p.kv_lens[w.b];
  w.q0 = slot[1] * kBr;
  const int64_t rows_left = static_cast<int64_t>(n) * pack - w.q0;
  w.rows = rows_left < kBr ? static_cast<int>(rows_left) : kBr;
  w.prefix = len - n;  // query j sits at position prefix + j
  bool bad = w.q_begin < 0 || q_end > p.total_q || w.prefix < 0 ||
             static_cast<int64_t>(len) > static_cast<int64_t>(p.max_pages) * ps;
  w.kv_lo = w.kv_hi = 0;
  w.pt = p.page_table + static_cast<int64_t>(w.b) * p.max_pages;
  if (!bad) {
    const int pos_first = w.position(p, 0), pos_last = w.position(p, w.rows - 1);
    w.kv_hi = p.causal ? pos_last + 1 : len;
    w.kv_lo = p.window > 0 ? max(0, pos_first - p.window + 1) / kBc * kBc : 0;
    for (int i = w.kv_lo / ps + tid; i < (w.kv_hi + ps - 1) / ps; i += kThreads) {
      const int page = w.pt[i];
      bad |= page < 0 || page >= p.num_pages;
    }
  }
  if (!__syncthreads_or(bad)) return true;

  constexpr int kLpt = D / 8;  // 16-byte chunks of a row
  const int64_t q_row_stride = static_cast<int64_t>(p.num_heads) * D;
  const float nan = __int_as_float(0x7fc00000);
  for (int r = tid / kLpt; r < w.rows; r += kThreads / kLpt) {
    const int2 th = w.token_head(p, r);
    if (th.x < 0 || th.x >= p.total_q) continue;
    T* o = static_cast<T*>(p.out) + th.x * q_row_stride + static_cast<int64_t>(th.y) * D + tid % kLpt * 8;
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = static_cast<T>(nan);
    if (tid % kLpt == 0) p.lse[static_cast<int64_t>(th.x) * p.num_heads + th.y] = nan;
  }
  return false;
}

// The grid of a prefill launch with kBr query rows per CTA: an upper bound on the sum of the
// sequences' query tiles (find_work maps CTAs to tiles; surplus CTAs exit), by groups of `pack`
// query heads.
inline dim3 prefill_grid(const PrefillParams& p, int kBr) {
  const int64_t rows = static_cast<int64_t>(p.total_q) * p.pack.d;
  return dim3(static_cast<unsigned>((rows + kBr - 1) / kBr + p.batch), p.num_heads / p.pack.d);
}

// The sm_90a (wgmma) launch for head_dim 64 / 128 in bf16 / fp16 (Dtype as in dtype.h);
// cudaErrorNoKernelImageForDevice where there is none (another GPU, or a build without sm_90a),
// and the caller takes the mma.sync kernel.
cudaError_t launch_paged_prefill_sm90(const PrefillParams& p, int head_dim, bool bf16, int device,
                                      cudaStream_t stream);

}  // namespace kernels::cuda::prefill
