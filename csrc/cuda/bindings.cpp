// The CUDA implementations of the kernels:: ops (schemas in csrc/registration.cpp): argument
// checks of last resort, output allocation, device guard and stream, then the torch-free
// launchers in the .cu files. Compiled by the host compiler: nvcc never parses torch's headers.
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <limits>

#include "common/check.h"
#include "cuda/activation/act_and_mul.h"
#include "cuda/current_stream.h"
#include "cuda/norm/rms_norm.h"
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

void rotary_embedding_(Tensor positions, Tensor q, Tensor k, Tensor cos_sin_cache, bool is_neox) {
  KERNELS_CHECK(q.dim() == 3, "rotary_embedding_: q must be [tokens, heads, head_dim]");
  const int64_t tokens = q.size(0);
  const int64_t head_dim = q.size(2);
  const int32_t device = q.get_device_index();
  check_on(q, device, "rotary_embedding_: q");
  check_on(k, device, "rotary_embedding_: k");
  check_on(positions, device, "rotary_embedding_: positions");
  check_on(cos_sin_cache, device, "rotary_embedding_: cos_sin_cache");
  const Dtype dtype = dtype_of(q, "rotary_embedding_: q");
  KERNELS_CHECK(k.scalar_type() == q.scalar_type(), "rotary_embedding_: k must have q's dtype");
  const int64_t q_stride = check_heads(q, tokens, head_dim, "rotary_embedding_: q");
  const int64_t k_stride = check_heads(k, tokens, head_dim, "rotary_embedding_: k");
  KERNELS_CHECK(positions.scalar_type() == ScalarType::Long && positions.dim() == 1 &&
                    positions.size(0) == tokens,
                "rotary_embedding_: positions must be int64 [tokens]");
  const bool cache_float32 = cos_sin_cache.scalar_type() == ScalarType::Float;
  KERNELS_CHECK(cache_float32 || cos_sin_cache.scalar_type() == q.scalar_type(),
                "rotary_embedding_: cos_sin_cache must be float32 or q's dtype");
  KERNELS_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.is_contiguous(),
                "rotary_embedding_: cos_sin_cache must be contiguous [max_position, rot_dim]");
  const int64_t rot_dim = cos_sin_cache.size(1);
  KERNELS_CHECK(rot_dim > 0 && rot_dim % 2 == 0 && rot_dim <= head_dim && head_dim <= kIntMax,
                "rotary_embedding_: rot_dim must be even, positive and at most head_dim");
  if (tokens == 0) return;
  const DeviceGuard guard(device);
  check_launch(launch_rotary_embedding(
                   static_cast<const int64_t*>(positions.const_data_ptr()), positions.stride(0),
                   q.mutable_data_ptr(), k.mutable_data_ptr(), cos_sin_cache.const_data_ptr(),
                   tokens, static_cast<int>(q.size(1)), static_cast<int>(k.size(1)),
                   static_cast<int>(head_dim), static_cast<int>(rot_dim), q_stride, k_stride,
                   cos_sin_cache.size(0), is_neox, dtype, cache_float32, current_stream(device)),
               "rotary_embedding_");
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

}  // namespace
}  // namespace kernels::cuda

STABLE_TORCH_LIBRARY_IMPL(kernels, CUDA, m) {
  m.impl("rms_norm", TORCH_BOX(&kernels::cuda::rms_norm));
  m.impl("fused_add_rms_norm_", TORCH_BOX(&kernels::cuda::fused_add_rms_norm_));
  m.impl("rotary_embedding_", TORCH_BOX(&kernels::cuda::rotary_embedding_));
  m.impl("silu_and_mul", TORCH_BOX(&kernels::cuda::silu_and_mul));
  m.impl("gelu_and_mul", TORCH_BOX(&kernels::cuda::gelu_and_mul));
}
