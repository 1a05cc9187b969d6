// Launcher of the gated activations (plain pointers, no torch): out[T, d] = act(x[:, :d]) * x[:,
// d:] for contiguous x [T, 2d]. Returns the launch status; tokens == 0 launches nothing.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/common/dtype.h"

namespace kernels::cuda {

enum class Activation { kSilu, kGeluErf, kGeluTanh };

cudaError_t launch_act_and_mul(void* out, const void* x, int64_t tokens, int64_t d, Activation act,
                               Dtype dtype, cudaStream_t stream);

}  // namespace kernels::cuda
