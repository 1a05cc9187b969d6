// The CPU implementations of the kernels:: ops (schemas: csrc/registration.cpp, semantics:
// docs/dev/op-semantics.md). This file checks layouts, allocates outputs and splits the work
// across torch's intra-op threads; the arithmetic lives in the ISA variant active_kernels() picks.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "cpu/kernel_table.h"

namespace kernels::cpu {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Each task should carry enough elements (tens of microseconds) to pay for waking a thread.
constexpr int64_t kElementsPerTask = 32 * 1024;

int64_t grain(int64_t elements_per_item) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements_per_item));
}

DType float_dtype(const Tensor& t, const char* op) {
  const ScalarType st = t.scalar_type();
  KERNELS_CHECK(st == ScalarType::Float || st == ScalarType::Half || st == ScalarType::BFloat16,
                op, ": expected float32, float16 or bfloat16, got ", st);
  return st == ScalarType::Float ? DType::Float32
         : st == ScalarType::Half ? DType::Float16
                                  : DType::BFloat16;
}

// Bytes per element of a float tensor that float_dtype accepted.
int64_t element_bytes(const Tensor& t) { return t.scalar_type() == ScalarType::Float ? 4 : 2; }

void check_cpu(const Tensor& t, const char* op) {
  KERNELS_CHECK(t.is_cpu(), op, ": expected CPU tensors");
}

void check_weight(const Tensor& weight, const Tensor& x, int64_t hidden, const char* op) {
  check_cpu(weight, op);
  KERNELS_CHECK(weight.dim() == 1 && weight.size(0) == hidden && weight.is_contiguous(), op,
                ": weight must be a contiguous [", hidden, "] tensor");
  KERNELS_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype");
}

Tensor rms_norm(Tensor x, Tensor weight, double eps) {
  constexpr const char* op = "rms_norm";
  check_cpu(x, op);
  KERNELS_CHECK(x.dim() == 2, op, ": x must be [T, H]");
  const DType dtype = float_dtype(x, op);
  const int64_t tokens = x.size(0), hidden = x.size(1);
  check_weight(weight, x, hidden, op);
  KERNELS_CHECK((hidden <= 1 || x.stride(1) == 1) && (tokens <= 1 || x.stride(0) >= hidden), op,
                ": x must have a contiguous last dim and row stride >= H");
  const std::array<int64_t, 2> shape{tokens, hidden};
  Tensor out = torch::stable::new_empty(x, shape);
  if (out.numel() == 0) return out;

  const Kernels& k = active_kernels();
  const void* xp = x.const_data_ptr();
  const void* wp = weight.const_data_ptr();
  void* outp = out.mutable_data_ptr();
  const int64_t row_stride = x.stride(0);
  torch::stable::parallel_for(0, tokens, grain(hidden), [&](int64_t begin, int64_t end) {
    k.rms_norm(dtype, xp, row_stride, wp, outp, hidden, float(eps), begin, end);
  });
  return out;
}

void fused_add_rms_norm_(Tensor x, Tensor residual, Tensor weight, double eps) {
  constexpr const char* op = "fused_add_rms_norm_";
  check_cpu(x, op);
  check_cpu(residual, op);
  KERNELS_CHECK(x.dim() == 2 && x.is_contiguous() && residual.is_contiguous(), op,
                ": x and residual must be contiguous [T, H]");
  const DType dtype = float_dtype(x, op);
  const int64_t tokens = x.size(0), hidden = x.size(1);
  KERNELS_CHECK(residual.dim() == 2 && residual.size(0) == tokens && residual.size(1) == hidden &&
                    residual.scalar_type() == x.scalar_type(),
                op, ": residual must match x in shape and dtype");
  check_weight(weight, x, hidden, op);
  if (x.numel() == 0) return;

  const Kernels& k = active_kernels();
  void* xp = x.mutable_data_ptr();
  void* rp = residual.mutable_data_ptr();
  const void* wp = weight.const_data_ptr();
  torch::stable::parallel_for(0, tokens, grain(hidden), [&](int64_t begin, int64_t end) {
    k.fused_add_rms_norm(dtype, xp, rp, wp, hidden, float(eps), begin, end);
  });
}

void check_heads(const Tensor& t, int64_t tokens, int64_t head_dim, const char* name) {
  constexpr const char* op = "rotary_embedding_";
  check_cpu(t, op);
  KERNELS_CHECK(t.dim() == 3 && t.size(0) == tokens && t.size(2) == head_dim, op, ": ", name,
                " must be [T, heads, D] with T = len(positions) and D shared by q and k");
  const int64_t heads = t.size(1);
  // Overlapping tokens would be rotated twice, and raced on by two threads.
  KERNELS_CHECK((head_dim <= 1 || t.stride(2) == 1) && (heads <= 1 || t.stride(1) == head_dim) &&
                    (tokens <= 1 || t.stride(0) >= heads * head_dim),
                op, ": ", name,
                " must have stride(2) == 1, stride(1) == D and stride(0) >= heads * D");
}

void rotary_embedding_(Tensor positions, Tensor q, Tensor k, Tensor cos_sin_cache, bool is_neox) {
  constexpr const char* op = "rotary_embedding_";
  check_cpu(positions, op);
  KERNELS_CHECK(positions.dim() == 1 && positions.scalar_type() == ScalarType::Long &&
                    positions.is_contiguous(),
                op, ": positions must be a contiguous int64 [T] tensor");
  const int64_t tokens = positions.size(0);
  KERNELS_CHECK(q.dim() == 3, op, ": q must be [T, heads, D]");
  const int64_t head_dim = q.size(2);
  check_heads(q, tokens, head_dim, "q");
  check_heads(k, tokens, head_dim, "k");
  const DType dtype = float_dtype(q, op);
  KERNELS_CHECK(k.scalar_type() == q.scalar_type(), op, ": k must have q's dtype");
  check_cpu(cos_sin_cache, op);
  KERNELS_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.is_contiguous(), op,
                ": cos_sin_cache must be a contiguous [P, R] tensor");
  const bool cache_is_float32 = cos_sin_cache.scalar_type() == ScalarType::Float;
  KERNELS_CHECK(cache_is_float32 || cos_sin_cache.scalar_type() == q.scalar_type(), op,
                ": cos_sin_cache must be float32 or q's dtype");
  const int64_t max_position = cos_sin_cache.size(0), rot_dim = cos_sin_cache.size(1);
  KERNELS_CHECK(rot_dim % 2 == 0 && rot_dim <= head_dim, op,
                ": cos_sin_cache rows must have an even length R <= D");

  // Every position is checked before anything is written, so a bad one leaves q and k intact.
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    KERNELS_CHECK(pos[t] >= 0 && pos[t] < max_position, op, ": positions[", t, "] = ", pos[t],
                  " is outside the cos_sin_cache, [0, ", max_position, ")");
  }
  const int64_t items = tokens * (q.size(1) + k.size(1));
  if (items == 0 || rot_dim == 0) return;

  const RopeArgs args{pos,
                      q.mutable_data_ptr(),
                      k.mutable_data_ptr(),
                      cos_sin_cache.const_data_ptr(),
                      q.stride(0),
                      k.stride(0),
                      q.size(1),
                      k.size(1),
                      head_dim,
                      rot_dim,
                      dtype,
                      cache_is_float32,
                      is_neox};
  const Kernels& kern = active_kernels();
  torch::stable::parallel_for(0, items, grain(rot_dim), [&](int64_t begin, int64_t end) {
    kern.rotary_embedding(args, begin, end);
  });
}

using GatedKernel = void (*)(DType, const void*, void*, int64_t, int64_t, int64_t);

Tensor gated_activation(const Tensor& x, GatedKernel kernel, const char* op) {
  check_cpu(x, op);
  KERNELS_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) % 2 == 0, op,
                ": x must be a contiguous [T, 2d] tensor");
  const DType dtype = float_dtype(x, op);
  const int64_t tokens = x.size(0), d = x.size(1) / 2;
  const std::array<int64_t, 2> shape{tokens, d};
  Tensor out = torch::stable::new_empty(x, shape);
  const int64_t n = out.numel();
  if (n == 0) return out;

  const void* xp = x.const_data_ptr();
  void* outp = out.mutable_data_ptr();
  torch::stable::parallel_for(0, n, kElementsPerTask, [&](int64_t begin, int64_t end) {
    kernel(dtype, xp, outp, d, begin, end);
  });
  return out;
}

Tensor silu_and_mul(Tensor x) {
  return gated_activation(x, active_kernels().silu_and_mul, "silu_and_mul");
}

Tensor gelu_and_mul(Tensor x, bool tanh) {
  const Kernels& k = active_kernels();
  return gated_activation(x, tanh ? k.gelu_tanh_and_mul : k.gelu_and_mul, "gelu_and_mul");
}

// ---- paged attention -----------------------------------------------------------------------

struct CacheShape {
  int64_t num_pages, page_size, kv_heads, head_dim;
};

CacheShape check_cache(const Tensor& k_cache, const Tensor& v_cache, const char* op) {
  check_cpu(k_cache, op);
  check_cpu(v_cache, op);
  KERNELS_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous(), op,
                ": k_cache must be a contiguous [num_pages, page_size, num_kv_heads, head_dim] "
                "tensor");
  KERNELS_CHECK(v_cache.dim() == 4 && v_cache.is_contiguous() &&
                    v_cache.scalar_type() == k_cache.scalar_type(),
                op, ": v_cache must be contiguous, with k_cache's dtype");
  for (int64_t i = 0; i < 4; ++i) {
    KERNELS_CHECK(v_cache.size(i) == k_cache.size(i), op, ": v_cache must have k_cache's shape");
  }
  float_dtype(k_cache, op);
  const CacheShape c{k_cache.size(0), k_cache.size(1), k_cache.size(2), k_cache.size(3)};
  KERNELS_CHECK(c.page_size >= 1 && c.kv_heads >= 1, op,
                ": the cache needs page_size >= 1 and num_kv_heads >= 1");
  return c;
}

void check_int32(const Tensor& t, int64_t dim, const char* name, const char* op) {
  check_cpu(t, op);
  KERNELS_CHECK(t.dim() == dim && t.scalar_type() == ScalarType::Int && t.is_contiguous(), op,
                ": ", name, " must be a contiguous ", dim, "-d int32 tensor");
}

// q [tokens, num_heads, head_dim] against the cache; returns the dtype.
// The kernels read q contiguous: a strided q (the q slice of a fused qkv) is copied first; for the
// decode that is one row per sequence, cheap next to the context's K / V.
Tensor contiguous_query(const Tensor& q) {
  return q.dim() == 3 && !q.is_contiguous() ? torch::stable::contiguous(q) : q;
}

DType check_query(const Tensor& q, const Tensor& k_cache, const CacheShape& c, const char* op) {
  check_cpu(q, op);
  KERNELS_CHECK(q.dim() == 3 && q.is_contiguous(), op,
                ": q must be a contiguous [tokens, num_heads, head_dim] tensor");
  const DType dtype = float_dtype(q, op);
  KERNELS_CHECK(q.scalar_type() == k_cache.scalar_type(), op, ": q must have the cache's dtype");
  KERNELS_CHECK(q.size(2) == c.head_dim, op, ": q's head_dim must be the cache's");
  KERNELS_CHECK(c.head_dim == 64 || c.head_dim == 128 || c.head_dim == 256, op,
                ": head_dim must be 64, 128 or 256; got ", c.head_dim);
  KERNELS_CHECK(q.size(1) >= 1 && q.size(1) % c.kv_heads == 0, op,
                ": num_heads must be a positive multiple of num_kv_heads");
  return dtype;
}

// Every length within [min_len, max_pages * page_size], and every page it reaches in the cache;
// checked before anything is computed.
void check_pages(const int32_t* table, int64_t max_pages, const int32_t* lens, int64_t batch,
                 int64_t min_len, const CacheShape& c, const char* what, const char* op) {
  const int64_t capacity = max_pages * c.page_size;
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t len = lens[i];
    KERNELS_CHECK(len >= min_len && len <= capacity, op, ": ", what, "[", i, "] = ", len,
                  " is outside [", min_len, ", ", capacity, "] (max_pages * page_size)");
    const int64_t used = (len + c.page_size - 1) / c.page_size;
    for (int64_t p = 0; p < used; ++p) {
      const int64_t page = table[i * max_pages + p];
      KERNELS_CHECK(page >= 0 && page < c.num_pages, op, ": page_table[", i, ", ", p, "] = ", page,
                    " is outside the cache's pages [0, ", c.num_pages, ")");
    }
  }
}

void check_options(double scale, int64_t window, double soft_cap, const char* op) {
  KERNELS_CHECK(std::isfinite(scale), op, ": scale must be finite");
  KERNELS_CHECK(window == -1 || window >= 1, op, ": window must be -1 (none) or >= 1");
  KERNELS_CHECK(std::isfinite(soft_cap) && soft_cap >= 0, op,
                ": soft_cap must be 0 (none) or positive");
}

AttentionArgs attention_args(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& page_table, const CacheShape& c, DType dtype,
                             double scale, int64_t window, double soft_cap, Tensor& out,
                             Tensor& lse) {
  AttentionArgs a{};
  a.q = q.const_data_ptr();
  a.k_cache = k_cache.const_data_ptr();
  a.v_cache = v_cache.const_data_ptr();
  a.page_table = page_table.const_data_ptr<int32_t>();
  a.out = out.mutable_data_ptr();
  a.lse = lse.mutable_data_ptr<float>();
  a.max_pages = page_table.size(1);
  a.page_size = c.page_size;
  a.num_heads = q.size(1);
  a.num_kv_heads = c.kv_heads;
  a.head_dim = c.head_dim;
  const int64_t group = a.num_heads / a.num_kv_heads;
  a.heads_per_item = std::min(group, attention_max_rows(c.head_dim));
  a.head_slices = (group + a.heads_per_item - 1) / a.heads_per_item;
  a.window = window;
  a.scale = float(scale);
  a.soft_cap = float(soft_cap);
  a.dtype = dtype;
  a.chunks = 1;
  a.tokens_per_tile = 1;
  return a;
}

std::tuple<Tensor, Tensor> paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache,
                                                  Tensor page_table, Tensor seq_lens,
                                                  double scale, int64_t window, double soft_cap) {
  constexpr const char* op = "paged_decode_attention";
  const CacheShape c = check_cache(k_cache, v_cache, op);
  q = contiguous_query(q);
  const DType dtype = check_query(q, k_cache, c, op);
  const int64_t batch = q.size(0), heads = q.size(1);
  check_int32(page_table, 2, "page_table", op);
  check_int32(seq_lens, 1, "seq_lens", op);
  KERNELS_CHECK(page_table.size(0) == batch && seq_lens.size(0) == batch, op,
                ": page_table and seq_lens must have q's batch size");
  check_options(scale, window, soft_cap, op);
  const std::array<int64_t, 3> out_shape{batch, heads, c.head_dim};
  const std::array<int64_t, 2> lse_shape{batch, heads};
  Tensor out = torch::stable::new_empty(q, out_shape);
  Tensor lse = torch::stable::new_empty(q, lse_shape, ScalarType::Float);
  if (batch == 0) return {out, lse};

  const int32_t* lens = seq_lens.const_data_ptr<int32_t>();
  check_pages(page_table.const_data_ptr<int32_t>(), page_table.size(1), lens, batch, 1, c,
              "seq_lens", op);

  AttentionArgs a =
      attention_args(q, k_cache, v_cache, page_table, c, dtype, scale, window, soft_cap, out, lse);
  a.kv_lens = lens;
  a.batch = batch;
  a.causal = true;
  // Keys each sequence attends to.
  int64_t total_keys = 0, max_keys = 0;
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t keys = window > 0 ? std::min<int64_t>(lens[i], window) : lens[i];
    total_keys += keys;
    max_keys = std::max(max_keys, keys);
  }
  // Few (sequence, kv head) groups that the threads cannot share evenly, and long contexts: split
  // each context into chunks (at least 256 keys each), merged afterwards. Preferably into the
  // fewest chunks that give every thread the same number of items (parallel_for hands out equal
  // contiguous ranges), else into enough for every thread to get several.
  const int64_t groups = batch * c.kv_heads * a.head_slices;
  const int64_t threads = torch::stable::get_num_threads();
  const int64_t max_chunks = std::clamp<int64_t>(max_keys / 256, 1, 64);
  if (threads > 1 && max_chunks > 1 && groups % threads != 0 && groups < 8 * threads) {
    int64_t chunks = 1;
    while (chunks < max_chunks && (groups * chunks) % threads != 0) ++chunks;
    if ((groups * chunks) % threads != 0) {
      chunks = std::min(max_chunks, (8 * threads + groups - 1) / groups);
    }
    a.chunks = chunks;
  }
  const int64_t items = groups * a.chunks;
  const int64_t work_per_item = std::max<int64_t>(
      1, total_keys / batch / a.chunks * a.heads_per_item * c.head_dim / 4);
  const Kernels& k = active_kernels();
  if (a.chunks == 1) {
    torch::stable::parallel_for(0, items, grain(work_per_item), [&](int64_t begin, int64_t end) {
      k.paged_decode(a, begin, end);
    });
    return {out, lse};
  }
  // Scratch for the partial results (tens of KiB): plain heap memory, not a tensor, whose
  // allocation through the dispatcher would cost more than the merge.
  std::unique_ptr<float[]> part(new float[items * a.heads_per_item * (c.head_dim + 1)]);
  a.part_out = part.get();
  a.part_lse = part.get() + items * a.heads_per_item * c.head_dim;
  torch::stable::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    k.paged_decode(a, begin, end);
  });
  torch::stable::parallel_for(0, groups, grain(a.chunks * a.heads_per_item * c.head_dim),
                              [&](int64_t begin, int64_t end) {
                                k.decode_merge_chunks(a, begin, end);
                              });
  return {out, lse};
}

std::tuple<Tensor, Tensor> paged_prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache,
                                                   Tensor page_table, Tensor qo_indptr,
                                                   Tensor kv_lens, double scale, bool causal,
                                                   int64_t window, double soft_cap) {
  constexpr const char* op = "paged_prefill_attention";
  const CacheShape c = check_cache(k_cache, v_cache, op);
  q = contiguous_query(q);
  const DType dtype = check_query(q, k_cache, c, op);
  const int64_t total_q = q.size(0), heads = q.size(1);
  check_int32(page_table, 2, "page_table", op);
  check_int32(qo_indptr, 1, "qo_indptr", op);
  check_int32(kv_lens, 1, "kv_lens", op);
  const int64_t batch = page_table.size(0);
  KERNELS_CHECK(qo_indptr.size(0) == batch + 1 && kv_lens.size(0) == batch, op,
                ": qo_indptr must be [batch + 1] and kv_lens [batch], batch from page_table");
  check_options(scale, window, soft_cap, op);
  const int32_t* indptr = qo_indptr.const_data_ptr<int32_t>();
  const int32_t* lens = kv_lens.const_data_ptr<int32_t>();
  KERNELS_CHECK(indptr[0] == 0 && indptr[batch] == total_q, op,
                ": qo_indptr must run from 0 to q.size(0) = ", total_q);
  for (int64_t i = 0; i < batch; ++i) {
    KERNELS_CHECK(indptr[i + 1] >= indptr[i], op, ": qo_indptr must not decrease");
    KERNELS_CHECK(lens[i] >= indptr[i + 1] - indptr[i], op, ": kv_lens[", i, "] = ", lens[i],
                  " is below its sequence's query count ", indptr[i + 1] - indptr[i]);
  }
  check_pages(page_table.const_data_ptr<int32_t>(), page_table.size(1), lens, batch, 0, c,
              "kv_lens", op);
  const std::array<int64_t, 3> out_shape{total_q, heads, c.head_dim};
  const std::array<int64_t, 2> lse_shape{total_q, heads};
  Tensor out = torch::stable::new_empty(q, out_shape);
  Tensor lse = torch::stable::new_empty(q, lse_shape, ScalarType::Float);
  if (total_q == 0) return {out, lse};

  AttentionArgs a =
      attention_args(q, k_cache, v_cache, page_table, c, dtype, scale, window, soft_cap, out, lse);
  a.kv_lens = lens;
  a.qo_indptr = indptr;
  a.batch = batch;
  a.causal = causal;
  a.tokens_per_tile =
      std::clamp<int64_t>(attention_max_rows(c.head_dim) / a.heads_per_item, 1, 32);
  std::vector<int64_t> tile_start(batch + 1, 0);
  int64_t keys = 0;
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t n = indptr[i + 1] - indptr[i];
    tile_start[i + 1] = tile_start[i] + (n + a.tokens_per_tile - 1) / a.tokens_per_tile;
    keys += n > 0 ? lens[i] : 0;
  }
  a.tile_start = tile_start.data();
  const int64_t tiles = tile_start[batch];
  const int64_t items = tiles * c.kv_heads * a.head_slices;
  const int64_t work_per_item =
      std::max<int64_t>(1, keys / std::max<int64_t>(1, tiles) * a.tokens_per_tile *
                               a.heads_per_item * c.head_dim / 4);
  const Kernels& k = active_kernels();
  torch::stable::parallel_for(0, items, grain(work_per_item), [&](int64_t begin, int64_t end) {
    k.paged_prefill(a, begin, end);
  });
  return {out, lse};
}

void store_kv_cache(Tensor k, Tensor v, Tensor k_cache, Tensor v_cache, Tensor slot_mapping) {
  constexpr const char* op = "store_kv_cache";
  const CacheShape c = check_cache(k_cache, v_cache, op);
  for (const Tensor* t : {&k, &v}) {
    check_cpu(*t, op);
    KERNELS_CHECK(t->dim() == 3 && t->size(1) == c.kv_heads && t->size(2) == c.head_dim &&
                      t->scalar_type() == k_cache.scalar_type(),
                  op, ": k and v must be [T, num_kv_heads, head_dim] in the cache's dtype");
    KERNELS_CHECK((c.head_dim <= 1 || t->stride(2) == 1) &&
                      (c.kv_heads <= 1 || t->stride(1) == c.head_dim),
                  op, ": k and v must have contiguous heads (stride(2) == 1, stride(1) == D)");
  }
  const int64_t tokens = k.size(0);
  KERNELS_CHECK(v.size(0) == tokens, op, ": v must have k's number of tokens");
  check_cpu(slot_mapping, op);
  KERNELS_CHECK(slot_mapping.dim() == 1 && slot_mapping.size(0) == tokens &&
                    slot_mapping.scalar_type() == ScalarType::Long && slot_mapping.is_contiguous(),
                op, ": slot_mapping must be a contiguous int64 [T] tensor");
  // Every slot is checked before anything is written.
  const int64_t* slots = slot_mapping.const_data_ptr<int64_t>();
  const int64_t num_slots = c.num_pages * c.page_size;
  for (int64_t t = 0; t < tokens; ++t) {
    KERNELS_CHECK(slots[t] >= -1 && slots[t] < num_slots, op, ": slot_mapping[", t, "] = ",
                  slots[t], " is outside [-1, ", num_slots, ")");
  }
  const int64_t row = c.kv_heads * c.head_dim;
  if (tokens == 0 || row == 0) return;
  const int64_t elem = element_bytes(k_cache);
  const int64_t bytes = row * elem;
  const char* kp = static_cast<const char*>(k.const_data_ptr());
  const char* vp = static_cast<const char*>(v.const_data_ptr());
  char* kc = static_cast<char*>(k_cache.mutable_data_ptr());
  char* vc = static_cast<char*>(v_cache.mutable_data_ptr());
  const int64_t k_stride = k.stride(0) * elem, v_stride = v.stride(0) * elem;
  torch::stable::parallel_for(0, tokens, grain(row), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] < 0) continue;
      std::memcpy(kc + slots[t] * bytes, kp + t * k_stride, bytes);
      std::memcpy(vc + slots[t] * bytes, vp + t * v_stride, bytes);
    }
  });
}

// The op's CPU form is the two ops in turn (its gain is on GPUs: one kernel launch); the Python op
// has checked both sets of arguments before either runs.
void rotary_embedding_and_store_kv_(Tensor positions, Tensor q, Tensor k, Tensor v, Tensor cos_sin_cache,
                                    Tensor k_cache, Tensor v_cache, Tensor slot_mapping, bool is_neox) {
  rotary_embedding_(positions, q, k, cos_sin_cache, is_neox);
  store_kv_cache(k, v, k_cache, v_cache, slot_mapping);
}

// A [B, heads, D] copy with contiguous rows of t (heads contiguous, rows t.stride(0) apart).
Tensor copy_rows(const Tensor& t, const char* op) {
  check_cpu(t, op);
  KERNELS_CHECK(t.dim() == 3 && (t.size(2) <= 1 || t.stride(2) == 1) &&
                    (t.size(1) <= 1 || t.stride(1) == t.size(2)),
                op, ": q and k must be [B, heads, D] with contiguous heads");
  float_dtype(t, op);
  const std::array<int64_t, 3> shape{t.size(0), t.size(1), t.size(2)};
  Tensor out = torch::stable::new_empty(t, shape);
  const int64_t elem = element_bytes(t);
  const int64_t bytes = t.size(1) * t.size(2) * elem;
  const char* src = static_cast<const char*>(t.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  for (int64_t b = 0; b < t.size(0); ++b) std::memcpy(dst + b * bytes, src + b * t.stride(0) * elem, bytes);
  return out;
}

// The op's CPU form: the two ops in turn on copies of q and k (which stay as they are), one call
// from Python instead of the composite's two ops and a dozen torch ops (a CPU decode step pays
// ~15 us of Python a call). A slot that is neither negative nor that of the sequence's token
// seq_lens - 1 stores nothing and makes the sequence's out and lse NaN, as on CUDA.
std::tuple<Tensor, Tensor> paged_decode_attention_with_rope_(Tensor positions, Tensor q, Tensor k, Tensor v,
                                                             Tensor cos_sin_cache, Tensor k_cache, Tensor v_cache,
                                                             Tensor slot_mapping, Tensor page_table, Tensor seq_lens,
                                                             double scale, int64_t window, double soft_cap,
                                                             bool is_neox) {
  constexpr const char* op = "paged_decode_attention_with_rope_";
  const CacheShape c = check_cache(k_cache, v_cache, op);
  check_int32(page_table, 2, "page_table", op);
  check_int32(seq_lens, 1, "seq_lens", op);
  check_cpu(slot_mapping, op);
  const int64_t batch = q.dim() == 3 ? q.size(0) : -1;
  KERNELS_CHECK(slot_mapping.dim() == 1 && slot_mapping.size(0) == batch &&
                    slot_mapping.scalar_type() == ScalarType::Long && slot_mapping.is_contiguous(),
                op, ": slot_mapping must be a contiguous int64 [B] tensor, B = q.size(0)");
  KERNELS_CHECK(page_table.size(0) == batch && seq_lens.size(0) == batch, op,
                ": page_table and seq_lens must have q's batch size");
  Tensor q_rot = copy_rows(q, op), k_rot = copy_rows(k, op);
  const std::array<int64_t, 1> batch_shape{batch};
  Tensor slots = torch::stable::new_empty(slot_mapping, batch_shape);
  const int64_t* given = slot_mapping.const_data_ptr<int64_t>();
  int64_t* kept = slots.mutable_data_ptr<int64_t>();
  const int32_t* pt = page_table.const_data_ptr<int32_t>();
  const int32_t* lens = seq_lens.const_data_ptr<int32_t>();
  const int64_t width = page_table.size(1), ps = c.page_size;
  std::vector<int64_t> bad;
  for (int64_t b = 0; b < batch; ++b) {
    kept[b] = -1;
    if (given[b] < 0) continue;
    const int64_t last = int64_t{lens[b]} - 1;
    // A length outside the table is the decode's error (raised below), not a bad slot.
    if (last < 0 || last >= width * ps || given[b] == int64_t{pt[b * width + last / ps]} * ps + last % ps) {
      kept[b] = given[b];
    } else {
      bad.push_back(b);
    }
  }
  rotary_embedding_(positions, q_rot, k_rot, cos_sin_cache, is_neox);
  store_kv_cache(k_rot, v, k_cache, v_cache, slots);
  auto [out, lse] = paged_decode_attention(q_rot, k_cache, v_cache, page_table, seq_lens, scale, window, soft_cap);
  if (!bad.empty()) {
    const int64_t row = out.size(1) * out.size(2), heads = lse.size(1);
    float* lse_p = lse.mutable_data_ptr<float>();
    const ScalarType st = out.scalar_type();
    for (const int64_t b : bad) {
      std::fill_n(lse_p + b * heads, heads, std::nanf(""));
      if (st == ScalarType::Float) {
        std::fill_n(out.mutable_data_ptr<float>() + b * row, row, std::nanf(""));
      } else {  // the quiet NaN of float16 / bfloat16
        const uint16_t nan_bits = st == ScalarType::Half ? 0x7e00 : 0x7fc0;
        std::fill_n(static_cast<uint16_t*>(out.mutable_data_ptr()) + b * row, row, nan_bits);
      }
    }
  }
  return {out, lse};
}

std::tuple<Tensor, Tensor> merge_attention_states(Tensor v_a, Tensor lse_a, Tensor v_b,
                                                  Tensor lse_b) {
  constexpr const char* op = "merge_attention_states";
  check_cpu(v_a, op);
  check_cpu(v_b, op);
  KERNELS_CHECK(v_a.dim() == 3 && v_a.is_contiguous(), op,
                ": v_a must be a contiguous [T, H, D] tensor");
  const DType dtype = float_dtype(v_a, op);
  const int64_t tokens = v_a.size(0), heads = v_a.size(1), head_dim = v_a.size(2);
  KERNELS_CHECK(v_b.dim() == 3 && v_b.is_contiguous() && v_b.scalar_type() == v_a.scalar_type() &&
                    v_b.size(0) == tokens && v_b.size(1) == heads && v_b.size(2) == head_dim,
                op, ": v_b must match v_a in shape and dtype, contiguous");
  for (const Tensor* t : {&lse_a, &lse_b}) {
    check_cpu(*t, op);
    KERNELS_CHECK(t->dim() == 2 && t->size(0) == tokens && t->size(1) == heads &&
                      t->scalar_type() == ScalarType::Float && t->is_contiguous(),
                  op, ": lse_a and lse_b must be contiguous float32 [T, H] tensors");
  }
  const std::array<int64_t, 3> v_shape{tokens, heads, head_dim};
  const std::array<int64_t, 2> lse_shape{tokens, heads};
  Tensor v = torch::stable::new_empty(v_a, v_shape);
  Tensor lse = torch::stable::new_empty(lse_a, lse_shape);
  const int64_t rows = tokens * heads;
  if (rows == 0) return {v, lse};
  const MergeArgs a{v_a.const_data_ptr(),        lse_a.const_data_ptr<float>(),
                    v_b.const_data_ptr(),        lse_b.const_data_ptr<float>(),
                    v.mutable_data_ptr(),        lse.mutable_data_ptr<float>(),
                    head_dim,                    dtype};
  const Kernels& k = active_kernels();
  torch::stable::parallel_for(0, rows, grain(head_dim + 8), [&](int64_t begin, int64_t end) {
    k.merge_attention_states(a, begin, end);
  });
  return {v, lse};
}

// ---- INT4 weight-only GEMM ------------------------------------------------------------------

// The weight-only GEMMs' per-group tensors (scales, zero points, mins): [N, K / group_size].
void check_group_tensor(const Tensor& t, int64_t n, int64_t groups, const char* name, const char* op) {
  check_cpu(t, op);
  KERNELS_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == groups && t.is_contiguous(), op,
                ": ", name, " must be a contiguous [N, K / group_size] = [", n, ", ", groups,
                "] tensor");
}

// The weight-only GEMMs' groups: 32, 64 or 128 consecutive k, dividing K.
void check_group_size(int64_t group_size, int64_t k, const char* op) {
  KERNELS_CHECK(group_size == 32 || group_size == 64 || group_size == 128, op,
                ": group_size must be 32, 64 or 128; got ", group_size);
  KERNELS_CHECK(k % group_size == 0, op, ": K = ", k, " must be a multiple of group_size = ",
                group_size);
}

DType group_float_dtype(const Tensor& t, const char* name, const char* op) {
  const ScalarType st = t.scalar_type();
  KERNELS_CHECK(st == ScalarType::Float || st == ScalarType::Half || st == ScalarType::BFloat16,
                op, ": ", name, " must be float32, float16 or bfloat16, got ", st);
  return st == ScalarType::Float ? DType::Float32
         : st == ScalarType::Half ? DType::Float16
                                  : DType::BFloat16;
}

Tensor w4a16_gemm(Tensor a, Tensor qweight, Tensor scales, std::optional<Tensor> zero_points,
                  std::optional<Tensor> mins, int64_t group_size) {
  constexpr const char* op = "w4a16_gemm";
  check_cpu(a, op);
  KERNELS_CHECK(a.dim() == 2 && a.is_contiguous(), op, ": a must be a contiguous [M, K] tensor");
  const DType dtype = float_dtype(a, op);
  const int64_t m = a.size(0), k = a.size(1);
  check_group_size(group_size, k, op);
  check_cpu(qweight, op);
  KERNELS_CHECK(qweight.dim() == 2 && qweight.scalar_type() == ScalarType::Int &&
                    qweight.is_contiguous() && qweight.size(1) * 8 == k,
                op, ": qweight must be a contiguous int32 [N, K / 8] tensor (K = ", k, ")");
  const int64_t n = qweight.size(0), groups = k / group_size;
  check_group_tensor(scales, n, groups, "scales", op);
  const DType scale_dtype = group_float_dtype(scales, "scales", op);
  KERNELS_CHECK(!(zero_points.has_value() && mins.has_value()), op,
                ": zero_points and mins are exclusive");
  if (zero_points.has_value()) {
    check_group_tensor(*zero_points, n, groups, "zero_points", op);
    KERNELS_CHECK(zero_points->scalar_type() == ScalarType::Byte, op,
                  ": zero_points must be uint8");
  }
  DType min_dtype = DType::Float32;
  if (mins.has_value()) {
    check_group_tensor(*mins, n, groups, "mins", op);
    min_dtype = group_float_dtype(*mins, "mins", op);
  }
  const std::array<int64_t, 2> shape{m, n};
  Tensor out = torch::stable::new_empty(a, shape);
  if (m == 0 || n == 0) return out;

  const auto round_up = [](int64_t x, int64_t to) { return (x + to - 1) / to * to; };
  const int64_t k_padded = round_up(k, kW4A16KAlign);
  const int64_t groups_padded = round_up(groups, kW4A16GroupAlign) + kW4A16GroupAlign;
  std::vector<float> a_packed(m * k_padded), a_group_sums(m * groups_padded);
  const W4A16Args args{a.const_data_ptr(),
                       qweight.const_data_ptr<int32_t>(),
                       scales.const_data_ptr(),
                       zero_points.has_value() ? zero_points->const_data_ptr<uint8_t>() : nullptr,
                       mins.has_value() ? mins->const_data_ptr() : nullptr,
                       out.mutable_data_ptr(),
                       a_packed.data(),
                       a_group_sums.data(),
                       m,
                       n,
                       k,
                       group_size,
                       k_padded,
                       groups_padded,
                       dtype,
                       scale_dtype,
                       min_dtype};
  const Kernels& kern = active_kernels();
  torch::stable::parallel_for(0, m, grain(k_padded), [&](int64_t begin, int64_t end) {
    kern.w4a16_prepare(args, begin, end);
  });
  // A channel costs about M * K multiply-adds and the unpacking of K weights.
  torch::stable::parallel_for(0, n, grain((m + 1) * k), [&](int64_t begin, int64_t end) {
    kern.w4a16_gemm(args, begin, end);
  });
  return out;
}

// ---- INT8 weight-only GEMM ------------------------------------------------------------------

Tensor w8a16_gemm(Tensor a, Tensor qweight, Tensor scales, int64_t group_size) {
  constexpr const char* op = "w8a16_gemm";
  check_cpu(a, op);
  KERNELS_CHECK(a.dim() == 2 && a.is_contiguous(), op, ": a must be a contiguous [M, K] tensor");
  const DType dtype = float_dtype(a, op);
  const int64_t m = a.size(0), k = a.size(1);
  check_group_size(group_size, k, op);
  check_cpu(qweight, op);
  KERNELS_CHECK(qweight.dim() == 2 && qweight.scalar_type() == ScalarType::Char &&
                    qweight.is_contiguous() && qweight.size(1) == k,
                op, ": qweight must be a contiguous int8 [N, K] tensor (K = ", k, ")");
  const int64_t n = qweight.size(0), groups = k / group_size;
  check_group_tensor(scales, n, groups, "scales", op);
  const DType scale_dtype = group_float_dtype(scales, "scales", op);
  const std::array<int64_t, 2> shape{m, n};
  Tensor out = torch::stable::new_empty(a, shape);
  if (m == 0 || n == 0) return out;

  const bool convert = dtype != DType::Float32;
  std::vector<float> converted(convert ? m * k : 0);
  const W8A16Args args{a.const_data_ptr(),
                       qweight.const_data_ptr<int8_t>(),
                       scales.const_data_ptr(),
                       out.mutable_data_ptr(),
                       convert ? converted.data() : nullptr,
                       convert ? converted.data() : a.const_data_ptr<float>(),
                       m,
                       n,
                       k,
                       group_size,
                       dtype,
                       scale_dtype};
  const Kernels& kern = active_kernels();
  if (convert) {
    torch::stable::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
      kern.w8a16_prepare(args, begin, end);
    });
  }
  // A channel costs about M * K multiply-adds and the conversion of K weights.
  torch::stable::parallel_for(0, n, grain((m + 1) * k), [&](int64_t begin, int64_t end) {
    kern.w8a16_gemm(args, begin, end);
  });
  return out;
}

}  // namespace
}  // namespace kernels::cpu

STABLE_TORCH_LIBRARY_IMPL(kernels, CPU, m) {
  m.impl("rms_norm", TORCH_BOX(&kernels::cpu::rms_norm));
  m.impl("fused_add_rms_norm_", TORCH_BOX(&kernels::cpu::fused_add_rms_norm_));
  m.impl("rotary_embedding_", TORCH_BOX(&kernels::cpu::rotary_embedding_));
  m.impl("silu_and_mul", TORCH_BOX(&kernels::cpu::silu_and_mul));
  m.impl("gelu_and_mul", TORCH_BOX(&kernels::cpu::gelu_and_mul));
  m.impl("store_kv_cache", TORCH_BOX(&kernels::cpu::store_kv_cache));
  m.impl("rotary_embedding_and_store_kv_", TORCH_BOX(&kernels::cpu::rotary_embedding_and_store_kv_));
  m.impl("paged_decode_attention", TORCH_BOX(&kernels::cpu::paged_decode_attention));
  m.impl("paged_decode_attention_with_rope_", TORCH_BOX(&kernels::cpu::paged_decode_attention_with_rope_));
  m.impl("paged_prefill_attention", TORCH_BOX(&kernels::cpu::paged_prefill_attention));
  m.impl("merge_attention_states", TORCH_BOX(&kernels::cpu::merge_attention_states));
  m.impl("w4a16_gemm", TORCH_BOX(&kernels::cpu::w4a16_gemm));
  m.impl("w8a16_gemm", TORCH_BOX(&kernels::cpu::w8a16_gemm));
}
