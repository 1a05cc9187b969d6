// The CPU kernels of one ISA variant, as plain function pointers. Each variant is compiled in
// its own translation unit with its own ISA flags (isa_*.cpp); bindings.cpp calls through the
// table that active_kernels() picks, so no code built with AVX flags runs before CPUID says it may.
//
// Every kernel works on a range [begin, end) of independent work items, the unit that
// torch's parallel_for splits across threads.
#pragma once
#include <cstdint>

#include "cpu/dtypes.h"

namespace kernels::cpu {

struct RopeArgs {
  const int64_t* positions;
  void* q;
  void* k;
  const void* cos_sin_cache;
  int64_t q_token_stride;  // elements
  int64_t k_token_stride;
  int64_t q_heads;
  int64_t k_heads;
  int64_t head_dim;
  int64_t rot_dim;
  DType dtype;
  bool cache_is_float32;
  bool is_neox;
};

// (query token, query head) rows in one attention tile: its scaled q and accumulators, float32,
// take 2 x 32 KiB.
constexpr int64_t attention_max_rows(int64_t head_dim) { return 8192 / head_dim; }

// Paged attention (decode and prefill share it). A work item is a tile: some query tokens of one
// sequence, with the query heads (or a slice of them) of one KV head, over a range of keys.
struct AttentionArgs {
  const void* q;        // [total_q, num_heads, head_dim], contiguous
  const void* k_cache;  // [num_pages, page_size, num_kv_heads, head_dim], contiguous
  const void* v_cache;
  const int32_t* page_table;  // [batch, max_pages]
  const int32_t* kv_lens;     // [batch]: keys of each sequence
  const int32_t* qo_indptr;   // [batch + 1] (prefill); null for decode (one query per sequence)
  const int64_t* tile_start;  // [batch + 1] (prefill): first query tile of each sequence
  void* out;                  // [total_q, num_heads, head_dim], q's dtype
  float* lse;                 // [total_q, num_heads]
  // Decode with the context split into chunks: per item, [heads_per_item, head_dim] float32
  // partial outputs and [heads_per_item] lse, merged by attention_merge_chunks. Null otherwise.
  float* part_out;
  float* part_lse;
  int64_t batch;
  int64_t max_pages;
  int64_t page_size;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t heads_per_item;  // query heads per item: the whole group, or slices of it (last shorter)
  int64_t head_slices;     // ceil(group / heads_per_item)
  int64_t tokens_per_tile; // prefill: query tokens per tile
  int64_t chunks;          // decode: context chunks per (sequence, head slice)
  int64_t window;          // -1: none
  float scale;
  float soft_cap;          // 0: none
  bool causal;
  DType dtype;
};

struct MergeArgs {
  const void* v_a;
  const float* lse_a;
  const void* v_b;
  const float* lse_b;
  void* v;
  float* lse;
  int64_t head_dim;
  DType dtype;
};

// INT4 weight-only GEMM (quant_kernels.h). Packed rows of a are padded to a multiple of
// kW4A16KAlign elements (whole blocks of every ISA), per-row group arrays to a multiple of
// kW4A16GroupAlign plus kW4A16GroupAlign more (lane_groups reads a few past the last group).
constexpr int64_t kW4A16KAlign = 128;
constexpr int64_t kW4A16GroupAlign = 16;

struct W4A16Args {
  const void* a;               // [M, K], contiguous, `dtype`
  const int32_t* qweight;      // [N, K / 8]: value k of row n in bits 4 (k % 8).. of word k / 8
  const void* scales;          // [N, groups], `scale_dtype`
  const uint8_t* zero_points;  // [N, groups] or null: w = (q - z) s
  const void* mins;            // [N, groups], `min_dtype`, or null: w = q s + m
  void* out;                   // [M, N], `dtype`
  float* a_packed;             // [M, k_padded] scratch: a as float32 in the kernel's block order
  float* a_group_sums;         // [M, groups_padded] scratch: the sum of a over each group
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t group_size;  // 32, 64 or 128
  int64_t k_padded;
  int64_t groups_padded;
  DType dtype;
  DType scale_dtype;
  DType min_dtype;
};

// INT8 weight-only GEMM (w8a16_kernels.h). K is a multiple of group_size (32, 64 or 128).
struct W8A16Args {
  const void* a;           // [M, K], contiguous, `dtype`
  const int8_t* qweight;   // [N, K]: w[n, k] = qweight[n, k] * scales[n, k / group_size]
  const void* scales;      // [N, K / group_size], `scale_dtype`
  void* out;               // [M, N], `dtype`
  float* a_converted;      // [M, K] scratch: half-precision a as float32 (null for float32 a)
  const float* a_float;    // [M, K]: what the GEMM reads, a_converted or a itself
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t group_size;
  DType dtype;
  DType scale_dtype;
};

struct Kernels {
  // Work item: one row.
  void (*rms_norm)(DType, const void* x, int64_t x_row_stride, const void* weight, void* out,
                   int64_t hidden, float eps, int64_t begin, int64_t end);
  void (*fused_add_rms_norm)(DType, void* x, void* residual, const void* weight, int64_t hidden,
                             float eps, int64_t begin, int64_t end);
  // Work item: one head of one token, t * (q_heads + k_heads) + h, q heads before k heads.
  void (*rotary_embedding)(const RopeArgs&, int64_t begin, int64_t end);
  // Work item: one element of the [T, d] output, so that a single long row still splits.
  void (*silu_and_mul)(DType, const void* x, void* out, int64_t d, int64_t begin, int64_t end);
  void (*gelu_and_mul)(DType, const void* x, void* out, int64_t d, int64_t begin, int64_t end);
  void (*gelu_tanh_and_mul)(DType, const void* x, void* out, int64_t d, int64_t begin,
                            int64_t end);
  // Work item: ((sequence * num_kv_heads + kv_head) * head_slices + slice) * chunks + chunk.
  void (*paged_decode)(const AttentionArgs&, int64_t begin, int64_t end);
  // Work item: ((sequence * num_kv_heads + kv_head) * head_slices + slice); merges the chunks.
  void (*decode_merge_chunks)(const AttentionArgs&, int64_t begin, int64_t end);
  // Work item: (tile * num_kv_heads + kv_head) * head_slices + slice, tiles numbered over the
  // whole batch (tile_start).
  void (*paged_prefill)(const AttentionArgs&, int64_t begin, int64_t end);
  // Work item: one (token, head) row.
  void (*merge_attention_states)(const MergeArgs&, int64_t begin, int64_t end);
  // Work item: one row of a; fills a_packed and a_group_sums, which w4a16_gemm then reads.
  void (*w4a16_prepare)(const W4A16Args&, int64_t begin, int64_t end);
  // Work item: one output channel (a column of out), for every row.
  void (*w4a16_gemm)(const W4A16Args&, int64_t begin, int64_t end);
  // Work item: one row of half-precision a, converted into a_float.
  void (*w8a16_prepare)(const W8A16Args&, int64_t begin, int64_t end);
  // Work item: one output channel (a column of out), for every row.
  void (*w8a16_gemm)(const W8A16Args&, int64_t begin, int64_t end);
};

const Kernels& scalar_kernels();
const Kernels& avx2_kernels();    // built on x86-64 only
const Kernels& avx512_kernels();  // built on x86-64 only

// The best variant this CPU runs, capped by the environment variable KERNELS_CPU_ISA
// (scalar | avx2 | avx512). Read at every call, so a test can switch variants in-process.
const Kernels& active_kernels();

}  // namespace kernels::cpu
