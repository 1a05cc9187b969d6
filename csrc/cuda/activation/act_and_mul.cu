// Gated activations (silu_and_mul, gelu_and_mul): a pure stream, 2 elements read per element
// written. A 2D grid (token, chunk of the row) gives each thread a few 16-byte units of gate and
// up, all loaded before any is used, so a thread keeps 64 bytes in flight.
#include "cuda/activation/act_and_mul.h"
#include "cuda/common/launch.cuh"
#include "cuda/common/vec.cuh"

namespace kernels::cuda {
namespace {

constexpr int kMaxThreads = 256;
// Lets ptxas use up to 64 registers: with fewer it sinks the second unit's loads below the
// first unit's math, halving the bytes in flight.
constexpr int kMinBlocksPerSm = 4;

// kPrecise (float32 tensors): gelu's 1 + erf(g / sqrt 2) as erfc(-g / sqrt 2), the same value
// without the cancellation that costs 1 + erff most of its float32 digits for negative g. erfcf
// takes twice erff's instructions, which float32's 12 bytes per element leave room for; 16-bit
// tensors keep erff, whose error there is far below their resolution.
template <Activation kAct, bool kPrecise>
__device__ __forceinline__ float activate(float g) {
  if constexpr (kAct == Activation::kSilu) {
    return g / (1.f + __expf(-g));
  } else if constexpr (kAct == Activation::kGeluErf) {
    if constexpr (kPrecise) {
      return 0.5f * g * erfcf(-0.70710678118654752f * g);
    } else {
      return 0.5f * g * (1.f + erff(0.70710678118654752f * g));
    }
  } else {
    // 0.5 * (1 + tanh(z)) == 1 / (1 + exp(-2z)): exact, one exp, and no cancellation near
    // tanh(z) = -1 as an approximate tanh would have for negative g.
    const float z = 0.79788456080286536f * (g + 0.044715f * g * g * g);
    return g / (1.f + __expf(-2.f * z));
  }
}

// Units of W elements per thread: two 16-byte units, or eight single elements.
template <int W>
constexpr int kUnitsPerThread = W > 1 ? 2 : 8;

template <typename T, int W, Activation kAct>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocksPerSm)
    act_and_mul_kernel(T* __restrict__ out, const T* __restrict__ x, int d) {
  constexpr bool kWide = W > 1;
  constexpr int kUnits = kUnitsPerThread<W>;
  const int units = d / W;
  const int64_t row = blockIdx.x;
  const T* gate = x + row * 2 * d;
  const T* up = gate + d;
  const int first = blockIdx.y * blockDim.x * kUnits + threadIdx.x;

  // Units past the row's end load the row's last unit (an L1 hit) rather than branch, so the
  // loads issue back to back; they are not stored.
  Vec<T, W> gv[kUnits], uv[kUnits];
#pragma unroll
  for (int k = 0; k < kUnits; ++k) {
    const int unit = min(first + k * static_cast<int>(blockDim.x), units - 1);
    gv[k] = load_vec<W, kWide>(gate + unit * W);
    uv[k] = load_vec<W, kWide>(up + unit * W);
  }
#pragma unroll
  for (int k = 0; k < kUnits; ++k) {
    const int unit = first + k * static_cast<int>(blockDim.x);
    float g[W], u[W], o[W];
    unpack(gv[k], g);
    unpack(uv[k], u);
#pragma unroll
    for (int e = 0; e < W; ++e) o[e] = activate<kAct, sizeof(T) == 4>(g[e]) * u[e];
    if (unit < units) store_vec<W, kWide>(out + row * d + unit * W, pack<T>(o));
  }
}

template <typename T, int W, Activation kAct>
void launch(T* out, const T* x, int64_t tokens, int d, cudaStream_t stream) {
  constexpr int kUnits = kUnitsPerThread<W>;
  const int units = d / W;
  // Fewest chunks of at most kMaxThreads threads, then the threads that split the row evenly.
  const int chunks = static_cast<int>(ceil_div(units, kMaxThreads * kUnits));
  const int threads = round_up(static_cast<int>(ceil_div(units, chunks * kUnits)), 32);
  const dim3 grid(static_cast<unsigned>(tokens), chunks);
  act_and_mul_kernel<T, W, kAct><<<grid, threads, 0, stream>>>(out, x, d);
}

template <typename T, Activation kAct>
void launch_dtype(void* out, const void* x, int64_t tokens, int d, cudaStream_t stream) {
  constexpr int kW = kVec16<T>;
  // 16-byte units need d (so each row and the up half start aligned) and both bases aligned.
  if (d % kW == 0 && aligned(out, 16) && aligned(x, 16)) {
    launch<T, kW, kAct>(static_cast<T*>(out), static_cast<const T*>(x), tokens, d, stream);
  } else {
    launch<T, 1, kAct>(static_cast<T*>(out), static_cast<const T*>(x), tokens, d, stream);
  }
}

}  // namespace

cudaError_t launch_act_and_mul(void* out, const void* x, int64_t tokens, int64_t d, Activation act,
                               Dtype dtype, cudaStream_t stream) {
  if (tokens == 0 || d == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    const int di = static_cast<int>(d);
    switch (act) {
      case Activation::kSilu:
        launch_dtype<T, Activation::kSilu>(out, x, tokens, di, stream);
        break;
      case Activation::kGeluErf:
        launch_dtype<T, Activation::kGeluErf>(out, x, tokens, di, stream);
        break;
      case Activation::kGeluTanh:
        launch_dtype<T, Activation::kGeluTanh>(out, x, tokens, di, stream);
        break;
    }
  });
  return cudaGetLastError();
}

}  // namespace kernels::cuda
