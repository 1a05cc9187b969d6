// The element types the CUDA launchers accept. Shared by the torch-free launcher headers and
// csrc/cuda/bindings.cpp, which maps torch's ScalarType onto it.
#pragma once

namespace kernels::cuda {

enum class Dtype { kFloat32, kFloat16, kBFloat16 };

}  // namespace kernels::cuda
