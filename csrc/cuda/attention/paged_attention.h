// Launchers of the paged-attention ops (plain pointers, no torch). Layouts and semantics:
// docs/dev/op-semantics.md, "Paged attention". Each returns the launch status.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/common/dtype.h"

namespace kernels::cuda {

// k, v [tokens, kv_heads, head_dim] (heads packed, token stride k_stride / v_stride elements)
// into slot slot_mapping[t] of the caches [num_pages, page_size, kv_heads, head_dim]; slots
// outside [0, num_slots) are skipped.
cudaError_t launch_store_kv_cache(const void* k, const void* v, void* k_cache, void* v_cache,
                                  const int64_t* slot_mapping, int64_t tokens, int64_t row,
                                  int64_t k_stride, int64_t v_stride, int64_t num_slots,
                                  Dtype dtype, cudaStream_t stream);

struct DecodeShape {
  int64_t batch;
  int num_heads, num_kv_heads, head_dim, page_size, max_pages;
  int64_t num_pages;
  int64_t q_stride;  // elements from one sequence's q to the next: >= num_heads * head_dim, multiple of 8
};

// The number of KV splits launch_paged_decode uses for this shape on `device` (1: no workspace);
// with_new_token: the launch will carry a DecodeNewToken.
int paged_decode_splits(const DecodeShape& shape, int window, bool with_new_token, int device);

// Each sequence's newest token (token seq_lens[b] - 1), rotated and stored by the decode launch
// itself (paged_decode_attention_with_rope_): q rotated in registers (q is not written), k rotated
// and, with v, written to slot slot_mapping[b] when that is the token's slot; a negative slot
// stores nothing (the cache is read as it is); any other slot makes the sequence's output NaN and
// stores nothing. Positions outside [0, max_position) rotate to NaN, as rotary_embedding_ does.
// Head dims 64 / 128; neox needs rot_dim % 4 == 0; k / v rows 16-byte aligned.
struct DecodeNewToken {
  const void* k;
  const void* v;
  int64_t k_stride, v_stride;  // elements between sequences' rows
  void* k_cache;
  void* v_cache;
  const int64_t* positions;
  const int64_t* slot_mapping;
  const void* cos_sin;  // [max_position, rot_dim]: cos for the first rot_dim / 2, then sin
  int64_t max_position;
  int rot_dim;
  bool cos_sin_float32;  // else q's dtype
  bool neox;
};

// q [batch, num_heads, head_dim] (heads contiguous, rows q_stride apart) -> out (q's dtype,
// bf16 / fp16), lse [batch, num_heads] float32.
// With splits > 1, part_out [batch, splits, num_heads, head_dim] and part_lse
// [batch, splits, num_heads] (float32) are the workspace, written and then merged by the launch
// (nothing needs initialising: a graph can capture the launch with any workspace).
cudaError_t launch_paged_decode(void* out, float* lse, float* part_out, float* part_lse,
                                const void* q, const void* k_cache, const void* v_cache,
                                const int32_t* page_table, const int32_t* seq_lens,
                                const DecodeShape& shape, int splits, float scale, int window,
                                float soft_cap, Dtype dtype, const DecodeNewToken* new_token,
                                cudaStream_t stream);

struct PrefillShape {
  int total_q, batch, num_heads, num_kv_heads, head_dim, page_size, max_pages;
  int64_t num_pages;
  int64_t q_stride;  // elements from one token's q to the next: >= num_heads * head_dim, multiple of 8
};

// q [total_q, num_heads, head_dim] (heads contiguous, tokens q_stride apart) -> out (q's dtype,
// bf16 / fp16, contiguous), lse [total_q, num_heads] float32; qo_indptr [batch + 1], kv_lens
// [batch] int32 on the device. With allow_sm90a, the wgmma kernel where the device and build have
// it (head_dim 64 / 128), else the mma.sync kernel.
cudaError_t launch_paged_prefill(void* out, float* lse, const void* q, const void* k_cache,
                                 const void* v_cache, const int32_t* page_table,
                                 const int32_t* qo_indptr, const int32_t* kv_lens,
                                 const PrefillShape& shape, float scale, bool causal, int window,
                                 float soft_cap, Dtype dtype, bool allow_sm90a, cudaStream_t stream);

// v_a, v_b, v [rows, dim] contiguous; lse_a, lse_b, lse [rows] float32.
cudaError_t launch_merge_attention_states(void* v, float* lse, const void* v_a, const float* lse_a,
                                          const void* v_b, const float* lse_b, int64_t rows,
                                          int64_t dim, Dtype dtype, cudaStream_t stream);

}  // namespace kernels::cuda
