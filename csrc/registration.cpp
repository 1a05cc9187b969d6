// The op table of the project: every schema, in one place. Backends register implementations
// against these names in csrc/cpu/bindings.cpp and csrc/cuda/bindings.cpp; the fake (meta)
// implementations live in python/kernels/native/fakes.py. Argument validation with
// user-facing messages happens in python/kernels/ops/; the C++ checks are a last line of defence.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(kernels, m) {
  // norms
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("fused_add_rms_norm_(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  // positional encoding
  m.def(
      "rotary_embedding_(Tensor positions, Tensor(a!) q, Tensor(b!) k, Tensor cos_sin_cache, "
      "bool is_neox) -> ()");
  // activations
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("gelu_and_mul(Tensor x, bool tanh) -> Tensor");
}
