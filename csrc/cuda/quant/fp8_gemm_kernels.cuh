// The CUTLASS 3.x sm_90a kernels of fp8_gemm, as templates; each fp8_gemm_<family>.cu
// instantiates one family. Operands: a e4m3 [M, K] and b e4m3 [N, K], both K-contiguous (a TN
// GEMM: CUTLASS's row-major A and column-major B); out [M, N] row-major.
//
// Four kernels per family, chosen by the problem's size (fp8_gemm_families.h):
// - small M: swap-AB, out^T[N, M] = b a^T written column-major (= out row-major), so that N fills
//   the 128-row wgmma tile instead of a handful of tokens; data-parallel for short K or few
//   tiles, else with a stream-K scheduler that splits K over the SMs when N / 128 tiles cannot
//   fill the chip;
// - larger M: the GEMM as written, warp-specialised TMA kernels, persistent where the tiles fill
//   their waves and stream-K where they do not, or (fast accumulation) by size: stream-K for
//   large M with long K.
// Per-tensor / row-wise scales are applied in the epilogue (an epilogue visitor tree:
// out = acc * scale_a[m] * scale_b[n] + bias[n]); the FP8 sums are promoted into float32 every
// 128 of K, as cuBLAS does by default, unless use_fast_accum asks for one narrow accumulator.
// Blockwise scales are applied in the mainloop per 128-deep K block (CUTLASS's blockwise-scaled
// mainloop with our consumer loop, fp8_blockwise_mainloop.cuh), the epilogue adding the bias.
#pragma once
#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/detail/blockwise_scale_layout.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/gemm/kernel/tile_scheduler.hpp>
#include <cutlass/util/packed_stride.hpp>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "cuda/common/kernel_setup.h"
#include "cuda/quant/fp8_blockwise_mainloop.cuh"
#include "cuda/quant/fp8_gemm_families.h"

namespace kernels::cuda::fp8 {

using namespace cute;
using cutlass::epilogue::fusion::Sm90AccFetch;
using cutlass::epilogue::fusion::Sm90ColBroadcast;
using cutlass::epilogue::fusion::Sm90Compute;
using cutlass::epilogue::fusion::Sm90EVT;
using cutlass::epilogue::fusion::Sm90RowBroadcast;
using E4M3 = cutlass::float_e4m3_t;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// The device code exists only when compiled for sm_90a: the other targets of the arch list get an
// empty kernel, which run_gemm refuses to launch.
template <class Kernel>
struct Sm90aOnly : Kernel {
  template <class... Args>
  CUTLASS_DEVICE void operator()(Args&&... args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    Kernel::operator()(std::forward<Args>(args)...);
#endif
  }
};

// Whether the device picked an sm_90a binary of the kernel (not, say, PTX of another target
// JIT-compiled into the empty kernel above).
template <class Kernel>
bool has_sm90a_binary() {
  static const bool ok = runs_sm90a_binary(reinterpret_cast<const void*>(cutlass::device_kernel<Kernel>));
  return ok;
}

template <class Gemm>
cudaError_t run_gemm(const typename Gemm::Arguments& arguments, void* workspace,
                     cudaStream_t stream) {
  if (!has_sm90a_binary<typename Gemm::GemmKernel>()) return cudaErrorNoKernelImageForDevice;
  Gemm gemm;
  if (gemm.can_implement(arguments) != cutlass::Status::kSuccess) return cudaErrorNotSupported;
  if (gemm.initialize(arguments, workspace, stream) != cutlass::Status::kSuccess)
    return cudaErrorInvalidValue;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaSuccess;
}

// A vector along the GEMM's N (one value per column) or M (per row); the bool stride entry is
// runtime: true reads the vector, false broadcasts its first value (a per-tensor scale).
template <class Tile, class T, class Stride, int Align = 128 / cutlass::sizeof_bits<T>::value>
using RowVector = Sm90RowBroadcast<0, Tile, T, float, Stride, Align>;
template <class Tile, class T, class Stride, int Align = 128 / cutlass::sizeof_bits<T>::value>
using ColVector = Sm90ColBroadcast<0, Tile, T, float, Stride, Align>;
using PerColumn = Stride<_0, bool, int64_t>;
using PerRow = Stride<bool, _0, int64_t>;

// out's bias ([N], out's type; null reads as zeros): along the GEMM's N, or its M when swapped.
template <class Tile, class ElementD, bool kSwapAB>
using BiasVector = std::conditional_t<kSwapAB, ColVector<Tile, ElementD, Stride<_1, _0, int64_t>>,
                                      RowVector<Tile, ElementD, Stride<_0, _1, int64_t>>>;

// Shared by both granularities: the epilogue and mainloop collectives for one tile config.
template <class ElementD, class Tile, class Cluster, class KernelSchedule, class EpilogueSchedule,
          class Fusion, bool kSwapAB, class LayoutA, class LayoutB>
struct Collectives {
  // out row-major; swapped, the GEMM writes out^T, i.e. a column-major [N, M].
  using LayoutD = std::conditional_t<kSwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD, kAlignD,
      ElementD, LayoutD, kAlignD, EpilogueSchedule, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, E4M3, LayoutA, 16, E4M3, LayoutB, 16,
      float, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
};

// The problem seen by the kernel: (rows, cols) = (M, N), or (N, M) swapped; A and B likewise.
template <bool kSwapAB>
struct Problem {
  int rows, cols, k;
  const E4M3* a;
  const E4M3* b;
  explicit Problem(const Fp8GemmArgs& p)
      : rows(kSwapAB ? p.n : p.m),
        cols(kSwapAB ? p.m : p.n),
        k(p.k),
        a(static_cast<const E4M3*>(kSwapAB ? p.b : p.a)),
        b(static_cast<const E4M3*>(kSwapAB ? p.a : p.b)) {}
};

template <class Gemm, bool kSwapAB, class ElementD, class MainloopArgs, class FusionArgs>
typename Gemm::Arguments make_arguments(const Fp8GemmArgs& p, const Problem<kSwapAB>& q,
                                        const MainloopArgs& mainloop, const FusionArgs& fusion,
                                        int device, int sm_count) {
  using StrideD = typename Gemm::GemmKernel::StrideD;
  const StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, make_shape(q.rows, q.cols, 1));
  cutlass::KernelHardwareInfo hw{device, sm_count};
  return {cutlass::gemm::GemmUniversalMode::kGemm,
          {q.rows, q.cols, q.k, 1},
          mainloop,
          {fusion, nullptr, stride_d, static_cast<ElementD*>(p.out), stride_d},
          hw};
}

// Per-tensor and row-wise scales: out = scale_b * (scale_a * acc) + bias, in the epilogue.
template <class ElementD, class Tile, class Cluster, class KernelSchedule, class EpilogueSchedule,
          class Scheduler, bool kSwapAB>
struct RowwiseGemm {
  // Swapped, a's rows are the GEMM's columns: its scale is read one float at a time, since M
  // (tokens) need not be a multiple of the vector width.
  using ScaleA = std::conditional_t<kSwapAB, RowVector<Tile, float, PerColumn, 1>,
                                    ColVector<Tile, float, PerRow>>;
  using ScaleB = std::conditional_t<kSwapAB, ColVector<Tile, float, PerRow>,
                                    RowVector<Tile, float, PerColumn>>;
  using Bias = BiasVector<Tile, ElementD, kSwapAB>;
  using Scaled = Sm90EVT<Sm90Compute<cutlass::multiplies, float, float, kRound>, ScaleA, Sm90AccFetch>;
  using Fusion = Sm90EVT<Sm90Compute<cutlass::homogeneous_multiply_add, ElementD, float, kRound>,
                         ScaleB, Scaled, Bias>;
  using C = Collectives<ElementD, Tile, Cluster, KernelSchedule, EpilogueSchedule, Fusion, kSwapAB,
                        cutlass::layout::RowMajor, cutlass::layout::ColumnMajor>;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, typename C::Mainloop,
                                                      typename C::Epilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Sm90aOnly<Kernel>>;

  static typename Gemm::Arguments arguments(const Fp8GemmArgs& p, int device, int sm_count) {
    const Problem<kSwapAB> q(p);
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    typename Gemm::GemmKernel::MainloopArguments mainloop{
        q.a, cutlass::make_cute_packed_stride(StrideA{}, make_shape(q.rows, q.k, 1)),
        q.b, cutlass::make_cute_packed_stride(StrideB{}, make_shape(q.cols, q.k, 1))};
    const typename ScaleA::Arguments scale_a{p.scale_a, 0.f, scale_stride<ScaleA>(p.scale_a_per_row)};
    const typename ScaleB::Arguments scale_b{p.scale_b, 0.f, scale_stride<ScaleB>(p.scale_b_per_row)};
    const typename Bias::Arguments bias{static_cast<const ElementD*>(p.bias), ElementD(0), {}};
    const typename Fusion::Arguments fusion{scale_b, {scale_a, {}, {}}, bias, {}};
    return make_arguments<Gemm, kSwapAB, ElementD>(p, q, mainloop, fusion, device, sm_count);
  }

  template <class Vector>
  static typename Vector::StrideMNL scale_stride(bool per_row) {
    typename Vector::StrideMNL s{};
    if constexpr (std::is_same_v<typename Vector::StrideMNL, PerRow>) {
      get<0>(s) = per_row;
    } else {
      get<1>(s) = per_row;
    }
    return s;
  }
};

// Blockwise (DeepSeek-V3) scales: a's 1 x 128 groups and b's 128 x 128 blocks multiply each
// 128-deep K block's partial sums in the mainloop (float32); the epilogue adds the bias.
// scale_a is read M-major (column-major [M, K / 128], by TMA), scale_b K-major (row-major).
template <class ElementD, class Tile, class Cluster, class Scheduler, bool kSwapAB>
struct BlockwiseGemm {
  using Major = cute::GMMA::Major;
  using ScaleConfig = std::conditional_t<
      kSwapAB, cutlass::detail::Sm90BlockwiseScaleConfig<128, 1, 128, Major::K, Major::MN>,
      cutlass::detail::Sm90BlockwiseScaleConfig<1, 128, 128, Major::MN, Major::K>>;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
  using Bias = BiasVector<Tile, ElementD, kSwapAB>;
  using Fusion = Sm90EVT<Sm90Compute<cutlass::plus, ElementD, float, kRound>, Sm90AccFetch, Bias>;
  using C = Collectives<ElementD, Tile, Cluster,
                        cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8BlockScaledAccum,
                        cutlass::epilogue::TmaWarpSpecializedCooperative, Fusion, kSwapAB,
                        cute::tuple<cutlass::layout::RowMajor, LayoutSFA>,
                        cute::tuple<cutlass::layout::ColumnMajor, LayoutSFB>>;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>,
                                                      OverlappedBlockScaling<typename C::Mainloop>,
                                                      typename C::Epilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Sm90aOnly<Kernel>>;

  // The token scales, [m, kb] with columns ld floats apart: the M-major layout with that stride.
  // TMA wants whole 16-byte columns, so the layout spans m rounded up to 4 rows (ld >= that);
  // the extra rows only scale accumulator rows past M, which are never stored.
  template <class Layout>
  static Layout token_scales(int m, int kb, int64_t ld) {
    const int rows = (m + 3) / 4 * 4;
    return Layout{make_shape(make_shape(_1{}, rows), make_shape(Int<128>{}, kb), 1),
                  make_stride(make_stride(_0{}, _1{}), make_stride(_0{}, static_cast<int32_t>(ld)),
                              static_cast<int32_t>(ld * kb))};
  }

  static typename Gemm::Arguments arguments(const Fp8GemmArgs& p, int device, int sm_count) {
    const Problem<kSwapAB> q(p);
    const int kb = (p.k + 127) / 128;
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    const auto shape = make_shape(q.rows, q.cols, q.k, 1);
    const float* sfa = kSwapAB ? p.scale_b : p.scale_a;
    const float* sfb = kSwapAB ? p.scale_a : p.scale_b;
    LayoutSFA layout_sfa;
    LayoutSFB layout_sfb;
    if constexpr (kSwapAB) {
      layout_sfa = ScaleConfig::tile_atom_to_shape_SFA(shape);
      layout_sfb = token_scales<LayoutSFB>(p.m, kb, p.scale_a_ld);
    } else {
      layout_sfa = token_scales<LayoutSFA>(p.m, kb, p.scale_a_ld);
      layout_sfb = ScaleConfig::tile_atom_to_shape_SFB(shape);
    }
    typename Gemm::GemmKernel::MainloopArguments mainloop{
        q.a, cutlass::make_cute_packed_stride(StrideA{}, make_shape(q.rows, q.k, 1)),
        q.b, cutlass::make_cute_packed_stride(StrideB{}, make_shape(q.cols, q.k, 1)),
        sfa, layout_sfa, sfb, layout_sfb};
    const typename Bias::Arguments bias{static_cast<const ElementD*>(p.bias), ElementD(0), {}};
    const typename Fusion::Arguments fusion{{}, bias, {}};
    return make_arguments<Gemm, kSwapAB, ElementD>(p, q, mainloop, fusion, device, sm_count);
  }
};

// Forces a stream-K kernel's decomposition of the work (its heuristic, at 8192^3 with 128 x 256
// tiles, ran at 0.84 of cuBLAS's speed; stream-K forced, 0.90).
template <class Base, cutlass::gemm::kernel::detail::DecompositionMode kMode>
struct WithDecomposition : Base {
  static typename Base::Gemm::Arguments arguments(const Fp8GemmArgs& p, int device, int sm_count) {
    typename Base::Gemm::Arguments args = Base::arguments(p, device, sm_count);
    args.scheduler.decomposition_mode = kMode;
    return args;
  }
};

template <class T>
struct TypeTag {
  using type = T;
};

// The rules that pick a family's kernel: holds(p, sm_count) says whether the problem takes the
// first branch of Choose below.
struct SmallM {
  static bool holds(const Fp8GemmArgs& p, int) { return p.m <= kSmallMaxM; }
};
// Long problems (fast accumulation): from kLargeMinM tokens and kLargeMinK deep.
struct LongProblems {
  static bool holds(const Fp8GemmArgs& p, int) { return p.m >= kLargeMinM && p.k >= kLargeMinK; }
};
// Output tiles of a (rows x cols) problem in Tile's (M x N) tiles.
template <class Tile>
int64_t tile_count(int64_t rows, int64_t cols) {
  constexpr int64_t tm = size<0>(Tile{}), tn = size<1>(Tile{});
  return (rows + tm - 1) / tm * ((cols + tn - 1) / tn);
}
// Ragged waves (row-wise, blockwise): the persistent kernel's tiles run in waves of one per SM,
// so a last wave that is mostly empty idles the chip (7168 columns in 192-wide tiles at 512
// tokens are 152 tiles, 1.15 waves of 132): below kMinWaveFillPercent of the waves' slots, the
// stream-K kernel, which shares the last wave's work out in K slices. On full waves the persistent
// kernel wins by ~3% (H200, benchmarks/NOTES.md).
template <class Tile>
struct RaggedWaves {
  static bool holds(const Fp8GemmArgs& p, int sm_count) {
    const int64_t tiles = tile_count<Tile>(p.m, p.n);
    const int64_t slots = (tiles + sm_count - 1) / sm_count * sm_count;
    return tiles * 100 < slots * kMinWaveFillPercent;
  }
};
// Small M, swapped (Tile: channels x tokens): stream-K pays a fix-up through the workspace for
// every tile it splits, which short K cannot repay (at K = 1536 a tile is only 12 K blocks), and
// with at most half the SMs' worth of tiles one whole-K tile per SM beat splitting them (H100,
// 64x7168x18432: 1.25x cuBLAS against 1.09); both take the data-parallel kernel.
template <class Tile>
struct UnsplitSwapped {
  static bool holds(const Fp8GemmArgs& p, int sm_count) {
    return p.k <= kMaxUnsplitK || tile_count<Tile>(p.n, p.m) * 2 <= sm_count;
  }
};

// A decision tree of kernels: Rule::holds ? Then : Else, each branch a Choose or a kernel type.
template <class Rule, class Then, class Else>
struct Choose;

template <class G>
struct Pick {  // a kernel type: hand it to f
  template <class F>
  static auto dispatch(const Fp8GemmArgs&, int, F&& f) { return f(TypeTag<G>{}); }
};
template <class Rule, class Then, class Else>
struct Pick<Choose<Rule, Then, Else>> {
  template <class F>
  static auto dispatch(const Fp8GemmArgs& p, int sm_count, F&& f) {
    if (Rule::holds(p, sm_count)) return Pick<Then>::dispatch(p, sm_count, f);
    return Pick<Else>::dispatch(p, sm_count, f);
  }
};

// A family: its decision tree behind the Family entry points.
template <class Tree>
struct FamilyOf {
  static size_t workspace_size(const Fp8GemmArgs& p, int device, int sm_count) {
    return Pick<Tree>::dispatch(p, sm_count, [&](auto tag) -> size_t {
      using G = typename decltype(tag)::type;
      return G::Gemm::get_workspace_size(G::arguments(p, device, sm_count));
    });
  }
  static cudaError_t launch(const Fp8GemmArgs& p, void* workspace, int device, int sm_count,
                            cudaStream_t stream) {
    return Pick<Tree>::dispatch(p, sm_count, [&](auto tag) -> cudaError_t {
      using G = typename decltype(tag)::type;
      return run_gemm<typename G::Gemm>(G::arguments(p, device, sm_count), workspace, stream);
    });
  }
  static constexpr Family family() { return {&workspace_size, &launch}; }
};

// The tile configs (M x N x K tile of the GEMM as the kernel sees it, cluster), picked by H100 and
// H200 runs at 8192^3 and DeepSeek-V3 shapes against cuBLAS (benchmarks/NOTES.md, "FP8 GEMM"):
using StreamK = cutlass::gemm::StreamKScheduler;
using Persistent = cutlass::gemm::PersistentScheduler;
using Cooperative = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using CooperativeEpilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
using SwappedTile = Shape<_128, _64, _128>;  // 128 channels x 64 tokens
using Tile128 = Shape<_128, _128, _128>;
using Tile192 = Shape<_128, _192, _128>;

template <class Base>
using StreamKForced = WithDecomposition<Base, cutlass::gemm::kernel::detail::DecompositionMode::StreamK>;
// Small M, swapped: 128 channels x 64 tokens per tile, each whole (the Unsplit kernel, persistent)
// where UnsplitSwapped says so, else K split over the SMs (Split, stream-K) where the channel tiles
// cannot fill the chip.
template <class Unsplit, class Split>
using SwappedSmallM = Choose<UnsplitSwapped<SwappedTile>, Unsplit, Split>;
template <class ElementD, class Schedule, class Scheduler>
using RowwiseSwapped = RowwiseGemm<ElementD, SwappedTile, Shape<_1, _1, _1>, Schedule, CooperativeEpilogue, Scheduler, true>;
template <class ElementD, class Schedule>
using RowwiseSmallM = SwappedSmallM<RowwiseSwapped<ElementD, Schedule, Persistent>, RowwiseSwapped<ElementD, Schedule, StreamK>>;
// Cooperative, pairs of CTAs along M sharing b's tile by TMA multicast.
template <class ElementD, class Tile, class Schedule, class Scheduler>
using RowwisePaired = RowwiseGemm<ElementD, Tile, Shape<_2, _1, _1>, Schedule, CooperativeEpilogue, Scheduler, false>;

// Promoting the tensor cores' FP8 sums into float32 every 128 of K keeps a second accumulator in
// registers, so tiles with more than 64 x 192 outputs per warp group spill (ping-pong 128 x 128,
// cooperative 128 x 256); ping-pong 64 x 192 or 64 x 128, which fit, ran at 0.5-0.85x cuBLAS (the
// promotion stalls the one warp group that owns the mainloop). So cooperative 128 x 192 past the
// small tier, persistent or stream-K by how well the tiles fill their waves: against 128 x 128
// tiles it gained 10% at K = 1536, where the epilogue is a large share of a tile's time.
template <class ElementD>
using RowwiseFamily = FamilyOf<Choose<
    SmallM, RowwiseSmallM<ElementD, Cooperative>,
    Choose<RaggedWaves<Tile192>, StreamKForced<RowwisePaired<ElementD, Tile192, Cooperative, StreamK>>,
           RowwisePaired<ElementD, Tile192, Cooperative, Persistent>>>>;

// FP8 fast accumulation (use_fast_accum): one narrow accumulator over the whole of K, no second
// register tile, so ping-pong 128 x 128 in the middle tier (one warp group's epilogue hides under
// the other's MMAs) and 128 x 256 stream-K tiles for long problems.
template <class ElementD>
using RowwiseFastFamily = FamilyOf<Choose<
    SmallM, RowwiseSmallM<ElementD, cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum>,
    Choose<LongProblems,
           StreamKForced<RowwisePaired<ElementD, Shape<_128, _256, _128>,
                                       cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum, StreamK>>,
           RowwiseGemm<ElementD, Tile128, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum,
                       cutlass::epilogue::TmaWarpSpecialized, Persistent, false>>>>;

// Blockwise: 128 x 256 tiles fail the collective's static assertions (CUTLASS 4.2), 256 x 128
// tiles spill registers. Small M swapped as above; beyond, 128 x 128 tiles: persistent with pairs
// of CTAs along M sharing b's tile where the tiles fill their waves, else the stream-K scheduler
// (its heuristic decomposition) with pairs along N sharing a's tile (each the better of the two
// cluster shapes for its scheduler, H200).
template <class ElementD>
using BlockwiseFamily = FamilyOf<Choose<
    SmallM,
    SwappedSmallM<BlockwiseGemm<ElementD, SwappedTile, Shape<_1, _1, _1>, Persistent, true>,
                  BlockwiseGemm<ElementD, SwappedTile, Shape<_1, _1, _1>, StreamK, true>>,
    Choose<RaggedWaves<Tile128>, BlockwiseGemm<ElementD, Tile128, Shape<_1, _2, _1>, StreamK, false>,
           BlockwiseGemm<ElementD, Tile128, Shape<_2, _1, _1>, Persistent, false>>>>;

}  // namespace kernels::cuda::fp8
