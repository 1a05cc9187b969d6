// The CPU implementations of the kernels:: ops (schemas: csrc/registration.cpp, semantics:
// docs/dev/op-semantics.md). This file checks layouts, allocates outputs and splits the work
// across torch's intra-op threads; the arithmetic lives in the ISA variant active_kernels() picks.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <array>
#include <cstdint>

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

}  // namespace
}  // namespace kernels::cpu

STABLE_TORCH_LIBRARY_IMPL(kernels, CPU, m) {
  m.impl("rms_norm", TORCH_BOX(&kernels::cpu::rms_norm));
  m.impl("fused_add_rms_norm_", TORCH_BOX(&kernels::cpu::fused_add_rms_norm_));
  m.impl("rotary_embedding_", TORCH_BOX(&kernels::cpu::rotary_embedding_));
  m.impl("silu_and_mul", TORCH_BOX(&kernels::cpu::silu_and_mul));
  m.impl("gelu_and_mul", TORCH_BOX(&kernels::cpu::gelu_and_mul));
}
