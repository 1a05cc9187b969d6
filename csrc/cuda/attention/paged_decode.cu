// Paged decode attention, split-KV flash decoding.
//
// One CTA per (sequence, KV head, group of up to 8 query heads, KV split). The CTA streams its
// token range through shared memory in tiles of 16 KB (K and V, 8 KB each: 64 / 32 / 16 tokens for
// head_dim 64 / 128 / 256) with cp.async, kStages (3) deep: two tiles (32 KB) are in flight while
// one is consumed. Every 16-byte chunk finds its own page, so any page size works and a page
// boundary may fall anywhere in a tile. Tensor cores do the math: one warp per 16 tokens of a
// tile, S = q K^T and P V by mma.sync m16n8k16 with the group's query heads as the A rows (padded
// to 16), K / V fragments by ldmatrix from XOR-swizzled rows. Each warp runs its own online
// softmax (exp2 domain); warps merge once at the end through shared memory.
//
// splits == 1 writes out / lse directly; otherwise each CTA writes a float32 partial (out, lse in
// log2 units) and a second kernel, launched to overlap the first one's tail, merges each (sequence,
// query head)'s partials in one CTA. (A merge by the last split CTA to finish, found by a counter,
// took ~5.7 us after the last partial was written: one CTA of 64 threads read all the group's
// partials in round trips of 32 loads; the counters also needed zeroing before every launch.) The
// host picks the splits so that all CTAs fit in one wave of the machine.
//
// Bad input: a seq_len outside [1, max_pages * page_size] or a page index outside [0, num_pages)
// among the pages of a CTA's token range (split 0 also checks the pages before a window) is never
// read: that CTA writes NaN, which the merge propagates.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "cuda/attention/decode_new_token.cuh"
#include "cuda/attention/paged_attention.h"
#include "cuda/common/async_copy.cuh"
#include "cuda/common/device.h"
#include "cuda/common/fast_div.cuh"
#include "cuda/common/launch.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/pdl.cuh"
#include "cuda/common/vec.cuh"

namespace kernels::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// The running max before any token: finite, so exp2(m - m_new) never sees inf - inf.
constexpr float kNoMax = -1e30f;
constexpr int kStages = 3;
// Tiles in flight while one is read: the stage being filled must never be the one being read.
constexpr int kAhead = kStages - 1;
static_assert(kAhead >= 1, "the pipeline needs a stage to fill while one is read");
constexpr int kMaxSplits = 256;
// Two tiles of head_dim 128: a split short enough that a lone sequence spreads over the machine
// (each CTA streams its tokens one tile round trip at a time; benchmarks/NOTES.md).
constexpr int kMinSplitTokens = 64;

template <int D>
struct Tiling {
  static constexpr int kLanesPerToken = D / 8;                   // 16-byte chunks of a row
  static constexpr int kTile = 8192 / (2 * D);                   // 64 / 32 / 16 tokens
  static constexpr int kWarps = kTile / 16;                      // 16 tokens each: 4 / 2 / 1
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowBytes = D * 2;
  static constexpr int kHalfBytes = kTile * kRowBytes;  // the K (or V) part of a stage: 8 KB
  static constexpr int kStageBytes = 2 * kHalfBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;  // 48 KB: no opt-in needed
  static constexpr int kLoadsPerThread = kTile * kLanesPerToken / kThreads;  // chunks of K
  static constexpr int kRowsPerPass = kThreads / kLanesPerToken;
};

// Byte offset of 16-byte chunk c of row `row` in a K / V half: the chunk index is XORed with
// row % 8, so the 8 rows of an ldmatrix 8x8 matrix hit 8 different bank groups.
template <int D>
__device__ __forceinline__ int swz(int row, int c) {
  return row * (D * 2) + ((c ^ (row & 7)) << 4);
}

struct DecodeParams {
  void* out;
  float* lse;
  float* part_out;
  float* part_lse;
  const void* q;
  const void* k_cache;
  const void* v_cache;
  const int32_t* page_table;
  const int32_t* seq_lens;
  int64_t num_pages;
  int64_t q_stride;  // elements between sequences' q rows
  FastDiv page_div;  // by page_size: a token's page in the inner loop (integer division is ~20 instructions)
  int num_heads, num_kv_heads, group, head_chunks, page_size, max_pages, splits, window;
  float q_scale;   // applied to q: scale * log2(e), or scale / soft_cap
  float cap_log2;  // soft_cap * log2(e), or 0 for no cap
  DecodeNewToken nt;  // read by the kRope kernels only
};

// tanh(x) = 1 - 2 / (exp(2x) + 1): exact at both saturations, absolute error ~1e-7 near 0 (the
// score's error is absolute, so that is what matters).
__device__ __forceinline__ float tanh_fast(float x) { return 1.f - 2.f / (__expf(2.f * x) + 1.f); }

// The split partials of one (sequence, query head) merged by one CTA (launched after the decode
// kernel, overlapping its tail). Its threads form rows of D / 4 lanes, a float4 of the head each;
// row r takes splits r, r + kRows, ...: a split's weight is exp2(lse - max) / sum. The first
// batch of partials is loaded before the weights are known, so the two loads' latencies overlap.
// Splits with lse -inf are empty (out 0, weight 0); a NaN lse (bad input) makes the result NaN.
constexpr int kMergeThreads = 128;
static_assert(kMaxSplits <= 2 * kMergeThreads, "two lse values per merge thread");

template <typename T, int D>
__global__ void __launch_bounds__(kMergeThreads) merge_splits_kernel(const DecodeParams p) {
  constexpr int kLanes = D / 4;
  constexpr int kRows = kMergeThreads / kLanes;
  constexpr int kBatch = 16;  // partials in flight per thread
  constexpr int kWarps = kMergeThreads / 32;
  __shared__ float weight[kMaxSplits];
  __shared__ float red[2][kWarps];
  __shared__ float4 rows_sum[kRows][kLanes];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int row = tid / kLanes, col = tid % kLanes;
  const int b = blockIdx.x, h = blockIdx.y, S = p.splits;
  const float* lse = p.part_lse + static_cast<int64_t>(b) * S * p.num_heads + h;
  const float4* part =
      reinterpret_cast<const float4*>(p.part_out + (static_cast<int64_t>(b) * S * p.num_heads + h) * D) + col;
  const int64_t part_stride = static_cast<int64_t>(p.num_heads) * (D / 4);  // float4s from split to split

  wait_for_producer();
  float4 x[kBatch];
  auto load_batch = [&](int s0) {
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int s = s0 + row + j * kRows;
      x[j] = s < S ? __ldcg(part + s * part_stride) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  load_batch(0);
  const float l0 = tid < S ? __ldcg(lse + static_cast<int64_t>(tid) * p.num_heads) : -INFINITY;
  const float l1 = tid + kMergeThreads < S ? __ldcg(lse + static_cast<int64_t>(tid + kMergeThreads) * p.num_heads) : -INFINITY;
  const bool nan = __syncthreads_or(l0 != l0 || l1 != l1);
  float mx = fmaxf(l0, l1);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if (lane == 0) red[0][warp] = mx;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red[0][w]);
  const float f0 = exp2f(l0 - mx), f1 = exp2f(l1 - mx);  // 0 for an empty or absent split
  if (tid < S) weight[tid] = f0;
  if (tid + kMergeThreads < S) weight[tid + kMergeThreads] = f1;
  float sum = f0 + f1;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) red[1][warp] = sum;
  __syncthreads();
  sum = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) sum += red[1][w];

  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int s0 = 0; s0 < S; s0 += kBatch * kRows) {
    if (s0 > 0) load_batch(s0);
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int s = s0 + row + j * kRows;
      const float f = s < S ? weight[s] : 0.f;
      acc.x += f * x[j].x;
      acc.y += f * x[j].y;
      acc.z += f * x[j].z;
      acc.w += f * x[j].w;
    }
  }
  rows_sum[row][col] = acc;
  __syncthreads();
  if (row != 0) return;
  const float nanf = __int_as_float(0x7fc00000);
  const float inv = nan ? nanf : 1.f / sum;
  float o[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float4 v = rows_sum[r][col];
    o[0] += v.x;
    o[1] += v.y;
    o[2] += v.z;
    o[3] += v.w;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) o[e] *= inv;
  T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(b) * p.num_heads + h) * D + col * 4;
  store_vec<4, true>(out, pack<T>(o));
  if (col == 0) p.lse[static_cast<int64_t>(b) * p.num_heads + h] = nan ? nanf : (mx + __log2f(sum)) * kLn2;
}

// kRope: the kernel also rotates and stores each sequence's newest token (p.nt;
// decode_new_token.cuh): q in registers, and the K / V rows by the CTAs whose range holds it.
template <typename T, int D, int GP, bool kRope>
__global__ void __launch_bounds__(Tiling<D>::kThreads, 4)
    paged_decode_kernel(const DecodeParams p) {
  using Tl = Tiling<D>;
  constexpr int kLpt = Tl::kLanesPerToken;
  constexpr int kTile = Tl::kTile;
  constexpr int kThreads = Tl::kThreads;
  constexpr int kWarps = Tl::kWarps;
  char* smem = dynamic_smem();

  const int b = blockIdx.x;
  const int kvh = blockIdx.y / p.head_chunks;
  const int chunk_idx = blockIdx.y % p.head_chunks;
  const int split = blockIdx.z;
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int c = tid % kLpt;   // the thread's 16-byte chunk of a row (loads)
  const int qr = lane / 4;     // mma fragments: the lane's row (query head) ...
  const int qc = lane % 4;     // ... and column pair
  const int head0 = kvh * p.group + chunk_idx * GP;
  const int nh = min(GP, p.group - chunk_idx * GP);
  const int ps = p.page_size;
  const int32_t* pt = p.page_table + static_cast<int64_t>(b) * p.max_pages;

  // Every input may have been written by the kernel before this one: nothing is read before it
  // has finished (pdl.cuh; the launch itself overlaps its tail).
  wait_for_producer();
  // A split launch (one wave, by paged_decode_splits) is followed by its merge: its CTAs may take
  // their places now and wait there. Unsplit launches may span waves and start nothing early.
  if (p.splits > 1) let_dependents_start();
  // This CTA's tokens [start, end) of the attended range [lo, len). Split 0 without a window
  // starts at token 0 whatever the length: its first tiles' page-table entries are read below
  // alongside the length, not after it (one dependent round trip less before the first K / V).
  const bool start_known = split == 0 && p.window <= 0;
  const int max_tokens = p.max_pages * ps;
  const int len = p.seq_lens[b];
  const bool bad_len = len < 1 || static_cast<int64_t>(len) > max_tokens;
  int start = 0, end = 0;
  if (!bad_len) {
    const int lo = p.window > 0 ? max(0, len - p.window) : 0;
    const int per_split = ((len - lo + p.splits - 1) / p.splits + kTile - 1) / kTile * kTile;
    start = min(len, lo + split * per_split);
    end = min(len, start + per_split);
  }
  // Loads: this thread's chunk c of rows tid / kLpt + k * kRowsPerPass of each tile.
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t token_stride = static_cast<int64_t>(p.num_kv_heads) * D;
  const int64_t head_off = static_cast<int64_t>(kvh) * D + c * 8;
  const int load_row = tid / kLpt;
  const int n_tiles = (end - start + kTile - 1) / kTile;

  // kRope: the CTA whose range ends the sequence stores its newest token, when slot_mapping names
  // that token's slot (a negative slot stores nothing; any other is bad input: NaN, no store).
  const bool owns_new = kRope && start < end && end == len;
  // Its position and slot (whatever the length: the cos / sin row waits only for the position)
  // and page, loaded now: they arrive while the first tiles are requested.
  int64_t new_pos = 0, new_slot = -1;
  int new_page = 0;
  if constexpr (kRope) {
    new_pos = p.nt.positions[b];
    new_slot = p.nt.slot_mapping[b];
    if (owns_new) new_page = pt[(len - 1) / ps];
  }

  // A tile's rows for this thread: their pages (loaded a tile ahead) and, found by the same
  // division, their element offsets inside a page (head and chunk included). Head_dim 256 has
  // 16 rows a thread: it keeps only the pages and divides again when it issues (registers).
  constexpr bool kKeepOffsets = Tl::kLoadsPerThread <= 8;
  struct Rows {
    int page[Tl::kLoadsPerThread];
    int64_t in_page[kKeepOffsets ? Tl::kLoadsPerThread : 1];
  };
  const int64_t page_stride = token_stride * ps;
  // A call, not a local variable in `issue`: that form changed the head_dim 128 kernel's code
  // and cost it 1% at 64 x 192.
  auto offset_in_page = [&](const Rows& rows, int k, int token) -> int64_t {
    if constexpr (kKeepOffsets) {
      return rows.in_page[k];
    } else {
      return (token - p.page_div.div(token) * ps) * token_stride + head_off;
    }
  };
  // Entries of tokens from `limit` on are not read (0); the tiles past the range have none before
  // it (n_tiles covers [start, end)).
  auto fetch_pages = [&](int tile, Rows& rows, int limit) {
#pragma unroll
    for (int k = 0; k < Tl::kLoadsPerThread; ++k) {
      const int token = start + tile * kTile + load_row + k * Tl::kRowsPerPass;
      const int logical = p.page_div.div(token);
      if constexpr (kKeepOffsets) rows.in_page[k] = (token - logical * ps) * token_stride + head_off;
      rows.page[k] = token < limit ? pt[logical] : 0;
    }
  };
  // check_pages: the tile goes out before the page check has settled (the first kAhead tiles), so
  // a page outside the cache is skipped here (the CTA then writes NaN).
  auto issue = [&](int tile, const Rows& rows, bool check_pages) {
    if (tile < n_tiles) {
      char* ks = smem + (tile % kStages) * Tl::kStageBytes;
#pragma unroll
      for (int k = 0; k < Tl::kLoadsPerThread; ++k) {
        const int row = load_row + k * Tl::kRowsPerPass;
        const bool valid = start + tile * kTile + row < end &&
                           (!check_pages || (rows.page[k] >= 0 && rows.page[k] < p.num_pages));
        const int64_t off =
            valid ? rows.page[k] * page_stride + offset_in_page(rows, k, start + tile * kTile + row) : 0;
        const int dst = swz<D>(row, c);
        cp_async_16(ks + dst, kc + off, valid);
        cp_async_16(ks + Tl::kHalfBytes + dst, vc + off, valid);
      }
    }
    cp_async_commit();  // possibly empty: keeps one group per tile for the waits
  };

  // The page-table entries of the first kAhead tiles (inside the table whatever the pages hold;
  // a bad CTA has no tiles), then the page check: every page of the CTA's range (split 0 also
  // the pages before a window) must lie in the cache. Its verdict is only needed at the end,
  // so nothing waits for it here: the first tiles skip a bad page, and the main loop's first
  // barrier settles it before any later tile goes out.
  Rows first_rows[kAhead];
#pragma unroll
  for (int t = 0; t < kAhead; ++t) fetch_pages(t, first_rows[t], start_known ? max_tokens : end);
  bool bad_page = false;
  {
    const int first_page = (split == 0 ? 0 : start) / ps;
    const int end_page = end > start ? (end - 1) / ps + 1 : first_page;
    for (int i = first_page + tid; i < end_page; i += kThreads) {
      const int page = pt[i];
      bad_page |= page < 0 || page >= p.num_pages;
    }
  }
  // The group's q as mma A fragments (rows = heads, padded to 16 with zeros; raw, unscaled):
  // qa[k][0] = q[qr][16k + 2qc, +1], qa[k][1] = q[qr][16k + 8 + 2qc, +1].
  // Head_dim 256 re-reads them (L1) every tile instead: registers.
  constexpr bool kQRegs = D <= 128;
  const bool has_q = qr < nh;
  const uint32_t* qg = reinterpret_cast<const uint32_t*>(
      static_cast<const T*>(p.q) + static_cast<int64_t>(b) * p.q_stride + (head0 + (has_q ? qr : 0)) * D);
  uint32_t qa[kQRegs ? D / 16 : 1][2];
  if constexpr (kQRegs && !kRope) {  // kRope: from the rotated copy, below
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      qa[k][0] = has_q ? qg[k * 8 + qc] : 0u;
      qa[k][1] = has_q ? qg[k * 8 + 4 + qc] : 0u;
    }
  }
  static_assert(!kRope || kQRegs, "the rotated q lives in registers");

  // Result writers. Direct: out (T) and lse (natural log). Split: float32 partials, lse in log2.
  const bool direct = p.splits == 1;
  auto write_lse = [&](int g, float lse2) {
    const int h = head0 + g;
    if (direct) {
      p.lse[static_cast<int64_t>(b) * p.num_heads + h] = lse2 * kLn2;
    } else {
      p.part_lse[(static_cast<int64_t>(b) * p.splits + split) * p.num_heads + h] = lse2;
    }
  };
  auto write_out = [&](int g, int d0, const float (&o)[8]) {
    const int h = head0 + g;
    if (direct) {
      T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(b) * p.num_heads + h) * D + d0;
      store_vec<8, true>(out, pack<T>(o));
    } else {
      float* out = p.part_out + ((static_cast<int64_t>(b) * p.splits + split) * p.num_heads + h) * D + d0;
      reinterpret_cast<float4*>(out)[0] = make_float4(o[0], o[1], o[2], o[3]);
      reinterpret_cast<float4*>(out)[1] = make_float4(o[4], o[5], o[6], o[7]);
    }
  };
  // NaN for bad input; an empty split (splits > 1 only) has lse -inf and out 0 (its merge
  // weight is 0).
  auto write_fill = [&](bool bad) {
    const float fill = bad ? __int_as_float(0x7fc00000) : -INFINITY;
    for (int u = tid; u < nh * (D / 8); u += kThreads) {
      const int g = u / (D / 8);
      const int d0 = u % (D / 8) * 8;
      float o[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = bad ? fill : 0.f;
      write_out(g, d0, o);
      if (d0 == 0) write_lse(g, fill);
    }
  };
  if (bad_len || start >= end) {  // the same in every thread
    write_fill(bad_len || __syncthreads_or(bad_page));
    return;
  }

  // Per warp: the online softmax of row qr (m, this lane's part of l) and the lane's
  // accumulator fragments o[n] = out[qr][8n + 2qc, +1].
  float m = kNoMax, l = 0.f;
  float o[D / 8][2];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = 0.f;

  // kRope: the new token's words and the position's cos / sin are requested before the first
  // tiles: behind 32 KB of tile requests per CTA, even L2 hits would wait microseconds. The K / V
  // rows reach the cache before the tile holding the token is fetched, and after the tiles before
  // it are on their way: the main loop's first barrier orders the store before that fetch, or,
  // when the token lies in the first kAhead tiles, a barrier here. Each warp stages the cos / sin
  // and rotates the query heads in its own corner of the last stage's buffer (free until the main
  // loop's first barrier), so its fragments need only __syncwarp.
  struct None {};  // the plain kernels hold no new-token state
  std::conditional_t<kRope, NewTokenWords<T, D, GP>, None> words;
  std::conditional_t<kRope, RopeRow<T, D, 32>, None> rope_row;
  if constexpr (kRope) {
    words.load(reinterpret_cast<const uint32_t*>(static_cast<const T*>(p.q) + static_cast<int64_t>(b) * p.q_stride +
                                                 head0 * D),
               nh, p.nt, b, kvh, owns_new, tid, lane);
    rope_row.load(p.nt, new_pos, lane);
  }
  const int first_after = owns_new ? min((len - 1 - start) / kTile, kAhead) : kAhead;
#pragma unroll
  for (int t = 0; t < kAhead; ++t) {
    if (!kRope || t < first_after) issue(t, first_rows[t], true);
  }
  if constexpr (kRope) {
    constexpr int kWarpBytes = D * 4 + GP * D * 2;
    static_assert(kWarps * kWarpBytes <= Tl::kStageBytes, "a stage holds every warp's table and rotated q");
    float* table = reinterpret_cast<float*>(smem + kAhead * Tl::kStageBytes + warp * kWarpBytes);
    uint32_t* q_rot = reinterpret_cast<uint32_t*>(table + D);  // [nh][D / 2] words
    rope_row.stage(table, p.nt, lane);
    __syncwarp();
    words.rotate_q(q_rot, nh, table, p.nt, lane);
    const bool good_slot = new_slot >= 0 && new_page >= 0 && new_page < p.num_pages &&
                           new_slot == static_cast<int64_t>(new_page) * ps + (len - 1) % ps;
    bad_page |= owns_new && new_slot >= 0 && !good_slot;
    if (owns_new && good_slot) words.store(table, p.nt, kvh, new_slot, token_stride, tid);
    __syncwarp();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      qa[k][0] = has_q ? q_rot[qr * (D / 2) + k * 8 + qc] : 0u;
      qa[k][1] = has_q ? q_rot[qr * (D / 2) + k * 8 + 4 + qc] : 0u;
    }
    if (first_after < kAhead) {  // the same in every thread
      __syncthreads();
#pragma unroll
      for (int t = 0; t < kAhead; ++t) {
        if (t >= first_after) issue(t, first_rows[t], true);
      }
    }
  }
  bool pages_bad = false;  // the page check's verdict, the same in every thread
  const int t0 = warp * 16;  // the warp's 16 tokens of each tile
  // ldmatrix row addresses: lane / 8 picks the 8x8 matrix, lane % 8 its row.
  const int mi = lane / 8;
  const int k_row = t0 + (mi / 2) * 8 + lane % 8, k_c = mi % 2;  // K: tokens +0/+8 x dims +0/+8
  const int v_row = t0 + (mi % 2) * 8 + lane % 8, v_c = mi / 2;  // V: tokens +0/+8 x dims +0/+8
  // Chunk 2i + x of a row lies at swz(row, (2i + x) % 8) + 128 * (i / 4): four offsets each.
  int k_off[4], v_off[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    k_off[i] = swz<D>(k_row, 2 * i + k_c);
    v_off[i] = swz<D>(v_row, 2 * i + v_c);
  }
  for (int tile = 0; tile < n_tiles; ++tile) {
    // The page indices of tile + kAhead load while this tile is consumed (head_dim 256: after
    // it, registers).
    constexpr bool kPrefetch = Tl::kLoadsPerThread <= 8;
    Rows rows;
    if constexpr (kPrefetch) fetch_pages(tile + kAhead, rows, end);
    cp_async_wait<kAhead - 1>();  // this tile's group has landed (later ones may still fly)
    // ... for every thread; and the stage of tile - 1 is free again. The first also settles the
    // page check.
    if (tile == 0) {
      pages_bad = __syncthreads_or(bad_page);
      if (pages_bad) break;
    } else {
      __syncthreads();
    }

    const char* ks = smem + (tile % kStages) * Tl::kStageBytes;
    const char* vs = ks + Tl::kHalfBytes;
    // S = q K^T for the warp's tokens: s[j] = S[qr][t0 + 8j + 2qc, +1].
    float s[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      uint32_t kb[4];
      ldmatrix_x4(kb, ks + k_off[k % 4] + 128 * (k / 4));
      uint32_t a0, a1;
      if constexpr (kQRegs) {
        a0 = qa[k][0];
        a1 = qa[k][1];
      } else {
        a0 = has_q ? __ldg(qg + k * 8 + qc) : 0u;
        a1 = has_q ? __ldg(qg + k * 8 + 4 + qc) : 0u;
      }
      mma_top<T>(s[0][0], s[0][1], a0, a1, kb[0], kb[1]);
      mma_top<T>(s[1][0], s[1][1], a0, a1, kb[2], kb[3]);
    }
    const int tok0 = start + tile * kTile + t0 + 2 * qc;
    float mt = m;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float x = s[j][e] * p.q_scale;
        if (p.cap_log2 > 0.f) x = p.cap_log2 * tanh_fast(x);
        s[j][e] = tok0 + 8 * j + e < end ? x : -INFINITY;
        mt = fmaxf(mt, s[j][e]);
      }
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
    // After the first tiles the running max seldom grows: when no row's did, the rescale is a
    // multiplication by exactly 1 and the warp skips it (32 dependent multiplies per tile).
    if (__any_sync(0xffffffffu, mt > m)) {
      const float corr = exp2f(m - mt);
      l *= corr;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][0] *= corr;
        o[n][1] *= corr;
      }
    }
    m = mt;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[j][e] = exp2f(s[j][e] - mt);
        l += s[j][e];
      }
    }
    // P (this lane's A fragment: tokens 2qc, +1 and 8 + 2qc, +1) x V.
    const uint32_t pa0 = pack2<T>(s[0][0], s[0][1]);
    const uint32_t pa1 = pack2<T>(s[1][0], s[1][1]);
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, vs + v_off[n % 4] + 128 * (n / 4));
      mma_top<T>(o[2 * n][0], o[2 * n][1], pa0, pa1, vb[0], vb[1]);
      mma_top<T>(o[2 * n + 1][0], o[2 * n + 1][1], pa0, pa1, vb[2], vb[3]);
    }
    if constexpr (!kPrefetch) fetch_pages(tile + kAhead, rows, end);
    issue(tile + kAhead, rows, false);
  }
  cp_async_wait<0>();
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);

  if (pages_bad) {
    write_fill(true);
    return;
  }
  // Merge the warps through shared memory (the pipeline's stages are free now).
  __syncthreads();
  float* red_acc = reinterpret_cast<float*>(smem);         // [kWarps][GP][D]
  float* red_ml = red_acc + kWarps * GP * D;                // [kWarps][GP][2]
  static_assert(kWarps * GP * (D + 2) * 4 <= Tl::kSmemBytes, "reduction does not fit");
  if (qr < GP) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<float2*>(red_acc + (warp * GP + qr) * D + 8 * n + 2 * qc) = make_float2(o[n][0], o[n][1]);
    }
    if (qc == 0) {
      red_ml[(warp * GP + qr) * 2] = m;
      red_ml[(warp * GP + qr) * 2 + 1] = l;
    }
  }
  __syncthreads();
  for (int u = tid; u < nh * (D / 8); u += kThreads) {
    const int g = u / (D / 8);
    const int d0 = u % (D / 8) * 8;
    float mx = kNoMax;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red_ml[(w * GP + g) * 2]);
    float sum = 0.f, ov[8] = {};
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = exp2f(red_ml[(w * GP + g) * 2] - mx);
      sum += red_ml[(w * GP + g) * 2 + 1] * f;
      const float* src = red_acc + (w * GP + g) * D + d0;
#pragma unroll
      for (int e = 0; e < 8; ++e) ov[e] += src[e] * f;
    }
    const float inv = 1.f / sum;
#pragma unroll
    for (int e = 0; e < 8; ++e) ov[e] *= inv;
    write_out(g, d0, ov);
    if (d0 == 0) write_lse(g, mx + __log2f(sum));
  }
}

// Query heads per CTA: the group, padded to 1, 2, 4 or 8; larger groups take ceil(group / 8) CTAs.
int group_pad(int group) { return group > 4 ? 8 : group > 2 ? 4 : group; }

// Launched to overlap its producer (pdl.cuh): the CTAs are placed while the kernel before them
// finishes, then wait for it.
template <typename T, int D, int GP, bool kRope>
cudaError_t launch_kernel(const DecodeParams& p, int64_t batch, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(batch), p.num_kv_heads * p.head_chunks, p.splits);
  cudaError_t e = launch_overlapping_producer(paged_decode_kernel<T, D, GP, kRope>, grid,
                                              dim3(Tiling<D>::kThreads), Tiling<D>::kSmemBytes, stream, p);
  if (e != cudaSuccess || p.splits == 1) return e;
  const dim3 merge_grid(static_cast<unsigned>(batch), p.num_heads);
  return launch_overlapping_producer(merge_splits_kernel<T, D>, merge_grid, dim3(kMergeThreads), 0, stream, p);
}

template <typename T, int D, bool kRope>
cudaError_t launch_d(const DecodeParams& p, int64_t batch, int gp, cudaStream_t stream) {
  switch (gp) {
    case 1: return launch_kernel<T, D, 1, kRope>(p, batch, stream);
    case 2: return launch_kernel<T, D, 2, kRope>(p, batch, stream);
    case 4: return launch_kernel<T, D, 4, kRope>(p, batch, stream);
    default: return launch_kernel<T, D, 8, kRope>(p, batch, stream);
  }
}

// The new-token kernels exist for head_dim 64 and 128 (they keep q in registers).
template <typename T>
cudaError_t launch_dtype(const DecodeParams& p, const DecodeShape& shape, int gp, bool rope, cudaStream_t stream) {
  if (rope) {
    if (shape.head_dim == 64) return launch_d<T, 64, true>(p, shape.batch, gp, stream);
    if (shape.head_dim == 128) return launch_d<T, 128, true>(p, shape.batch, gp, stream);
    return cudaErrorInvalidValue;
  }
  switch (shape.head_dim) {
    case 64: return launch_d<T, 64, false>(p, shape.batch, gp, stream);
    case 128: return launch_d<T, 128, false>(p, shape.batch, gp, stream);
    default: return launch_d<T, 256, false>(p, shape.batch, gp, stream);
  }
}

// Resident CTAs per SM of the kernel for (head_dim, query heads per CTA), read once per config
// (the same for both dtypes); 4 (48 KB of shared memory each) if the query fails.
template <int D, int GP, bool kRope>
int occupancy_of() {
  static std::atomic<int> cached{0};
  int n = cached.load(std::memory_order_relaxed);
  if (n == 0) {
    const auto kernel = paged_decode_kernel<__nv_bfloat16, D, GP, kRope>;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, Tiling<D>::kThreads, Tiling<D>::kSmemBytes) !=
            cudaSuccess ||
        n <= 0) {
      (void)cudaGetLastError();
      n = 4;
    }
    cached.store(n, std::memory_order_relaxed);
  }
  return n;
}

template <int D, bool kRope>
int occupancy_d(int gp) {
  switch (gp) {
    case 1: return occupancy_of<D, 1, kRope>();
    case 2: return occupancy_of<D, 2, kRope>();
    case 4: return occupancy_of<D, 4, kRope>();
    default: return occupancy_of<D, 8, kRope>();
  }
}

}  // namespace

// Splits so that all CTAs run in one wave (ctas * splits <= SMs x resident CTAs per SM), each
// split one long contiguous token range (a multiple of the tile, at least kMinSplitTokens), and no
// split empty at the longest context. A launch of more than half a wave is not split: a second,
// partial wave would cost more than the idle slots.
int paged_decode_splits(const DecodeShape& shape, int window, bool with_new_token, int device) {
  const int group = shape.num_heads / shape.num_kv_heads;
  const int gp = group_pad(group);
  const int64_t ctas = shape.batch * shape.num_kv_heads * ceil_div(group, gp);
  const int occ = shape.head_dim == 64    ? (with_new_token ? occupancy_d<64, true>(gp) : occupancy_d<64, false>(gp))
                  : shape.head_dim == 128 ? (with_new_token ? occupancy_d<128, true>(gp) : occupancy_d<128, false>(gp))
                                          : occupancy_d<256, false>(gp);
  const int tile = 8192 / (2 * shape.head_dim);
  const int64_t slots = static_cast<int64_t>(device_facts(device).sms) * occ;
  if (ctas * 2 > slots) return 1;
  int64_t tokens = static_cast<int64_t>(shape.max_pages) * shape.page_size;
  if (window > 0 && window < tokens) tokens = window;
  const int64_t most = std::max<int64_t>(1, ceil_div(tokens, kMinSplitTokens));
  int64_t splits = std::min<int64_t>(std::min<int64_t>(slots / ctas, most), kMaxSplits);
  if (splits <= 1) return 1;
  // The kernel's split length at this context; drop the splits it would leave empty.
  const int64_t per_split = ceil_div(ceil_div(tokens, splits), tile) * tile;
  return static_cast<int>(ceil_div(tokens, per_split));
}

cudaError_t launch_paged_decode(void* out, float* lse, float* part_out, float* part_lse,
                                const void* q, const void* k_cache, const void* v_cache,
                                const int32_t* page_table, const int32_t* seq_lens,
                                const DecodeShape& shape, int splits, float scale, int window,
                                float soft_cap, Dtype dtype, const DecodeNewToken* new_token,
                                cudaStream_t stream) {
  if (shape.batch == 0) return cudaSuccess;
  const int group = shape.num_heads / shape.num_kv_heads;
  const int gp = group_pad(group);
  DecodeParams p;
  p.out = out;
  p.lse = lse;
  p.part_out = part_out;
  p.part_lse = part_lse;
  p.q = q;
  p.k_cache = k_cache;
  p.v_cache = v_cache;
  p.page_table = page_table;
  p.seq_lens = seq_lens;
  p.num_pages = shape.num_pages;
  p.q_stride = shape.q_stride;
  p.num_heads = shape.num_heads;
  p.num_kv_heads = shape.num_kv_heads;
  p.group = group;
  p.head_chunks = static_cast<int>(ceil_div(group, gp));
  p.page_size = shape.page_size;
  p.page_div = FastDiv(static_cast<uint32_t>(shape.page_size));
  p.max_pages = shape.max_pages;
  p.splits = splits;
  p.window = window;
  // Scores in log2 units: s2 = log2(e) * score. With a cap, score = cap * tanh(scale * qk / cap).
  p.q_scale = soft_cap > 0.f ? scale / soft_cap : scale * kLog2e;
  p.cap_log2 = soft_cap > 0.f ? soft_cap * kLog2e : 0.f;
  const bool rope = new_token != nullptr;
  if (rope) p.nt = *new_token;
  if (dtype == Dtype::kBFloat16) return launch_dtype<__nv_bfloat16>(p, shape, gp, rope, stream);
  if (dtype == Dtype::kFloat16) return launch_dtype<__half>(p, shape, gp, rope, stream);
  return cudaErrorInvalidValue;  // float32 attention is CPU-only
}

}  // namespace kernels::cuda
