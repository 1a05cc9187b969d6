// W4A16 GEMM for a few tokens (M <= 32), reading our packed INT4 layout as it is (no re-layout).
//
// Memory: the kernel is a stream of the packed weight (M = 1: 4 bits per weight, nothing
// reused), so everything serves DRAM efficiency. A CTA owns kRows output channels and walks its
// share of K in stages of kStageK; each stage's weight tile (kRows rows x kStageK / 2 bytes) is
// copied into shared memory by cp.async, one warp instruction per 256-512 contiguous bytes of a
// row, several stages in flight, so that DRAM pages are asked for whole (rows are K / 2 bytes
// apart; reading them 64-256 bytes at a time through registers reached 0.47 of the read
// bandwidth, benchmarks/NOTES.md). The tokens' slice of `a` and the stage's scales, zero points
// or mins ride in the same stage: any load issued outside the ring waits in DRAM's queues behind
// it, and stalled every stage when the scales were loaded that way.
//
// Arithmetic: tensor cores with the operands swapped: the weight is the 16 x 16 A operand of
// mma.m16n8k16 (16 channels), the tokens the 8 columns of B, so M <= 8 wastes nothing of the weight
// side. A dot product over k is unchanged by a permutation of k applied to both operands; here
// k-steps 2i and 2i + 1 of a 128-k chunk both take the 32 k of words 4i..4i + 3 of each row, thread
// c = lane % 4 the 8 k of word 4i + c (ldmatrix hands out exactly that from the 16-byte unit i).
// Word nibbles (e, e + 4), e = 0..3, become one 16-bit pair with the magic exponent
// ((w >> 4e) & 0x000F000F | 0x4300 4300: bf16 128 + q; 0x6400: fp16 1024 + q), exact, for slots
// {2c, 2c+1} (e = 2s) and {2c+8, 2c+9} (e = 2s + 1) of step s; the tokens' fragments take the
// same k. The scale, zero point and min are not applied per weight: every k-step lies in one
// group of 32 k, so per group and token
//     sum_k a (s (q - z) + m) = s P + (m - s (magic + z)) A,   P = sum_k a (magic + q), A = sum_k a,
// with P from the MMAs on the raw pairs, A from one more MMA by an all-ones operand (shared by
// the warp's tiles), both in float32. One LOP3 (and a shift) per weight pair is all the
// dequantisation left; the float32 sums keep ~2^-13 relative error after the cancellation of the
// magic term (within the 16-bit outputs' rounding).
//
// Work split: WN x WK warps; warp (wn, wk) takes tiles wn TW .. of 16 channels and chunk wk of
// every stage; the WK partial sums are added in shared memory at the end. When channel blocks are
// too few to fill the GPU, a cluster of `splits` CTAs (sm_90) divides K and sums through
// distributed shared memory: no workspace, no second launch. Each warp converts the per-group
// terms (s, and the coefficient of A) of its own rows when a group ends, one row per lane, and
// hands them to the fragments' rows by shuffles: one barrier per stage. (Converted once per stage
// by the whole CTA into a shared table, they cost a second barrier and ~65 instructions per warp
// and stage, about as many as the shuffles and the lanes' own conversions.)
#pragma once
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/async_copy.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/vec.cuh"
#include "cuda/quant/w4a16.h"

namespace kernels::cuda::w4a16 {

constexpr int kChunk = 128;    // k per warp and stage
constexpr int kMaxSplits = 8;  // portable cluster size
constexpr int kMaxStages = 8;
// A token's row of a staged slice of a is padded to 64 (mod 128) bytes: the 8 lanes of one
// phase of a 16-byte shared load (tokens g, g + 1; c = 0..3) then cover all 32 banks.
constexpr int kRowPadA = 64;

// MT 8-token tiles; warps WN along N (TW 16-channel tiles each) x WK along K (one chunk each);
// a copy ring of at most DEPTH stages (fewer where shared memory or K runs out).
template <int MT_, int TW_, int WN_, int WK_, int DEPTH_ = kMaxStages>
struct Config {
  static constexpr int MT = MT_, TW = TW_, WN = WN_, WK = WK_, kMaxDepth = DEPTH_;
  static constexpr int kThreads = 32 * WN * WK;
  static constexpr int kRows = 16 * TW * WN;        // output channels per CTA
  static constexpr int kStageK = kChunk * WK;       // k per stage
  static constexpr int kRowBytes = kStageK / 2;     // bytes of a weight row per stage
  static constexpr int kUnits = kRowBytes / 16;     // 16-byte units of a weight row per stage
  static constexpr int kWeightBytes = kRows * kRowBytes;
  static constexpr int kPartStride = kRows + 4;     // floats per token of a warp's sums (no conflicts)
  static_assert(kUnits >= 8, "the 8-way swizzle needs 8 units per row");
  // A lane converts the group terms of one row in each 32 of its warp's (TW 1 read past them).
  static_assert(TW % 2 == 0, "warps own whole 32-row blocks");
};

struct Params {
  void* out;
  const void* a;
  const int32_t* qweight;
  const void* scales;
  const void* extra;  // zero points or mins
  int m, n, k;
  int words;        // k / 8: int32 words per weight row
  int groups;       // k / group_size
  int group_shift;  // log2(group_size)
  int gps_shift;    // log2(kStageK / group_size): groups per stage
  int mode;         // W4A16Mode
  int scale_bytes, extra_bytes;
  Dtype scale_dtype;
  int stages;            // ceil(k / kStageK)
  int stages_per_cta;    // per split
  int pipeline;          // stages in the ring (2..kMaxStages)
  int row_bytes_a;       // kStageK * 2 + kRowPadA
  int a_stage_bytes;     // m * row_bytes_a
  // A stage's group parameters per row: 4-byte words covering the row's bytes of scales and of
  // zero points or mins (one more than their size: a row need not start 4-byte aligned), the
  // power-of-two lanes that copy them (log2), and the stage's raw bytes (16-aligned).
  int s_words, x_words, s_lane_shift, x_lane_shift;
  int param_raw_bytes;
  int splits;            // CTAs of a cluster along K (1, 2, 4, 8)
};

template <typename T>
struct Magic;
template <>
struct Magic<__nv_bfloat16> {
  static constexpr uint32_t kPair = 0x43004300u;  // 128 in both halves
  static constexpr float kValue = 128.f;
  static constexpr uint32_t kOnes = 0x3F803F80u;
};
template <>
struct Magic<__half> {
  static constexpr uint32_t kPair = 0x64006400u;  // 1024 in both halves
  static constexpr float kValue = 1024.f;
  static constexpr uint32_t kOnes = 0x3C003C00u;
};

// Selects rather than branches: inside the unrolled conversion, branches on the dtype and mode
// were duplicated by the compiler into ~60k instructions, and the instruction cache missed.
__device__ __forceinline__ float param_float(uint32_t bits, Dtype dtype) {
  const float h = __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
  const float b = __uint_as_float(bits << 16);
  return dtype == Dtype::kFloat32 ? __uint_as_float(bits) : dtype == Dtype::kFloat16 ? h : b;
}

// Copies the `bytes` (0..4) first bytes of the 4-aligned word at src into dst, zero-filling the
// rest (src must be a 4-aligned address even when nothing is read).
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, int bytes) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(bytes) : "memory");
}

// (x & mask) | bits as one LOP3: written in C++ with immediate constants, the compiler emits an
// AND and an OR (a LOP3 takes one immediate), two instructions per weight pair.
__device__ __forceinline__ uint32_t and_or(uint32_t x, uint32_t mask, uint32_t bits) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(x), "r"(mask), "r"(bits));
  return r;
}

// cp.async.wait_group takes an immediate; the ring depth is chosen at launch.
__device__ __forceinline__ void cp_async_wait_pending(int n) {
  switch (n) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    default: cp_async_wait<6>(); break;
  }
}

template <typename T, typename C>
__global__ void __launch_bounds__(C::kThreads, 1) w4a16_gemm_kernel(const Params p) {
  constexpr int MT = C::MT, TW = C::TW, WN = C::WN, WK = C::WK, kThreads = C::kThreads;
  constexpr int kRows = C::kRows, kStageK = C::kStageK, kRowBytes = C::kRowBytes, kUnits = C::kUnits;
  char* smem = dynamic_smem();
  char* weight_ring = smem;
  char* a_ring = weight_ring + p.pipeline * C::kWeightBytes;
  char* param_ring = a_ring + p.pipeline * p.a_stage_bytes;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, c = lane % 4;
  const int wn = warp % WN, wk = warp / WN;
  const int block = blockIdx.x / p.splits, rank = blockIdx.x % p.splits;
  const int n0 = block * kRows;
  const int first = rank * p.stages_per_cta;
  const int count = max(0, min(p.stages, first + p.stages_per_cta) - first);
  const int gps = 1 << p.gps_shift;  // groups per stage

  // Copies the bytes of a stage's group parameters, row by row, as 4-byte words from the one
  // holding the row's first byte; bytes past the row's last group of the stage (past N or the
  // groups) are not read, and read as zero.
  // Offsets inside a row are 32-bit (a row of parameters is at most K / 32 x 4 bytes).
  auto issue_params = [&](const void* base, int bytes, int words, int lane_shift, int g0, int gcount, char* dst) {
    const int w = tid & ((1 << lane_shift) - 1);
    if (w >= words) return;
    const uintptr_t aligned_base = reinterpret_cast<uintptr_t>(base) & ~uintptr_t{3};
    const int row_bytes = p.groups * bytes;
    for (int row = tid >> lane_shift; row < kRows; row += kThreads >> lane_shift) {
      const int n = n0 + row;
      const uintptr_t row_start = reinterpret_cast<uintptr_t>(base) + static_cast<uintptr_t>(n) * row_bytes;
      // The stage's first byte, counted from the 4-aligned word holding the row's first byte.
      const int first = static_cast<int>(row_start & 3) + g0 * bytes;
      const int word = (first >> 2) + w;
      const int take = n < p.n ? min(4, max(0, first + gcount * bytes - 4 * word)) : 0;
      const uintptr_t src = (row_start & ~uintptr_t{3}) + 4 * static_cast<uintptr_t>(word);
      cp_async_4(dst + (row * words + w) * 4, reinterpret_cast<const void*>(take > 0 ? src : aligned_base), take);
    }
  };

  // Stage j (CTA-local) into ring slot `slot`: the weight rows' units (16 bytes = 32 k) swizzled
  // by row % 8 so that the 8 rows of an ldmatrix land in distinct banks, the tokens' rows of a,
  // and the group parameters. Units past N or K are zero-filled: zero codes, zero activations.
  // This thread's weight units: the same rows and unit in every stage (kThreads is a multiple of
  // kUnits), so only k moves.
  constexpr int kIssue = kRows * kUnits / kThreads;
  static_assert(kRows * kUnits % kThreads == 0 && kThreads % kUnits == 0, "whole units per thread");
  // Copy i of a thread takes row r0 + 16 i (16 = kThreads / kUnits in every tiling: the same
  // swizzle in every pass), so its source and destination are the first copy's plus fixed strides,
  // and a stage moves the source by kRowBytes: a few instructions a copy (index arithmetic per copy
  // was ~20, and this code runs for every stage and thread). A copy that is not made (past N or K)
  // keeps its address: zero bytes are read from it.
  constexpr int kRowsPerPass = kThreads / kUnits;
  static_assert(kRowsPerPass % 8 == 0, "every pass must keep the row's swizzle");
  const int unit = tid % kUnits, r0 = tid / kUnits;
  const char* wsrc = reinterpret_cast<const char*>(p.qweight) + static_cast<int64_t>(n0 + r0) * p.words * 4 +
                     unit * 16 + static_cast<int64_t>(first) * kRowBytes;
  const int64_t wsrc_stride = static_cast<int64_t>(kRowsPerPass) * p.words * 4;
  const int wdst = r0 * kRowBytes + ((unit ^ (r0 & 7)) * 16);
  const int wrows = min(kIssue, max(0, (p.n - n0 - r0 + kRowsPerPass - 1) / kRowsPerPass));  // copies inside N
  auto issue = [&](int j, int slot) {
    const int k0 = (first + j) * kStageK;
    char* wdst_stage = weight_ring + slot * C::kWeightBytes + wdst;
    const char* src = wsrc + j * kRowBytes;
    const bool k_ok = k0 + unit * 32 < p.k;
#pragma unroll
    for (int i = 0; i < kIssue; ++i)
      cp_async_16(wdst_stage + i * kRowsPerPass * kRowBytes, src + i * wsrc_stride, k_ok && i < wrows);
    char* adst = a_ring + slot * p.a_stage_bytes;
    const T* a = static_cast<const T*>(p.a);
    for (int q = tid; q < p.m * (kStageK / 8); q += kThreads) {
      const int row = q / (kStageK / 8), u = q % (kStageK / 8);
      const int kk = k0 + u * 8;
      const bool ok = kk < p.k;
      cp_async_16(adst + row * p.row_bytes_a + u * 16, ok ? a + static_cast<int64_t>(row) * p.k + kk : a, ok);
    }
    const int g0 = (first + j) * gps, gcount = max(0, min(gps, p.groups - g0));
    char* pdst = param_ring + slot * p.param_raw_bytes;
    issue_params(p.scales, p.scale_bytes, p.s_words, p.s_lane_shift, g0, gcount, pdst);
    if (p.extra_bytes)
      issue_params(p.extra, p.extra_bytes, p.x_words, p.x_lane_shift, g0, gcount, pdst + kRows * p.s_words * 4);
  };

  // The raw parameter at byte `at` (from the word holding the row's first byte) of a row copied
  // by issue_params.
  auto raw_param = [&](const char* row_words, int at, int bytes) {
    const uint32_t word = reinterpret_cast<const uint32_t*>(row_words)[at >> 2];
    const uint32_t v = word >> (8 * (at & 3));
    return bytes == 4 ? v : v & ((1u << (8 * bytes)) - 1);
  };
  // The group terms (s, m - s (magic + z)) of row `row` (CTA-local), group `grp` of stage j, from
  // ring slot `slot`. Zero bytes (past N or K) give (0, 0).
  const uint32_t s_base = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p.scales));
  const uint32_t x_base = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p.extra));
  const bool zero_points = p.mode == static_cast<int>(W4A16Mode::kZeroPoints);
  const bool mins = p.mode == static_cast<int>(W4A16Mode::kMins);
  auto group_terms = [&](int j, int slot, int row, int grp) {
    const char* raw = param_ring + slot * p.param_raw_bytes;
    // Only the low two bits matter: wrapping is harmless.
    const uint32_t first_group = static_cast<uint32_t>(n0 + row) * static_cast<uint32_t>(p.groups) + (first + j) * gps;
    const int s_at = static_cast<int>((s_base + first_group * p.scale_bytes) & 3) + grp * p.scale_bytes;
    const float s = param_float(raw_param(raw + row * p.s_words * 4, s_at, p.scale_bytes), p.scale_dtype);
    uint32_t xb = 0;
    if (p.extra_bytes) {
      const int x_at = static_cast<int>((x_base + first_group * p.extra_bytes) & 3) + grp * p.extra_bytes;
      xb = raw_param(raw + (kRows * p.s_words + row * p.x_words) * 4, x_at, p.extra_bytes);
    }
    const float z = zero_points ? static_cast<float>(xb) : mins ? 0.f : 8.f;
    const float m = mins ? param_float(xb, p.scale_dtype) : 0.f;
    return make_float2(s, fmaf(-s, Magic<T>::kValue + z, m));
  };

  float acc[TW][MT][4];
#pragma unroll
  for (int t = 0; t < TW; ++t)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[t][mt][r] = 0.f;

  const uint32_t ones[4] = {Magic<T>::kOnes, Magic<T>::kOnes, Magic<T>::kOnes, Magic<T>::kOnes};
  const int group_mask = (1 << (p.group_shift - 5)) - 1;  // 32-k pieces per group, less one
  // ldmatrix: lane l gives row l % 8 of matrix l / 8 = (h, i) = (l / 8 % 2, 2 x + l / 16) in call x.
  const int lm_row = (lane / 8 % 2) * 8 + lane % 8, lm_piece = lane / 16;

  // This warp's chunk of stage j (CTA-local) in ring slot `slot`.
  auto compute = [&](int j, int slot) {
    const int kc = (first + j) * kStageK + wk * kChunk;  // the chunk's first k
    if (kc >= p.k) return;
    const char* wst = weight_ring + slot * C::kWeightBytes;
    const char* ast = a_ring + slot * p.a_stage_bytes + (wk * kChunk + 8 * c) * 2;
    uint32_t w[TW][2][4];  // [tile][row g / g + 8][piece i]: word 4i + c
#pragma unroll
    for (int t = 0; t < TW; ++t) {
      const int row = (wn * TW + t) * 16 + lm_row;
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const int u = wk * 4 + 2 * x + lm_piece;
        uint32_t r[4];
        ldmatrix_x4(r, wst + row * kRowBytes + ((u ^ (row & 7)) * 16));
        w[t][0][2 * x] = r[0];
        w[t][1][2 * x] = r[1];
        w[t][0][2 * x + 1] = r[2];
        w[t][1][2 * x + 1] = r[3];
      }
    }
    float P[TW][MT][4], A[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        A[mt][r] = 0.f;
#pragma unroll
        for (int t = 0; t < TW; ++t) P[t][mt][r] = 0.f;
      }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (kc + 32 * i >= p.k) break;  // K ends inside the chunk (whole groups)
      // The tokens' fragments of k-steps 2i + s: halves (h_{2s}, h_{2s+4}) and (h_{2s+1}, h_{2s+5})
      // of a[k 32 i + 8 c + 0..7].
      uint32_t b[MT][2][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int tok = mt * 8 + g;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (tok < p.m) v = *reinterpret_cast<const uint4*>(ast + tok * p.row_bytes_a + i * 64);
        b[mt][0][0] = __byte_perm(v.x, v.z, 0x5410);
        b[mt][0][1] = __byte_perm(v.x, v.z, 0x7632);
        b[mt][1][0] = __byte_perm(v.y, v.w, 0x5410);
        b[mt][1][1] = __byte_perm(v.y, v.w, 0x7632);
        mma_16816<T>(A[mt], ones, b[mt][0][0], b[mt][0][1]);
        mma_16816<T>(A[mt], ones, b[mt][1][0], b[mt][1][1]);
      }
#pragma unroll
      for (int t = 0; t < TW; ++t) {
        uint32_t q[2][4];  // [row g / g + 8][nibbles (e, e + 4)] as magic + q
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 4; ++e) q[h][e] = and_or(w[t][h][i] >> (4 * e), 0x000F000Fu, Magic<T>::kPair);
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const uint32_t frag[4] = {q[0][2 * s], q[1][2 * s], q[0][2 * s + 1], q[1][2 * s + 1]};
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) mma_16816<T>(P[t][mt], frag, b[mt][s][0], b[mt][s][1]);
        }
      }
      if (((i + 1) & group_mask) == 0) {  // the group ends: fold in its scale terms
        // Lane l converts the terms of the warp's rows l, l + 32, ...; the fragments' rows g and
        // g + 8 of each tile get theirs by shuffles (no shared table, no barrier to publish it).
        const int grp = (wk * kChunk + 32 * i) >> p.group_shift;
        float2 mine[(TW + 1) / 2];
#pragma unroll
        for (int h = 0; h < (TW + 1) / 2; ++h) mine[h] = group_terms(j, slot, wn * TW * 16 + h * 32 + lane, grp);
#pragma unroll
        for (int t = 0; t < TW; ++t) {
          const int from = (t % 2) * 16 + g;
          const float2 lo = make_float2(__shfl_sync(0xffffffffu, mine[t / 2].x, from),
                                        __shfl_sync(0xffffffffu, mine[t / 2].y, from));
          const float2 hi = make_float2(__shfl_sync(0xffffffffu, mine[t / 2].x, from + 8),
                                        __shfl_sync(0xffffffffu, mine[t / 2].y, from + 8));
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            // d0, d1: row g, tokens 2c, 2c + 1; d2, d3: row g + 8. A's rows are all alike.
            acc[t][mt][0] = fmaf(lo.x, P[t][mt][0], fmaf(lo.y, A[mt][0], acc[t][mt][0]));
            acc[t][mt][1] = fmaf(lo.x, P[t][mt][1], fmaf(lo.y, A[mt][1], acc[t][mt][1]));
            acc[t][mt][2] = fmaf(hi.x, P[t][mt][2], fmaf(hi.y, A[mt][0], acc[t][mt][2]));
            acc[t][mt][3] = fmaf(hi.x, P[t][mt][3], fmaf(hi.y, A[mt][1], acc[t][mt][3]));
#pragma unroll
            for (int r = 0; r < 4; ++r) P[t][mt][r] = 0.f;
          }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int r = 0; r < 4; ++r) A[mt][r] = 0.f;
      }
    }
  };

  // The ring: stages j + 1 .. j + pipeline - 1 in flight while stage j is computed. The barrier
  // publishes stage j's copies and frees the slot of stage j - 1, which the next copy overwrites.
#pragma unroll 1
  for (int j = 0; j < p.pipeline - 1; ++j) {
    if (j < count) issue(j, j);
    cp_async_commit();
  }
  int slot = 0;  // stage j's
#pragma unroll 1
  for (int j = 0; j < count; ++j) {
    cp_async_wait_pending(p.pipeline - 2);
    __syncthreads();
    if (j + p.pipeline - 1 < count) issue(j + p.pipeline - 1, slot == 0 ? p.pipeline - 1 : slot - 1);
    cp_async_commit();
    compute(j, slot);
    slot = slot + 1 == p.pipeline ? 0 : slot + 1;
  }

  // The warps along K, then the CTAs of the cluster, summed in a fixed order.
  cp_async_wait<0>();
  __syncthreads();  // the ring is dead: the same memory holds the partial sums
  float* part = reinterpret_cast<float*>(smem);  // [WK][m][kPartStride]
  const int slab = p.m * C::kPartStride;
#pragma unroll
  for (int t = 0; t < TW; ++t)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int tok = mt * 8 + 2 * c + (r & 1);
        const int col = (wn * TW + t) * 16 + g + (r >= 2 ? 8 : 0);
        if (tok < p.m) part[wk * slab + tok * C::kPartStride + col] = acc[t][mt][r];
      }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  if (p.splits > 1) {
    cg::this_cluster().sync();
  } else {
    __syncthreads();
  }
#else
  __syncthreads();  // splits is 1 before sm_90 (no clusters)
#endif
  const int width = kRows / p.splits;  // this CTA writes channels [rank, rank + 1) * width
  T* out = static_cast<T*>(p.out);
  for (int e = tid; e < p.m * width; e += kThreads) {
    const int tok = e / width, col = rank * width + e % width;
    const int n = n0 + col;
    if (n >= p.n) continue;
    float v = 0.f;
    for (int r = 0; r < p.splits; ++r) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      const float* src = p.splits > 1 ? cg::this_cluster().map_shared_rank(part, r) : part;
#else
      const float* src = part;
#endif
#pragma unroll
      for (int w = 0; w < WK; ++w) v += src[w * slab + tok * C::kPartStride + col];
    }
    reinterpret_cast<uint16_t*>(out)[static_cast<int64_t>(tok) * p.n + n] = static_cast<uint16_t>(float_to_bits<T>(v));
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (p.splits > 1) cg::this_cluster().sync();  // peers read this CTA's sums until here
#endif
}

}  // namespace kernels::cuda::w4a16
