// w4a16_gemm launcher: picks the token tiles, the split of K over a cluster, the staged pieces of
// a, and launches (w4a16_kernel.cuh says how the kernel works).
#include <algorithm>
#include <atomic>

#include "cuda/common/launch.cuh"
#include "cuda/quant/w4a16.h"
#include "cuda/quant/w4a16_kernel.cuh"

namespace kernels::cuda {
namespace {

using w4a16::kThreads;

// Shared memory for the staged a pieces: two CTAs of up to this much (plus nothing else) fit an
// SM of sm_80 / sm_90 (164 / 227 KB), so the weight stream of two CTAs overlaps.
constexpr int kPieceBudget = 80 * 1024;

struct DeviceFacts {
  int sms;
  int major;
};

DeviceFacts device_facts(int device) {
  static std::atomic<int> sms[64], major[64];
  if (device < 0 || device >= 64) return {132, 9};
  int n = sms[device].load(std::memory_order_relaxed);
  int v = major[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0 ||
        cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      (void)cudaGetLastError();
      return {132, 8};  // no clusters when unsure
    }
    major[device].store(v, std::memory_order_relaxed);
    sms[device].store(n, std::memory_order_relaxed);
  }
  return {n, v};
}

template <typename T, int MT, int WN>
cudaError_t launch_tiles(const w4a16::Params& prm, size_t smem, int device, cudaStream_t stream) {
  // Fewer chunks in flight where the accumulators of many token tiles take the registers.
  constexpr int P = MT <= 2 ? 3 : 2;
  const auto kernel = w4a16::w4a16_gemm_kernel<T, MT, P, WN>;
  // Raised once per device to the most any launch asks for (kPieceBudget bounds the pieces and
  // the partial sums), so that no attribute call happens during graph capture.
  static std::atomic<bool> raised[64];
  if (device < 0 || device >= 64 || !raised[device].load(std::memory_order_relaxed)) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kPieceBudget);
    if (e != cudaSuccess) return e;
    if (device >= 0 && device < 64) raised[device].store(true, std::memory_order_relaxed);
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(ceil_div(prm.n, w4a16::Tiling<WN>::kColumns) * prm.splits));
  cfg.blockDim = dim3(kThreads);
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

// Fills the split and piece parameters for WN warps along N, then launches.
template <int WN>
cudaError_t launch_wn(w4a16::Params prm, Dtype dtype, int device, cudaStream_t stream) {
  using Tl = w4a16::Tiling<WN>;
  constexpr int kWarpsK = Tl::kWarpsK;
  // Split K over a cluster while the channel blocks fill less than ~2.5 CTAs per SM and every
  // warp keeps at least 2 chunks.
  const DeviceFacts dev = device_facts(device);
  const int64_t blocks = ceil_div(prm.n, Tl::kColumns);
  int splits = 1;
  while (dev.major >= 9 && splits < w4a16::kMaxSplits && blocks * splits * 2 <= dev.sms * 5 / 2 &&
         prm.chunks >= splits * 2 * 2 * kWarpsK)
    splits *= 2;
  prm.splits = splits;
  prm.chunks_per_cta = round_up(static_cast<int>(ceil_div(prm.chunks, splits)), kWarpsK);
  // The largest piece of a (a multiple of kWarpsK chunks) within the budget.
  const int fit = (kPieceBudget / prm.m - w4a16::kRowPadA) / w4a16::kChunkBytesA;
  prm.piece_chunks = std::max(kWarpsK, std::min(prm.chunks_per_cta, fit / kWarpsK * kWarpsK));
  prm.row_bytes_a = prm.piece_chunks * w4a16::kChunkBytesA + w4a16::kRowPadA;
  const size_t smem =
      std::max<size_t>(static_cast<size_t>(prm.m) * prm.row_bytes_a,
                       static_cast<size_t>(kWarpsK) * prm.m * Tl::kPartStride * sizeof(float));
  if (smem > static_cast<size_t>(kPieceBudget)) return cudaErrorInvalidValue;
  const auto by_tiles = [&](auto zero) {
    using T = decltype(zero);
    if (prm.m <= 8) return launch_tiles<T, 1, WN>(prm, smem, device, stream);
    if (prm.m <= 16) return launch_tiles<T, 2, WN>(prm, smem, device, stream);
    return launch_tiles<T, 4, WN>(prm, smem, device, stream);
  };
  return dtype == Dtype::kBFloat16 ? by_tiles(__nv_bfloat16{}) : by_tiles(__half{});
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
  prm.group_shift = p.group_size == 32 ? 5 : p.group_size == 64 ? 6 : 7;
  prm.mode = static_cast<int>(p.mode);
  prm.scale_dtype = p.scale_dtype;
  prm.scale_bytes = bytes_of(p.scale_dtype);
  prm.extra_bytes = p.mode == W4A16Mode::kSymmetric    ? 0
                    : p.mode == W4A16Mode::kZeroPoints ? 1
                                                       : prm.scale_bytes;
  prm.chunks = static_cast<int>(ceil_div(p.k, w4a16::kChunk));

  // 2 warps along N x 4 along K: 256-byte runs of each row in flight together. Measured on the
  // H100 (benchmarks/NOTES.md) against 4 x 2 (128-byte runs) and 1 x 8 (more re-reads of a).
  return launch_wn<2>(prm, p.dtype, device, stream);
}

}  // namespace kernels::cuda
