// The consumer loop of fp8_gemm's blockwise kernels: CUTLASS's blockwise-scaled FP8 mainloop
// (its TMA producer, shared storage and parameters kept as they are) with K blocks overlapped.
//
// CUTLASS's loop waits for each 128-deep K block's wgmmas before it scales their partial sums into
// the float32 accumulator, so the tensor cores idle while the warp group does that block's FFMAs.
// Here two partial accumulators alternate: block i + 1's wgmmas are issued into one while block
// i's sums, in the other, are scaled and added. Three register tiles instead of two, which fits
// the 64 x 128 tile of each of the cooperative kernel's two math warp groups.
#pragma once
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

namespace kernels::cuda::fp8 {

template <class Base>
struct OverlappedBlockScaling : Base {
  using typename Base::ElementBlockScale;
  using typename Base::MainloopPipeline;
  using typename Base::Params;
  using typename Base::PipelineState;
  using typename Base::SmemLayoutA;
  using typename Base::SmemLayoutB;
  using typename Base::SmemLayoutSFA;
  using typename Base::SmemLayoutSFB;
  using typename Base::TensorStorage;
  using typename Base::TileShape;
  using typename Base::TiledMma;
  static_assert(Base::ScalePromotionInterval == 4, "one scale per K tile: the tile is as deep as a scale block");

  // accum += partial * scale_a[row] * scale_b[column], each K tile's scales: one of the two is the
  // same for the whole tile, so the products fold to a few registers.
  template <class Accum, class Partial, class ScaleA, class ScaleB>
  CUTLASS_DEVICE static void scale_into(Accum& accum, Partial const& partial, ScaleA const& sfa, ScaleB const& sfb) {
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < cute::size(accum); ++i) accum(i) += partial(i) * (sfa(i) * sfb(i));
  }

  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum,
                          int k_tile_count, int thread_idx, TensorStorage& shared_tensors, Params const&) {
    using namespace cute;
    Tensor sA = make_tensor(make_smem_ptr(shared_tensors.smem_A.data()), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), SmemLayoutB{});
    // The scales as (BLK_M, BLK_N, (BLK_K, PIPE)) views, broadcast along the other operand's mode.
    Tensor sSFA = make_tensor(make_smem_ptr(shared_tensors.smem_SFA.data()),
                              make_layout(make_shape(get<0>(shape(SmemLayoutSFA{})), get<1>(TileShape{}),
                                                     make_shape(get<1>(shape(SmemLayoutSFA{})),
                                                                get<2>(shape(SmemLayoutSFA{})))),
                                          make_stride(get<0>(stride(SmemLayoutSFA{})), _0{},
                                                      make_stride(get<1>(stride(SmemLayoutSFA{})),
                                                                  get<2>(stride(SmemLayoutSFA{}))))));
    Tensor sSFB = make_tensor(make_smem_ptr(shared_tensors.smem_SFB.data()),
                              make_layout(make_shape(get<0>(TileShape{}), get<0>(shape(SmemLayoutSFB{})),
                                                     make_shape(get<1>(shape(SmemLayoutSFB{})),
                                                                get<2>(shape(SmemLayoutSFB{})))),
                                          make_stride(_0{}, get<0>(stride(SmemLayoutSFB{})),
                                                      make_stride(get<1>(stride(SmemLayoutSFB{})),
                                                                  get<2>(stride(SmemLayoutSFB{}))))));

    constexpr int kWarpGroups = size(TiledMma{}) / cutlass::NumThreadsPerWarpGroup;
    Layout warp_group_layout = make_layout(Int<kWarpGroups>{}, Int<cutlass::NumThreadsPerWarpGroup>{});
    const int warp_group = __shfl_sync(0xFFFFFFFF, thread_idx / cutlass::NumThreadsPerWarpGroup, 0);
    TiledMma tiled_mma;
    auto thread_mma = tiled_mma.get_slice(warp_group_layout(warp_group));
    Tensor tCsSFA = tiled_mma.get_slice(thread_idx).partition_C(sSFA);
    Tensor tCsSFB = tiled_mma.get_slice(thread_idx).partition_C(sSFB);
    Tensor tCrA = thread_mma.make_fragment_A(thread_mma.partition_A(sA));
    Tensor tCrB = thread_mma.make_fragment_B(thread_mma.partition_B(sB));

    Tensor partial0 = make_fragment_like(accum);
    Tensor partial1 = make_fragment_like(accum);
    Tensor sfa0 = make_tensor_like<ElementBlockScale>(tCsSFA(_, _, _, _0{}));
    Tensor sfb0 = make_tensor_like<ElementBlockScale>(tCsSFB(_, _, _, _0{}));
    Tensor sfa1 = make_tensor_like<ElementBlockScale>(tCsSFA(_, _, _, _0{}));
    Tensor sfb1 = make_tensor_like<ElementBlockScale>(tCsSFB(_, _, _, _0{}));

    // Wait for the K tile at smem_pipe_read, take its scales, issue its wgmmas into `partial`.
    auto issue = [&](auto& partial, auto& sfa, auto& sfb) {
      auto token = pipeline.consumer_try_wait(smem_pipe_read);
      pipeline.consumer_wait(smem_pipe_read, token);
      const int stage = smem_pipe_read.index();
      copy(tCsSFA(_, _, _, make_coord(_0{}, stage)), sfa);
      copy(tCsSFB(_, _, _, make_coord(_0{}, stage)), sfb);
      tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
      warpgroup_fence_operand(partial);
      warpgroup_arrive();
      CUTLASS_PRAGMA_UNROLL
      for (int k_block = 0; k_block < size<2>(tCrA); ++k_block) {
        cute::gemm(tiled_mma, tCrA(_, _, k_block, stage), tCrB(_, _, k_block, stage), partial);
        tiled_mma.accumulate_ = GMMA::ScaleOut::One;
      }
      warpgroup_commit_batch();
      warpgroup_fence_operand(partial);
      ++smem_pipe_read;
    };
    // The K tile before the one just issued is done: free its stage, scale its sums in.
    PipelineState smem_pipe_release = smem_pipe_read;
    auto retire = [&](auto& partial, auto const& sfa, auto const& sfb) {
      warpgroup_wait<1>();
      warpgroup_fence_operand(partial);
      pipeline.consumer_release(smem_pipe_release);
      ++smem_pipe_release;
      scale_into(accum, partial, sfa, sfb);
    };

    clear(accum);
    warpgroup_fence_operand(accum);
    issue(partial0, sfa0, sfb0);
    // Two K tiles an iteration, so that which partial is which stays known at compile time.
    int left = k_tile_count - 1;
    CUTLASS_PRAGMA_NO_UNROLL
    for (; left >= 2; left -= 2) {
      issue(partial1, sfa1, sfb1);
      retire(partial0, sfa0, sfb0);
      issue(partial0, sfa0, sfb0);
      retire(partial1, sfa1, sfb1);
    }
    if (left == 1) {
      issue(partial1, sfa1, sfb1);
      retire(partial0, sfa0, sfb0);
      // The last tile's stage is released by mma_tail.
      warpgroup_wait<0>();
      warpgroup_fence_operand(partial1);
      scale_into(accum, partial1, sfa1, sfb1);
    } else {
      warpgroup_wait<0>();
      warpgroup_fence_operand(partial0);
      scale_into(accum, partial0, sfa0, sfb0);
    }
    warpgroup_fence_operand(accum);
  }
};

}  // namespace kernels::cuda::fp8
