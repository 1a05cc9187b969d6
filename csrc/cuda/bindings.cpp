// The CUDA implementations of the kernels:: ops (schemas in csrc/registration.cpp): argument
// checks of last resort, output allocation, device guard and stream, then the torch-free
// launchers in the .cu files. Compiled by the host compiler: nvcc never parses torch's headers.
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>

#include "common/check.h"
#include "cuda/activation/act_and_mul.h"
#include "cuda/attention/paged_attention.h"
#include "cuda/current_stream.h"
#include "cuda/norm/rms_norm.h"
#include "cuda/quant/fp8_gemm.h"
#include "cuda/quant/quantize_fp8.h"
#include "cuda/quant/w4a16.h"
#include "cuda/rotary/rotary_embedding.h"

namespace kernels::cuda {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
using torch::stable::accelerator::DeviceGuard;

constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();

Dtype dtype_of(const Tensor& t, const char* what) {
  const ScalarType s = t.scalar_type();
  KERNELS_CHECK(s == ScalarType::Float || s == ScalarType::Half || s == ScalarType::BFloat16, what,
                " must be float32, float16 or bfloat16");
  return s == ScalarType::Float  ? Dtype::kFloat32
         : s == ScalarType::Half ? Dtype::kFloat16
                                 : Dtype::kBFloat16;
}

void check_on(const Tensor& t, int32_t device, const char* what) {
  KERNELS_CHECK(t.is_cuda() && t.get_device_index() == device, what, " must be on cuda:", device);
}

void check_launch(cudaError_t status, const char* op) {
  KERNELS_CHECK(status == cudaSuccess, op,
                ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

// Whether ops with an sm_90a kernel beside their sm_80 one may take it: KERNELS_CUDA_ISA=sm80
// keeps them to the sm_80 kernels (so one Hopper GPU tests both), unset or sm90a does not. Read
// at each call, like KERNELS_CPU_ISA.
bool sm90a_kernels_allowed() {
  const char* env = std::getenv("KERNELS_CUDA_ISA");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "sm90a") == 0) return true;
  // A typo must not silently test the wrong kernel.
  KERNELS_CHECK(std::strcmp(env, "sm80") == 0, "KERNELS_CUDA_ISA must be sm80 or sm90a; got '", env, "'");
  return false;
}

// weight [hidden], contiguous, of x's dtype and device.
void check_weight(const Tensor& weight, const Tensor& x, int64_t hidden, const char* op) {
  check_on(weight, x.get_device_index(), "weight");
  KERNELS_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype");
  KERNELS_CHECK(weight.dim() == 1 && weight.size(0) == hidden && weight.is_contiguous(), op,
                ": weight must be contiguous [hidden]");
}

Tensor rms_norm(Tensor x, Tensor weight, double eps) {
  KERNELS_CHECK(x.dim() == 2, "rms_norm: x must be [tokens, hidden]");
  const int64_t tokens = x.size(0);
  const int64_t hidden = x.size(1);
  const int32_t device = x.get_device_index();
  check_on(x, device, "rms_norm: x");
  const Dtype dtype = dtype_of(x, "rms_norm: x");
  check_weight(weight, x, hidden, "rms_norm");
  // A stride of a size-1 dim is meaningless, so one row counts as densely packed.
  const int64_t x_stride = tokens > 1 ? x.stride(0) : hidden;
  KERNELS_CHECK(hidden <= 1 || x.stride(1) == 1, "rms_norm: x's last dim must be contiguous");
  KERNELS_CHECK(x_stride >= hidden, "rms_norm: x's rows must not overlap");
  KERNELS_CHECK(hidden <= kIntMax, "rms_norm: hidden too large");
  Tensor out = torch::stable::new_empty(x, {tokens, hidden});
  if (tokens == 0 || hidden == 0) return out;
  const DeviceGuard guard(device);
  check_launch(
      launch_rms_norm(out.mutable_data_ptr(), x.const_data_ptr(), weight.const_data_ptr(), tokens,
                      hidden, x_stride, static_cast<float>(eps), dtype, current_stream(device)),
      "rms_norm");
  return out;
}

void fused_add_rms_norm_(Tensor x, Tensor residual, Tensor weight, double eps) {
  KERNELS_CHECK(x.dim() == 2, "fused_add_rms_norm_: x must be [tokens, hidden]");
  const int64_t tokens = x.size(0);
  const int64_t hidden = x.size(1);
  const int32_t device = x.get_device_index();
  check_on(x, device, "fused_add_rms_norm_: x");
  check_on(residual, device, "fused_add_rms_norm_: residual");
  const Dtype dtype = dtype_of(x, "fused_add_rms_norm_: x");
  KERNELS_CHECK(residual.scalar_type() == x.scalar_type() && residual.dim() == 2 &&
                    residual.size(0) == tokens && residual.size(1) == hidden,
                "fused_add_rms_norm_: residual must match x's shape and dtype");
  KERNELS_CHECK(x.is_contiguous() && residual.is_contiguous(),
                "fused_add_rms_norm_: x and residual must be contiguous");
  KERNELS_CHECK(hidden <= kIntMax, "fused_add_rms_norm_: hidden too large");
  check_weight(weight, x, hidden, "fused_add_rms_norm_");
  if (tokens == 0 || hidden == 0) return;
  const DeviceGuard guard(device);
  check_launch(launch_fused_add_rms_norm(x.mutable_data_ptr(), residual.mutable_data_ptr(),
                                         weight.const_data_ptr(), tokens, hidden,
                                         static_cast<float>(eps), dtype, current_stream(device)),
               "fused_add_rms_norm_");
}

// q or k: [tokens, heads, head_dim] with heads and dims densely packed; its token stride.
int64_t check_heads(const Tensor& t, int64_t tokens, int64_t head_dim, const char* what) {
  KERNELS_CHECK(t.dim() == 3 && t.size(0) == tokens && t.size(2) == head_dim, what,
                " must be [tokens, heads, head_dim] like q");
  KERNELS_CHECK((head_dim <= 1 || t.stride(2) == 1) && (t.size(1) <= 1 || t.stride(1) == head_dim),
                what, "'s heads and dims must be contiguous");
  const int64_t row = t.size(1) * head_dim;
  const int64_t stride = tokens > 1 ? t.stride(0) : row;
  KERNELS_CHECK(stride >= row && t.size(1) <= kIntMax, what, "'s tokens must not overlap");
  return stride;
}

// What a rotation launch needs, checked.
struct RopeCall {
  int64_t tokens, head_dim, rot_dim, q_stride, k_stride;
  int32_t device;
  Dtype dtype;
  bool cache_float32;
};

RopeCall check_rotary(const Tensor& positions, const Tensor& q, const Tensor& k,
                      const Tensor& cos_sin_cache) {
  KERNELS_CHECK(q.dim() == 3, "rotary_embedding_: q must be [tokens, heads, head_dim]");
  RopeCall c{};
  c.tokens = q.size(0);
  c.head_dim = q.size(2);
  c.device = q.get_device_index();
  check_on(q, c.device, "rotary_embedding_: q");
  check_on(k, c.device, "rotary_embedding_: k");
  check_on(positions, c.device, "rotary_embedding_: positions");
  check_on(cos_sin_cache, c.device, "rotary_embedding_: cos_sin_cache");
  c.dtype = dtype_of(q, "rotary_embedding_: q");
  KERNELS_CHECK(k.scalar_type() == q.scalar_type(), "rotary_embedding_: k must have q's dtype");
  c.q_stride = check_heads(q, c.tokens, c.head_dim, "rotary_embedding_: q");
  c.k_stride = check_heads(k, c.tokens, c.head_dim, "rotary_embedding_: k");
  KERNELS_CHECK(positions.scalar_type() == ScalarType::Long && positions.dim() == 1 &&
                    positions.size(0) == c.tokens,
                "rotary_embedding_: positions must be int64 [tokens]");
  c.cache_float32 = cos_sin_cache.scalar_type() == ScalarType::Float;
  KERNELS_CHECK(c.cache_float32 || cos_sin_cache.scalar_type() == q.scalar_type(),
                "rotary_embedding_: cos_sin_cache must be float32 or q's dtype");
  KERNELS_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.is_contiguous(),
                "rotary_embedding_: cos_sin_cache must be contiguous [max_position, rot_dim]");
  c.rot_dim = cos_sin_cache.size(1);
  KERNELS_CHECK(c.rot_dim > 0 && c.rot_dim % 2 == 0 && c.rot_dim <= c.head_dim && c.head_dim <= kIntMax,
                "rotary_embedding_: rot_dim must be even, positive and at most head_dim");
  return c;
}

cudaError_t launch_rotary(const RopeCall& c, const Tensor& positions, Tensor& q, Tensor& k,
                          const Tensor& cos_sin_cache, bool is_neox, const KvStore* store) {
  return launch_rotary_embedding(
      static_cast<const int64_t*>(positions.const_data_ptr()), positions.stride(0), q.mutable_data_ptr(),
      k.mutable_data_ptr(), cos_sin_cache.const_data_ptr(), c.tokens, static_cast<int>(q.size(1)),
      static_cast<int>(k.size(1)), static_cast<int>(c.head_dim), static_cast<int>(c.rot_dim), c.q_stride,
      c.k_stride, cos_sin_cache.size(0), is_neox, c.dtype, c.cache_float32, store, current_stream(c.device));
}

void rotary_embedding_(Tensor positions, Tensor q, Tensor k, Tensor cos_sin_cache, bool is_neox) {
  const RopeCall c = check_rotary(positions, q, k, cos_sin_cache);
  if (c.tokens == 0) return;
  const DeviceGuard guard(c.device);
  check_launch(launch_rotary(c, positions, q, k, cos_sin_cache, is_neox, nullptr), "rotary_embedding_");
}

// k_cache, v_cache: [num_pages, page_size, kv_heads, head_dim], contiguous, same dtype, 16-byte
// aligned (the kernels read them with 16-byte vectors).
void check_caches(const Tensor& k_cache, const Tensor& v_cache, int32_t device, const char* op) {
  check_on(k_cache, device, "k_cache");
  check_on(v_cache, device, "v_cache");
  KERNELS_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.dim() == 4 &&
                    v_cache.is_contiguous(),
                op, ": k_cache and v_cache must be contiguous [num_pages, page_size, kv_heads, head_dim]");
  for (int d = 0; d < 4; ++d)
    KERNELS_CHECK(k_cache.size(d) == v_cache.size(d), op, ": v_cache must have k_cache's shape");
  KERNELS_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), op,
                ": v_cache must have k_cache's dtype");
  KERNELS_CHECK(k_cache.size(0) * k_cache.size(1) < (int64_t{1} << 40), op, ": cache too large");
}

// What a KV store needs, checked: the token strides of k and v, the row length and the dtype.
struct StoreCall {
  int64_t tokens, row, k_stride, v_stride, num_slots;
  int32_t device;
  Dtype dtype;
};

StoreCall check_store(const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& slot_mapping, const char* op) {
  StoreCall c{};
  c.device = k_cache.get_device_index();
  check_caches(k_cache, v_cache, c.device, op);
  check_on(k, c.device, "store_kv_cache: k");
  check_on(v, c.device, "store_kv_cache: v");
  check_on(slot_mapping, c.device, "store_kv_cache: slot_mapping");
  c.dtype = dtype_of(k_cache, "store_kv_cache: k_cache");
  c.tokens = k.dim() == 3 ? k.size(0) : -1;
  const int64_t kv_heads = k_cache.size(2), head_dim = k_cache.size(3);
  KERNELS_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k_cache.scalar_type(),
                op, ": k and v must have the cache's dtype");
  for (const Tensor* t : {&k, &v})
    KERNELS_CHECK(t->dim() == 3 && t->size(0) == c.tokens && t->size(1) == kv_heads &&
                      t->size(2) == head_dim,
                  op, ": k and v must be [tokens, kv_heads, head_dim] of the cache");
  c.k_stride = check_heads(k, c.tokens, head_dim, "store_kv_cache: k");
  c.v_stride = check_heads(v, c.tokens, head_dim, "store_kv_cache: v");
  KERNELS_CHECK(slot_mapping.scalar_type() == ScalarType::Long && slot_mapping.dim() == 1 &&
                    slot_mapping.size(0) == c.tokens && (c.tokens <= 1 || slot_mapping.stride(0) == 1),
                op, ": slot_mapping must be contiguous int64 [tokens]");
  KERNELS_CHECK(kv_heads * head_dim / 8 <= 65535 * 128, op, ": rows too long");
  c.row = kv_heads * head_dim;
  c.num_slots = k_cache.size(0) * k_cache.size(1);
  return c;
}

void store_kv_cache(Tensor k, Tensor v, Tensor k_cache, Tensor v_cache, Tensor slot_mapping) {
  const char* op = "store_kv_cache";
  const StoreCall c = check_store(k, v, k_cache, v_cache, slot_mapping, op);
  if (c.tokens == 0) return;
  const DeviceGuard guard(c.device);
  check_launch(launch_store_kv_cache(k.const_data_ptr(), v.const_data_ptr(), k_cache.mutable_data_ptr(),
                                     v_cache.mutable_data_ptr(),
                                     static_cast<const int64_t*>(slot_mapping.const_data_ptr()), c.tokens,
                                     c.row, c.k_stride, c.v_stride, c.num_slots, c.dtype,
                                     current_stream(c.device)),
               op);
}

void rotary_embedding_and_store_kv_(Tensor positions, Tensor q, Tensor k, Tensor v, Tensor cos_sin_cache,
                                    Tensor k_cache, Tensor v_cache, Tensor slot_mapping, bool is_neox) {
  const char* op = "rotary_embedding_and_store_kv_";
  const RopeCall r = check_rotary(positions, q, k, cos_sin_cache);
  const StoreCall s = check_store(k, v, k_cache, v_cache, slot_mapping, op);
  KERNELS_CHECK(s.device == r.device, op, ": the caches must be on q's device");
  if (r.tokens == 0) return;
  const DeviceGuard guard(r.device);
  const KvStore store{v.const_data_ptr(),        s.v_stride,
                      k_cache.mutable_data_ptr(), v_cache.mutable_data_ptr(),
                      static_cast<const int64_t*>(slot_mapping.const_data_ptr()), s.num_slots};
  check_launch(launch_rotary(r, positions, q, k, cos_sin_cache, is_neox, &store), op);
}

Tensor act_and_mul(const Tensor& x, Activation act, const char* op) {
  KERNELS_CHECK(x.dim() == 2 && x.size(1) % 2 == 0 && x.is_contiguous(), op,
                ": x must be contiguous [tokens, 2 * d]");
  const int64_t tokens = x.size(0);
  const int64_t d = x.size(1) / 2;
  const int32_t device = x.get_device_index();
  check_on(x, device, op);
  const Dtype dtype = dtype_of(x, op);
  KERNELS_CHECK(d <= kIntMax / 2, op, ": rows too long");
  Tensor out = torch::stable::new_empty(x, {tokens, d});
  if (tokens == 0 || d == 0) return out;
  const DeviceGuard guard(device);
  check_launch(launch_act_and_mul(out.mutable_data_ptr(), x.const_data_ptr(), tokens, d, act, dtype,
                                  current_stream(device)),
               op);
  return out;
}

Tensor silu_and_mul(Tensor x) { return act_and_mul(x, Activation::kSilu, "silu_and_mul"); }

Tensor gelu_and_mul(Tensor x, bool tanh) {
  return act_and_mul(x, tanh ? Activation::kGeluTanh : Activation::kGeluErf, "gelu_and_mul");
}

// Attention tensors: bf16 / fp16 on CUDA (float32 attention is CPU-only).
Dtype attention_dtype(const Tensor& t, const char* op) {
  const ScalarType s = t.scalar_type();
  KERNELS_CHECK(s == ScalarType::Half || s == ScalarType::BFloat16, op,
                ": CUDA supports float16 and bfloat16 (float32 attention runs on the CPU only)");
  return s == ScalarType::Half ? Dtype::kFloat16 : Dtype::kBFloat16;
}

// What decode and prefill check alike: q [rows, heads, head_dim] with heads contiguous, the caches of its
// dtype and head_dim, page_table int32 [batch, max_pages], and the alignment of the 16-byte loads.
struct AttentionShape {
  Dtype dtype;
  int64_t heads, head_dim, page_size, kv_heads, max_pages;
  int64_t q_stride;  // elements between q's tokens (heads contiguous)
};

AttentionShape check_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor& page_table, int64_t batch, const char* op);

// q's token stride as the attention kernels read it: in place (the q slice of a fused qkv) when
// its rows stay 16-byte aligned, which their loads need; otherwise q becomes a contiguous copy.
int64_t kernel_q_stride(Tensor& q, const AttentionShape& a) {
  if (a.q_stride % 8 == 0) return a.q_stride;
  q = torch::stable::contiguous(q);
  return a.heads * a.head_dim;
}

AttentionShape check_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor& page_table, int64_t batch, const char* op) {
  const int32_t device = q.get_device_index();
  check_on(q, device, "q");
  check_caches(k_cache, v_cache, device, op);
  check_on(page_table, device, "page_table");
  KERNELS_CHECK(q.dim() == 3, op, ": q must be [tokens, heads, head_dim]");
  AttentionShape a{attention_dtype(q, op), q.size(1), q.size(2), k_cache.size(1), k_cache.size(2),
                   page_table.size(1), check_heads(q, q.size(0), q.size(2), "q")};
  KERNELS_CHECK(k_cache.scalar_type() == q.scalar_type(), op, ": the caches must have q's dtype");
  KERNELS_CHECK(k_cache.size(3) == a.head_dim && (a.head_dim == 64 || a.head_dim == 128 || a.head_dim == 256),
                op, ": head_dim must be 64, 128 or 256, the same in q and the caches");
  KERNELS_CHECK(a.page_size >= 1 && a.page_size <= 256, op, ": page_size must be in [1, 256]");
  KERNELS_CHECK(a.kv_heads >= 1 && a.heads >= a.kv_heads && a.heads % a.kv_heads == 0 && a.heads <= 65535, op,
                ": num_heads must be a multiple of num_kv_heads");
  KERNELS_CHECK(page_table.scalar_type() == ScalarType::Int && page_table.dim() == 2 &&
                    page_table.size(0) == batch && page_table.is_contiguous(),
                op, ": page_table must be contiguous int32 [batch, max_pages]");
  KERNELS_CHECK(a.max_pages * a.page_size <= kIntMax && batch <= kIntMax, op, ": too many tokens");
  for (const Tensor* t : {&q, &k_cache, &v_cache})
    KERNELS_CHECK(reinterpret_cast<uintptr_t>(t->const_data_ptr()) % 16 == 0, op,
                  ": q, k_cache and v_cache must be 16-byte aligned");
  return a;
}

void check_lengths(const Tensor& t, int64_t size, int32_t device, const char* name, const char* op) {
  check_on(t, device, name);
  KERNELS_CHECK(t.scalar_type() == ScalarType::Int && t.dim() == 1 && t.size(0) == size && t.is_contiguous(),
                op, ": ", name, " must be contiguous int32 [", size, "]");
}

int check_window(int64_t window, const char* op) {
  KERNELS_CHECK(window == -1 || (window >= 1 && window <= kIntMax), op, ": window must be -1 or positive");
  return static_cast<int>(window);
}

// paged_decode_attention, and its form that rotates and stores the new token first (new_token).
std::tuple<Tensor, Tensor> decode(Tensor q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& page_table,
                                  const Tensor& seq_lens, double scale, int64_t window, double soft_cap,
                                  const DecodeNewToken* new_token, const char* op) {
  const int32_t device = q.get_device_index();
  const int64_t batch = q.size(0);
  const AttentionShape a = check_attention(q, k_cache, v_cache, page_table, batch, op);
  check_lengths(seq_lens, batch, device, "seq_lens", op);
  const Dtype dtype = a.dtype;
  const int64_t heads = a.heads, head_dim = a.head_dim, page_size = a.page_size, kv_heads = a.kv_heads;
  const int64_t max_pages = a.max_pages;
  const int window_i = check_window(window, op);
  Tensor out = torch::stable::new_empty(q, {batch, heads, head_dim});
  Tensor lse = torch::stable::new_empty(q, {batch, heads}, ScalarType::Float);
  if (batch == 0) return std::make_tuple(out, lse);
  const DecodeShape shape{batch,
                          static_cast<int>(heads),
                          static_cast<int>(kv_heads),
                          static_cast<int>(head_dim),
                          static_cast<int>(page_size),
                          static_cast<int>(max_pages),
                          k_cache.size(0),
                          kernel_q_stride(q, a)};
  const DeviceGuard guard(device);
  const int splits = max_pages == 0 ? 1 : paged_decode_splits(shape, window_i, new_token != nullptr, device);
  // The split partials come from torch's caching allocator (stream-ordered, graph-capture safe).
  float* part_out = nullptr;
  float* part_lse = nullptr;
  Tensor ws_out = lse, ws_lse = lse;
  if (splits > 1) {
    ws_out = torch::stable::new_empty(q, {batch, splits, heads, head_dim}, ScalarType::Float);
    ws_lse = torch::stable::new_empty(q, {batch, splits, heads}, ScalarType::Float);
    part_out = static_cast<float*>(ws_out.mutable_data_ptr());
    part_lse = static_cast<float*>(ws_lse.mutable_data_ptr());
  }
  check_launch(launch_paged_decode(out.mutable_data_ptr(), static_cast<float*>(lse.mutable_data_ptr()),
                                   part_out, part_lse, q.const_data_ptr(), k_cache.const_data_ptr(),
                                   v_cache.const_data_ptr(),
                                   static_cast<const int32_t*>(page_table.const_data_ptr()),
                                   static_cast<const int32_t*>(seq_lens.const_data_ptr()), shape,
                                   splits, static_cast<float>(scale), window_i,
                                   static_cast<float>(soft_cap), dtype, new_token, current_stream(device)),
               op);
  return std::make_tuple(out, lse);
}

std::tuple<Tensor, Tensor> paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache,
                                                  Tensor page_table, Tensor seq_lens,
                                                  double scale, int64_t window, double soft_cap) {
  return decode(q, k_cache, v_cache, page_table, seq_lens, scale, window, soft_cap, nullptr,
                "paged_decode_attention");
}

// What the one-kernel form takes (else the Python op runs the two ops in turn): head_dim 64 / 128,
// neox rot_dim a multiple of 4 (a dim pair's partner pair is one word), k / v rows 16-byte aligned.
std::tuple<Tensor, Tensor> paged_decode_attention_with_rope_(Tensor positions, Tensor q, Tensor k, Tensor v,
                                                             Tensor cos_sin_cache, Tensor k_cache, Tensor v_cache,
                                                             Tensor slot_mapping, Tensor page_table,
                                                             Tensor seq_lens, double scale, int64_t window,
                                                             double soft_cap, bool is_neox) {
  const char* op = "paged_decode_attention_with_rope_";
  const RopeCall r = check_rotary(positions, q, k, cos_sin_cache);
  const StoreCall s = check_store(k, v, k_cache, v_cache, slot_mapping, op);
  KERNELS_CHECK(s.device == r.device, op, ": the caches must be on q's device");
  KERNELS_CHECK(r.head_dim == 64 || r.head_dim == 128, op, ": the one-kernel form takes head_dim 64 or 128");
  KERNELS_CHECK(!is_neox || r.rot_dim % 4 == 0, op, ": the one-kernel form takes a neox rot_dim that is a multiple of 4");
  KERNELS_CHECK((s.tokens <= 1 || (s.k_stride % 8 == 0 && s.v_stride % 8 == 0)) &&
                    reinterpret_cast<uintptr_t>(k.const_data_ptr()) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(v.const_data_ptr()) % 16 == 0,
                op, ": k and v rows must be 16-byte aligned");
  const DecodeNewToken nt{k.const_data_ptr(),
                          v.const_data_ptr(),
                          s.k_stride,
                          s.v_stride,
                          k_cache.mutable_data_ptr(),
                          v_cache.mutable_data_ptr(),
                          static_cast<const int64_t*>(positions.const_data_ptr()),
                          static_cast<const int64_t*>(slot_mapping.const_data_ptr()),
                          cos_sin_cache.const_data_ptr(),
                          cos_sin_cache.size(0),
                          static_cast<int>(r.rot_dim),
                          r.cache_float32,
                          is_neox};
  return decode(q, k_cache, v_cache, page_table, seq_lens, scale, window, soft_cap, &nt, op);
}

std::tuple<Tensor, Tensor> paged_prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache,
                                                   Tensor page_table, Tensor qo_indptr,
                                                   Tensor kv_lens, double scale, bool causal,
                                                   int64_t window, double soft_cap) {
  const char* op = "paged_prefill_attention";
  const int32_t device = q.get_device_index();
  const int64_t batch = page_table.size(0), total_q = q.size(0);
  const AttentionShape a = check_attention(q, k_cache, v_cache, page_table, batch, op);
  check_lengths(qo_indptr, batch + 1, device, "qo_indptr", op);
  check_lengths(kv_lens, batch, device, "kv_lens", op);
  const int window_i = check_window(window, op);
  KERNELS_CHECK(total_q <= kIntMax, op, ": too many query tokens");
  Tensor out = torch::stable::new_empty(q, {total_q, a.heads, a.head_dim});
  Tensor lse = torch::stable::new_empty(q, {total_q, a.heads}, ScalarType::Float);
  if (total_q == 0 || batch == 0) return std::make_tuple(out, lse);
  const PrefillShape shape{static_cast<int>(total_q),     static_cast<int>(batch),
                           static_cast<int>(a.heads),     static_cast<int>(a.kv_heads),
                           static_cast<int>(a.head_dim),  static_cast<int>(a.page_size),
                           static_cast<int>(a.max_pages), k_cache.size(0),
                           kernel_q_stride(q, a)};
  const DeviceGuard guard(device);
  check_launch(launch_paged_prefill(out.mutable_data_ptr(), static_cast<float*>(lse.mutable_data_ptr()),
                                    q.const_data_ptr(), k_cache.const_data_ptr(), v_cache.const_data_ptr(),
                                    static_cast<const int32_t*>(page_table.const_data_ptr()),
                                    static_cast<const int32_t*>(qo_indptr.const_data_ptr()),
                                    static_cast<const int32_t*>(kv_lens.const_data_ptr()), shape,
                                    static_cast<float>(scale), causal, window_i,
                                    static_cast<float>(soft_cap), a.dtype, sm90a_kernels_allowed(),
                                    current_stream(device)),
               op);
  return std::make_tuple(out, lse);
}

std::tuple<Tensor, Tensor> merge_attention_states(Tensor v_a, Tensor lse_a, Tensor v_b,
                                                  Tensor lse_b) {
  const char* op = "merge_attention_states";
  const int32_t device = v_a.get_device_index();
  for (const Tensor* t : {&v_a, &lse_a, &v_b, &lse_b}) check_on(*t, device, op);
  const Dtype dtype = dtype_of(v_a, op);
  KERNELS_CHECK(v_a.dim() == 3 && v_a.is_contiguous() && v_b.dim() == 3 && v_b.is_contiguous() &&
                    v_b.scalar_type() == v_a.scalar_type(),
                op, ": v_a and v_b must be contiguous [tokens, heads, dim] of one dtype");
  const int64_t tokens = v_a.size(0), heads = v_a.size(1), dim = v_a.size(2);
  KERNELS_CHECK(v_b.size(0) == tokens && v_b.size(1) == heads && v_b.size(2) == dim, op,
                ": v_b must have v_a's shape");
  for (const Tensor* t : {&lse_a, &lse_b})
    KERNELS_CHECK(t->scalar_type() == ScalarType::Float && t->dim() == 2 && t->size(0) == tokens &&
                      t->size(1) == heads && t->is_contiguous(),
                  op, ": lse_a and lse_b must be contiguous float32 [tokens, heads]");
  Tensor v = torch::stable::new_empty(v_a, {tokens, heads, dim});
  Tensor lse = torch::stable::new_empty(lse_a, {tokens, heads});
  if (tokens * heads == 0) return std::make_tuple(v, lse);
  const DeviceGuard guard(device);
  check_launch(launch_merge_attention_states(
                   v.mutable_data_ptr(), static_cast<float*>(lse.mutable_data_ptr()),
                   v_a.const_data_ptr(), static_cast<const float*>(lse_a.const_data_ptr()),
                   v_b.const_data_ptr(), static_cast<const float*>(lse_b.const_data_ptr()),
                   tokens * heads, dim, dtype, current_stream(device)),
               op);
  return std::make_tuple(v, lse);
}

// granularity: 0 per tensor, 1 per token, 2 per 1 x 128 group (python/kernels/native passes it).
std::tuple<Tensor, Tensor> quantize_fp8(Tensor x, int64_t granularity, std::optional<Tensor> scale,
                                        bool column_major_scales) {
  constexpr const char* op = "quantize_fp8";
  KERNELS_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": x must be contiguous [M, K]");
  KERNELS_CHECK(granularity >= 0 && granularity <= 2, op, ": granularity must be 0, 1 or 2");
  const int32_t device = x.get_device_index();
  check_on(x, device, "quantize_fp8: x");
  const Dtype dtype = dtype_of(x, op);
  const int64_t rows = x.size(0), cols = x.size(1);
  const auto kind = static_cast<Fp8Granularity>(granularity);
  const float* static_scale = nullptr;
  if (scale.has_value()) {
    KERNELS_CHECK(kind == Fp8Granularity::kTensor, op, ": a static scale is per-tensor");
    check_on(*scale, device, "quantize_fp8: scale");
    KERNELS_CHECK(scale->scalar_type() == ScalarType::Float && scale->numel() == 1, op,
                  ": scale must be float32 [1]");
    static_scale = static_cast<const float*>(scale->const_data_ptr());
  }
  Tensor q = torch::stable::new_empty(x, {rows, cols}, ScalarType::Float8_e4m3fn);
  const int64_t groups = (cols + 127) / 128;
  Tensor scales = x;
  if (kind == Fp8Granularity::kTensor) {
    scales = torch::stable::new_empty(x, {1}, ScalarType::Float);
  } else if (kind == Fp8Granularity::kToken) {
    scales = torch::stable::new_empty(x, {rows}, ScalarType::Float);
  } else if (column_major_scales) {  // [M, groups] with strides (1, M)
    scales = torch::stable::transpose(
        torch::stable::new_empty(x, {groups, rows}, ScalarType::Float), 0, 1);
  } else {
    scales = torch::stable::new_empty(x, {rows, groups}, ScalarType::Float);
  }
  // The dynamic per-tensor amax is reduced into a word from torch's caching allocator.
  const bool dynamic_tensor = kind == Fp8Granularity::kTensor && !static_scale;
  Tensor scratch = torch::stable::new_empty(x, {dynamic_tensor ? 1 : 0}, ScalarType::Int);
  const DeviceGuard guard(device);
  check_launch(
      launch_quantize_fp8(static_cast<uint8_t*>(q.mutable_data_ptr()),
                          static_cast<float*>(scales.mutable_data_ptr()), x.const_data_ptr(), rows,
                          cols, kind, column_major_scales, static_scale,
                          static_cast<uint32_t*>(scratch.mutable_data_ptr()), dtype,
                          current_stream(device)),
      op);
  return std::make_tuple(q, scales);
}

// The group tensors of w4a16_gemm: [N, K / group_size], contiguous, on a's device.
void check_w4a16_group(const Tensor& t, int64_t n, int64_t groups, int32_t device, const char* name) {
  check_on(t, device, name);
  KERNELS_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == groups && t.is_contiguous(),
                "w4a16_gemm: ", name, " must be a contiguous [N, K / group_size] = [", n, ", ",
                groups, "] tensor");
}

// a float16 / bfloat16 [M <= kW4A16MaxM, K] (float32 and larger M run on another backend); the
// weight as python/kernels/ops/quant.py has checked it, checked again where a mistake would read
// out of bounds.
Tensor w4a16_gemm(Tensor a, Tensor qweight, Tensor scales, std::optional<Tensor> zero_points,
                  std::optional<Tensor> mins, int64_t group_size) {
  constexpr const char* op = "w4a16_gemm";
  const int32_t device = a.get_device_index();
  check_on(a, device, "w4a16_gemm: a");
  check_on(qweight, device, "w4a16_gemm: qweight");
  const ScalarType st = a.scalar_type();
  KERNELS_CHECK(st == ScalarType::Half || st == ScalarType::BFloat16, op,
                ": a must be float16 or bfloat16 on CUDA");
  KERNELS_CHECK(a.dim() == 2 && a.is_contiguous(), op, ": a must be a contiguous [M, K] tensor");
  const int64_t m = a.size(0), k = a.size(1);
  KERNELS_CHECK(m <= kW4A16MaxM, op, ": M must be at most ", kW4A16MaxM, " on CUDA, got ", m);
  KERNELS_CHECK(group_size == 32 || group_size == 64 || group_size == 128, op,
                ": group_size must be 32, 64 or 128; got ", group_size);
  KERNELS_CHECK(k > 0 && k % group_size == 0 && k <= (int64_t{1} << 24), op, ": K = ", k,
                " must be a positive multiple of group_size = ", group_size, " up to 2^24");
  KERNELS_CHECK(qweight.dim() == 2 && qweight.scalar_type() == ScalarType::Int &&
                    qweight.is_contiguous() && qweight.size(1) * 8 == k,
                op, ": qweight must be a contiguous int32 [N, K / 8] tensor (K = ", k, ")");
  const int64_t n = qweight.size(0), groups = k / group_size;
  KERNELS_CHECK(n > 0 && n <= (int64_t{1} << 30), op, ": N must be in [1, 2^30]");
  check_w4a16_group(scales, n, groups, device, "scales");
  const Dtype scale_dtype = dtype_of(scales, "w4a16_gemm: scales");
  KERNELS_CHECK(!(zero_points.has_value() && mins.has_value()), op,
                ": zero_points and mins are exclusive");
  W4A16Mode mode = W4A16Mode::kSymmetric;
  const void* extra = nullptr;
  if (zero_points.has_value()) {
    check_w4a16_group(*zero_points, n, groups, device, "zero_points");
    KERNELS_CHECK(zero_points->scalar_type() == ScalarType::Byte, op, ": zero_points must be uint8");
    mode = W4A16Mode::kZeroPoints;
    extra = zero_points->const_data_ptr();
  } else if (mins.has_value()) {
    check_w4a16_group(*mins, n, groups, device, "mins");
    KERNELS_CHECK(mins->scalar_type() == scales.scalar_type(), op, ": mins must have scales' dtype");
    mode = W4A16Mode::kMins;
    extra = mins->const_data_ptr();
  }
  // The kernel reads a and qweight in 16-byte vectors.
  for (const Tensor* t : {&a, &qweight})
    KERNELS_CHECK(reinterpret_cast<uintptr_t>(t->const_data_ptr()) % 16 == 0, op,
                  ": a and qweight must be 16-byte aligned");
  Tensor out = torch::stable::new_empty(a, {m, n});
  if (m == 0) return out;
  const DeviceGuard guard(device);
  const W4A16Problem problem{out.mutable_data_ptr(),
                             a.const_data_ptr(),
                             static_cast<const int32_t*>(qweight.const_data_ptr()),
                             scales.const_data_ptr(),
                             extra,
                             m,
                             n,
                             k,
                             static_cast<int>(group_size),
                             mode,
                             st == ScalarType::Half ? Dtype::kFloat16 : Dtype::kBFloat16,
                             scale_dtype};
  check_launch(launch_w4a16_gemm(problem, device, current_stream(device)), op);
  return out;
}

// blockwise scale_a as the kernels read it: column-major [M, groups] with 16-byte aligned
// columns of whole 16-byte words (TMA reads M rounded up to 4 rows); any other layout
// (row-major, or M not a multiple of 4) is copied into one.
std::pair<Tensor, int64_t> column_major_scales(Tensor scale_a, int64_t m, int64_t groups) {
  const bool usable = m % 4 == 0 && scale_a.stride(0) == 1 && scale_a.stride(1) % 4 == 0 &&
                      scale_a.stride(1) >= m &&
                      reinterpret_cast<uintptr_t>(scale_a.const_data_ptr()) % 16 == 0;
  if (usable) return {scale_a, scale_a.stride(1)};
  const int64_t ld = (m + 3) / 4 * 4;
  Tensor padded = torch::stable::new_empty(scale_a, {groups, ld});
  Tensor columns = torch::stable::narrow(padded, 1, 0, m);
  torch::stable::copy_(columns, torch::stable::transpose(scale_a, 0, 1));
  return {padded, ld};
}

// out_dtype bf16 / fp16 (float32 output runs on another backend); granularity from the scales'
// shapes as in python/kernels/ops/fp8.py, which has checked them.
Tensor fp8_gemm(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, ScalarType out_dtype,
                std::optional<Tensor> bias, bool use_fast_accum) {
  constexpr const char* op = "fp8_gemm";
  const int32_t device = a.get_device_index();
  for (const Tensor* t : {&a, &b, &scale_a, &scale_b}) check_on(*t, device, op);
  KERNELS_CHECK(out_dtype == ScalarType::BFloat16 || out_dtype == ScalarType::Half, op,
                ": out_dtype must be bfloat16 or float16 on CUDA");
  KERNELS_CHECK(a.scalar_type() == ScalarType::Float8_e4m3fn &&
                    b.scalar_type() == ScalarType::Float8_e4m3fn,
                op, ": a and b must be float8_e4m3fn");
  KERNELS_CHECK(a.dim() == 2 && b.dim() == 2 && a.is_contiguous() && b.is_contiguous() &&
                    b.size(1) == a.size(1),
                op, ": a must be contiguous [M, K] and b contiguous [N, K]");
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  // TMA reads rows and writes out's rows at 16-byte aligned addresses.
  KERNELS_CHECK(k % 16 == 0 && n % 16 == 0, op, ": K and N must be multiples of 16");
  KERNELS_CHECK(m <= kIntMax && n <= kIntMax && k <= kIntMax, op, ": sizes must fit in int32");
  for (const Tensor* t : {&a, &b})
    KERNELS_CHECK(reinterpret_cast<uintptr_t>(t->const_data_ptr()) % 16 == 0, op,
                  ": a and b must be 16-byte aligned");
  KERNELS_CHECK(scale_a.scalar_type() == ScalarType::Float &&
                    scale_b.scalar_type() == ScalarType::Float,
                op, ": scale_a and scale_b must be float32");
  Fp8GemmArgs args{};
  args.m = static_cast<int>(m);
  args.n = static_cast<int>(n);
  args.k = static_cast<int>(k);
  args.out_dtype = out_dtype == ScalarType::BFloat16 ? Dtype::kBFloat16 : Dtype::kFloat16;
  args.blockwise = scale_a.dim() == 2;
  const int64_t groups = (k + 127) / 128;
  Tensor scales_a = scale_a;
  if (args.blockwise) {
    KERNELS_CHECK(scale_a.size(0) == m && scale_a.size(1) == groups, op,
                  ": blockwise scale_a must be [M, ceil(K / 128)]");
    KERNELS_CHECK(scale_b.dim() == 2 && scale_b.size(0) == (n + 127) / 128 &&
                      scale_b.size(1) == groups && scale_b.is_contiguous(),
                  op, ": blockwise scale_b must be contiguous [ceil(N / 128), ceil(K / 128)]");
    KERNELS_CHECK(m * groups < kIntMax, op, ": scale_a too large");
    if (m > 0) std::tie(scales_a, args.scale_a_ld) = column_major_scales(scale_a, m, groups);
  } else {
    KERNELS_CHECK(scale_a.dim() == 1 && (scale_a.size(0) == 1 || scale_a.size(0) == m) &&
                      scale_b.dim() == 1 && (scale_b.size(0) == 1 || scale_b.size(0) == n),
                  op, ": scale_a must be [1] or [M], scale_b [1] or [N]");
    args.scale_a_per_row = scale_a.size(0) > 1;
    args.scale_b_per_row = scale_b.size(0) > 1;
    args.fast_accum = use_fast_accum;
  }
  if (bias.has_value()) {
    check_on(*bias, device, "fp8_gemm: bias");
    KERNELS_CHECK(bias->scalar_type() == out_dtype && bias->dim() == 1 && bias->size(0) == n &&
                      bias->is_contiguous() &&
                      reinterpret_cast<uintptr_t>(bias->const_data_ptr()) % 16 == 0,
                  op, ": bias must be contiguous, 16-byte aligned [N] of out_dtype");
    args.bias = bias->const_data_ptr();
  }
  Tensor out = torch::stable::new_empty(a, {m, n}, out_dtype);
  if (m == 0) return out;
  const DeviceGuard guard(device);
  const char* unsupported = fp8_gemm_unsupported_reason(device);
  KERNELS_CHECK(unsupported == nullptr, op, ": ", unsupported);
  args.out = out.mutable_data_ptr();
  args.a = a.const_data_ptr();
  args.b = b.const_data_ptr();
  args.scale_a = static_cast<const float*>(scales_a.const_data_ptr());
  args.scale_b = static_cast<const float*>(scale_b.const_data_ptr());
  // Stream-K's partial tiles live in torch's caching allocator (stream-ordered).
  const size_t workspace_bytes = fp8_gemm_workspace_size(args, device);
  Tensor workspace =
      torch::stable::new_empty(a, {static_cast<int64_t>(workspace_bytes)}, ScalarType::Byte);
  check_launch(launch_fp8_gemm(args, workspace_bytes ? workspace.mutable_data_ptr() : nullptr,
                               device, current_stream(device)),
               op);
  return out;
}

}  // namespace
}  // namespace kernels::cuda

STABLE_TORCH_LIBRARY_IMPL(kernels, CUDA, m) {
  m.impl("rms_norm", TORCH_BOX(&kernels::cuda::rms_norm));
  m.impl("fused_add_rms_norm_", TORCH_BOX(&kernels::cuda::fused_add_rms_norm_));
  m.impl("rotary_embedding_", TORCH_BOX(&kernels::cuda::rotary_embedding_));
  m.impl("silu_and_mul", TORCH_BOX(&kernels::cuda::silu_and_mul));
  m.impl("gelu_and_mul", TORCH_BOX(&kernels::cuda::gelu_and_mul));
  m.impl("store_kv_cache", TORCH_BOX(&kernels::cuda::store_kv_cache));
  m.impl("rotary_embedding_and_store_kv_", TORCH_BOX(&kernels::cuda::rotary_embedding_and_store_kv_));
  m.impl("paged_decode_attention", TORCH_BOX(&kernels::cuda::paged_decode_attention));
  m.impl("paged_decode_attention_with_rope_", TORCH_BOX(&kernels::cuda::paged_decode_attention_with_rope_));
  m.impl("merge_attention_states", TORCH_BOX(&kernels::cuda::merge_attention_states));
  m.impl("paged_prefill_attention", TORCH_BOX(&kernels::cuda::paged_prefill_attention));
  m.impl("quantize_fp8", TORCH_BOX(&kernels::cuda::quantize_fp8));
  m.impl("w4a16_gemm", TORCH_BOX(&kernels::cuda::w4a16_gemm));
  m.impl("fp8_gemm", TORCH_BOX(&kernels::cuda::fp8_gemm));
}
