// w4a16_gemm launcher: picks the tiling by token tiles, the split of K over a cluster and the
// depth of the copy ring, and launches (w4a16_kernel.cuh says how the kernel works).
#include <algorithm>
#include <atomic>

#include "cuda/common/device.h"
#include "cuda/common/kernel_setup.h"
#include "cuda/common/launch.cuh"
#include "cuda/quant/w4a16.h"
#include "cuda/quant/w4a16_kernel.cuh"

namespace kernels::cuda {
namespace {

int log2_of(int pow2) { return 31 - __builtin_clz(static_cast<unsigned>(pow2)); }

// Fills the tiling-dependent parameters of C; returns the deepest ring (up to C::kMaxDepth, no
// deeper than the CTA's stages need) that fits the device's shared memory, and its bytes.
template <typename C>
int plan(w4a16::Params& prm, const DeviceFacts& dev, size_t& smem) {
  const int64_t blocks = ceil_div(prm.n, C::kRows);
  prm.stages = static_cast<int>(ceil_div(prm.k, C::kStageK));
  // Split K over a cluster while the channel blocks fill at most half the SMs and every CTA keeps
  // at least two stages.
  int splits = 1;
  while (dev.major >= 9 && splits < w4a16::kMaxSplits && blocks * splits * 2 <= dev.sms &&
         prm.stages >= splits * 2 * 2)
    splits *= 2;
  prm.splits = splits;
  prm.stages_per_cta = static_cast<int>(ceil_div(prm.stages, splits));
  prm.row_bytes_a = C::kStageK * 2 + w4a16::kRowPadA;
  prm.a_stage_bytes = prm.m * prm.row_bytes_a;
  const int gps = C::kStageK >> prm.group_shift;
  prm.gps_shift = log2_of(gps);
  const auto words = [&](int bytes) { return bytes ? (gps * bytes + 3 + 3) / 4 : 0; };
  prm.s_words = words(prm.scale_bytes);
  prm.x_words = words(prm.extra_bytes);
  prm.s_lane_shift = log2_of(next_pow2(prm.s_words));
  prm.x_lane_shift = log2_of(next_pow2(std::max(prm.x_words, 1)));
  prm.param_raw_bytes = round_up(C::kRows * (prm.s_words + prm.x_words) * 4, 16);
  const size_t part = static_cast<size_t>(C::WK) * prm.m * C::kPartStride * sizeof(float);
  const size_t stage = static_cast<size_t>(C::kWeightBytes) + prm.a_stage_bytes + prm.param_raw_bytes;
  const int depth = std::min({static_cast<int>(static_cast<size_t>(dev.smem) / stage),
                              C::kMaxDepth, prm.stages_per_cta + 1});
  prm.pipeline = depth;
  smem = std::max(part, depth * stage);
  return smem <= static_cast<size_t>(dev.smem) ? depth : 0;
}

template <typename T, typename C>
cudaError_t launch_config(const w4a16::Params& prm, size_t smem, int device, cudaStream_t stream) {
  const auto kernel = w4a16::w4a16_gemm_kernel<T, C>;
  // Raised once per device to the most any launch may ask for, so that no attribute call
  // happens during graph capture.
  static std::atomic<bool> raised[kMaxDevices];
  const cudaError_t e = raise_smem_once(reinterpret_cast<const void*>(kernel), device_facts(device).smem, device, raised);
  if (e != cudaSuccess) return e;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(ceil_div(prm.n, C::kRows) * prm.splits));
  cfg.blockDim = dim3(C::kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute cluster = {};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = static_cast<unsigned>(prm.splits);
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  cfg.attrs = &cluster;
  cfg.numAttrs = prm.splits > 1 ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, prm);
}

// The wide tiling when three stages fit (always on sm_90 and sm_80), else the narrow one (two
// stages fit in 99 KB: sm_86 / sm_89 / sm_120 with fp32 scales and mins at group 32, M 32).
template <typename T, typename Wide, typename Narrow>
cudaError_t launch_either(w4a16::Params prm, int device, cudaStream_t stream) {
  const DeviceFacts dev = device_facts(device);
  size_t smem = 0;
  if (plan<Wide>(prm, dev, smem) >= std::min(3, prm.stages_per_cta + 1))
    return launch_config<T, Wide>(prm, smem, device, stream);
  if (plan<Narrow>(prm, dev, smem) >= std::min(2, prm.stages_per_cta + 1))
    return launch_config<T, Narrow>(prm, smem, device, stream);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_typed(const w4a16::Params& prm, int device, cudaStream_t stream) {
  using w4a16::Config;
  // From the H100 runs (benchmarks/NOTES.md): for M <= 4, CTAs of 32 channels and 8 warps with a
  // ring of 3 stages (two or three CTAs to an SM) beat one CTA of 64 channels and 16 warps with
  // the deepest ring (M 1: 17.7 against 20.0 us at N = K = 8192; M 8: 19.8 against 18.4, so
  // not beyond 4 tokens); for M <= 8, 16 warps of 2 tiles beat 8 warps of 4 and 512-k stages;
  // for M <= 16, 128 channels per CTA timed like 64 with 1024-k stages, and re-read half as much
  // of a and keep three stages at group 32.
  if (prm.m <= 4) return launch_either<T, Config<1, 2, 1, 8, 3>, Config<1, 2, 1, 4, 3>>(prm, device, stream);
  if (prm.m <= 8) return launch_either<T, Config<1, 2, 2, 8>, Config<1, 2, 2, 4>>(prm, device, stream);
  if (prm.m <= 16) return launch_either<T, Config<2, 4, 2, 4>, Config<2, 2, 2, 4>>(prm, device, stream);
  return launch_either<T, Config<4, 2, 2, 4>, Config<4, 2, 2, 2>>(prm, device, stream);
}

int bytes_of(Dtype d) { return d == Dtype::kFloat32 ? 4 : 2; }

}  // namespace

cudaError_t launch_w4a16_gemm(const W4A16Problem& p, int device, cudaStream_t stream) {
  const bool half = p.dtype == Dtype::kFloat16 || p.dtype == Dtype::kBFloat16;
  const bool group_ok = p.group_size == 32 || p.group_size == 64 || p.group_size == 128;
  if (!half || !group_ok || p.m < 1 || p.m > kW4A16MaxM || p.n < 1 || p.k < 32 || p.k % p.group_size != 0 ||
      p.n > (int64_t{1} << 30) || p.k > (int64_t{1} << 24) || !aligned(p.a, 16) || !aligned(p.qweight, 16) ||
      (p.mode != W4A16Mode::kSymmetric && p.extra == nullptr))
    return cudaErrorInvalidValue;

  w4a16::Params prm = {};
  prm.out = p.out;
  prm.a = p.a;
  prm.qweight = p.qweight;
  prm.scales = p.scales;
  prm.extra = p.extra;
  prm.m = static_cast<int>(p.m);
  prm.n = static_cast<int>(p.n);
  prm.k = static_cast<int>(p.k);
  prm.words = prm.k / 8;
  prm.groups = prm.k / p.group_size;
  prm.group_shift = log2_of(p.group_size);
  prm.mode = static_cast<int>(p.mode);
  prm.scale_dtype = p.scale_dtype;
  prm.scale_bytes = bytes_of(p.scale_dtype);
  prm.extra_bytes = p.mode == W4A16Mode::kSymmetric    ? 0
                    : p.mode == W4A16Mode::kZeroPoints ? 1
                                                       : prm.scale_bytes;
  return p.dtype == Dtype::kBFloat16 ? launch_typed<__nv_bfloat16>(prm, device, stream)
                                     : launch_typed<__half>(prm, device, stream);
}

}  // namespace kernels::cuda
