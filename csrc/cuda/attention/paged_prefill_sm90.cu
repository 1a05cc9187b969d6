// Paged prefill attention on Hopper's warpgroup MMA (sm_90a), head_dim 64 and 128; the launcher
// in paged_prefill.cu takes it where it exists and the mma.sync kernel everywhere else.
//
// One CTA per (query tile of 128 rows, query head), mapped as in paged_prefill.cu (find_query_tile),
// of three warpgroups (FlashAttention-3's shape). The producer (warpgroup 0, few registers) copies
// Q, then K and V tiles of 128 keys into three stages by cp.async (each row finds its own page, so
// any page size works), as 128-byte-swizzled panels of 64 columns that wgmma reads without
// ldmatrix, and signals each stage on an mbarrier. Two consumers own 64 query rows each: S = Q K^T
// from shared memory (Q and K K-major), online softmax in the exp2 domain (a lean instance for
// tiles without masks), then O += P V with P from the S accumulators in registers (V's rows are
// keys: an MN-major operand); each P V runs on the tensor cores while the next tile's softmax
// runs on the ALUs, and frees its stage on a second mbarrier. A consumer skips the tiles its rows
// cannot see (past its queries, or wholly after them under the causal mask).
#include <atomic>
#include <cmath>
#include <type_traits>

#include "cuda/attention/paged_prefill_common.cuh"
#include "cuda/common/async_copy.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/warp_specialize.cuh"
#include "cuda/common/wgmma.cuh"

namespace kernels::cuda::prefill {
namespace {

template <int D>
struct Sm90Tiling {
  static constexpr int kConsumers = 2;                     // warpgroups of 64 query rows
  static constexpr int kThreads = 128 * (1 + kConsumers);  // warpgroup 0 loads
  static constexpr int kBr = 64 * kConsumers;              // query rows per CTA
  static constexpr int kBc = 128;                          // keys per tile
  static constexpr int kChunks = D / 8;                    // 16-byte chunks of a row
  static constexpr int kQBytes = kBr * 2 * D;
  static constexpr int kKVBytes = kBc * 2 * D;  // K (or V) of one stage
  static constexpr int kStages = 3;
  static constexpr int kSmemBytes = 1024 + kQBytes + kStages * 2 * kKVBytes;  // 1024: alignment
  // Registers per thread after the split (128 * 40 + 256 * 232 <= 65536).
  static constexpr int kProducerRegs = 40, kConsumerRegs = 232;
};

// Byte offset of 16-byte chunk c of row r in a tile of kRows rows kept as 64-column panels.
template <int kRows>
__device__ __forceinline__ int tile_offset(int r, int c) {
  return (c / 8) * (kRows * 128) + sw128_offset(r, c % 8);
}

template <typename T, int D>
__global__ void __launch_bounds__(Sm90Tiling<D>::kThreads, 1)
    paged_prefill_sm90_kernel(const PrefillParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tl = Sm90Tiling<D>;
  constexpr int kBr = Tl::kBr, kBc = Tl::kBc, kStages = Tl::kStages, kThreads = Tl::kThreads;
  constexpr int kLpt = Tl::kChunks;
  __shared__ int work[2];
  // full[s]: stage s holds its tile (the producer's 128 threads arrive); empty[s]: the
  // consumers' 256 threads are done with it.
  __shared__ uint64_t full[kStages], empty[kStages];
  QueryTile w;
  if (!find_query_tile<T, D, kBr, kBc, kThreads>(p, work, w)) return;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], 128);
      mbarrier_init(&empty[s], 128 * Tl::kConsumers);
    }
  }
  __syncthreads();

  char* smem = dynamic_smem();
  smem += (1024 - (smem_addr(smem) & 1023)) & 1023;  // swizzled panels need 1024-byte alignment
  char* qs = smem;
  char* kv_s = smem + Tl::kQBytes;  // stage s: K at s * 2 * kKVBytes, V kKVBytes after it
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wg = __shfl_sync(0xffffffffu, warp / 4, 0);  // warp-uniform: descriptors in uniform registers
  const int n_tiles = (w.kv_hi - w.kv_lo + kBc - 1) / kBc;

  if (wg == 0) {
    // Producer: Q, then each tile into its stage once the consumers have freed it. A thread
    // copies chunk c of kLoads consecutive rows; when kLoads divides the page size they share one
    // page (tiles start at multiples of kBc): one page-table read instead of kLoads. Once its
    // copies have landed, it hands them to the async proxy (wgmma) and arrives on full.
    warpgroup_registers_decrease<Tl::kProducerRegs>();
    constexpr int kRowsPerPass = 128 / kLpt;
    constexpr int kLoads = kBc / kRowsPerPass;
    const int c = tid % kLpt, ps = p.page_size;
    for (int r = tid / kLpt; r < kBr; r += kRowsPerPass) {
      const bool valid = r < w.rows;
      const int2 th = w.token_head(p, r);
      const T* src = static_cast<const T*>(p.q) + (valid ? th.x * p.q_stride + th.y * D + c * 8 : 0);
      cp_async_16(qs + tile_offset<kBr>(r, c), src, valid);
    }
    const T* kc = static_cast<const T*>(p.k_cache);
    const T* vc = static_cast<const T*>(p.v_cache);
    const int64_t token_stride = static_cast<int64_t>(p.num_kv_heads) * D;
    const int kvh = w.first_head(p) / (p.num_heads / p.num_kv_heads);
    const int64_t head_off = static_cast<int64_t>(kvh) * D + c * 8;
    const int row0_load = kLoads * (tid / kLpt);
    const bool page_blocks = ps % kLoads == 0;
    for (int tile = 0; tile < n_tiles; ++tile) {
      const int s = tile % kStages;
      if (tile >= kStages) mbarrier_wait(&empty[s], (tile / kStages - 1) & 1);
      char* ks = kv_s + s * 2 * Tl::kKVBytes;
      const int first = w.kv_lo + tile * kBc + row0_load;
      auto copy_row = [&](int i, int64_t off, bool valid) {
        const int dst = tile_offset<kBc>(row0_load + i, c);
        cp_async_16(ks + dst, kc + (valid ? off : 0), valid);
        cp_async_16(ks + Tl::kKVBytes + dst, vc + (valid ? off : 0), valid);
      };
      if (page_blocks) {
        const int idx = p.page_div.div(first);
        const int page = first < w.kv_hi ? w.pt[idx] : 0;
        const int64_t base = (static_cast<int64_t>(page) * ps + (first - idx * ps)) * token_stride + head_off;
#pragma unroll
        for (int i = 0; i < kLoads; ++i) copy_row(i, base + i * token_stride, first + i < w.kv_hi);
      } else {
#pragma unroll 4
        for (int i = 0; i < kLoads; ++i) {
          const int token = first + i;
          const int idx = p.page_div.div(token);
          const bool valid = token < w.kv_hi;
          copy_row(i, valid ? (static_cast<int64_t>(w.pt[idx]) * ps + (token - idx * ps)) * token_stride + head_off : 0,
                   valid);
        }
      }
      cp_async_commit();
      cp_async_wait<0>();
      fence_async_shared();
      mbarrier_arrive(&full[s]);
    }
    return;
  }

  // Consumers: warpgroup cw owns rows 64 cw .. 64 cw + 63 of the tile.
  warpgroup_registers_increase<Tl::kConsumerRegs>();
  const int cw = wg - 1;
  const int g = lane / 4, t = lane % 4;  // accumulator fragment row / column pair
  // This thread's rows of the tile: row0 and row0 + 8 (fragment halves 0 / 1).
  const int row0 = 64 * cw + 16 * (warp % 4) + g;
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float m[2] = {kNoMax, kNoMax}, l[2] = {0.f, 0.f};
  const bool has_cap = p.cap_log2 > 0.f;
  const float s_scale = has_cap ? 1.f : p.q_scale;  // applied inside the exp2's fma
  // Positions of the warpgroup's first and last rows (the last found again where needed: one
  // register more through the loop spills).
  const int wg_first = w.position(p, 64 * cw);
  auto wg_last = [&] { return w.position(p, 64 * cw + 63); };
  const bool wg_has_rows = 64 * cw < w.rows;
  // Descriptors of stage 0 (a stage or k-step adds its byte offset / 16 to the address field).
  const uint64_t q_desc = sw128_desc(smem_addr(qs) + cw * 64 * 128);  // the warpgroup's rows
  const uint64_t k_desc = sw128_desc(smem_addr(kv_s));
  const uint64_t v_desc = sw128_desc(smem_addr(kv_s) + Tl::kKVBytes, kBc * 128);

  // O += P V of the previous tile (P in pa, its stage in pv_stage, its softmax's correction of
  // the older O in pv_corr) goes to the tensor cores right after this tile's S = Q K^T, and runs
  // while this warpgroup computes the softmax.
  uint32_t pa[kBc / 4];
  int pv_stage = 0;
  float pv_corr[2];
  bool pv_rescale = false;
  auto issue_pv = [&]() {
    if (__any_sync(0xffffffffu, pv_rescale)) {
#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[i] *= pv_corr[(i / 2) % 2];
    }
    fence_registers(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      wgmma_rs<T, D, gmma::Major::MN>(o, pa + 4 * kk, v_desc + pv_stage * 2 * Tl::kKVBytes / 16 + kk * 16 * 128 / 16, true);
    }
    wgmma_commit();
  };
  auto finish_pv = [&]() {  // after the wait that covers it
    fence_registers(o);
    fence_registers(pa);
    mbarrier_arrive(&empty[pv_stage]);
  };

  // The tiles this warpgroup computes: all, or (causal) those up to its last row; the rest it
  // only releases. The first goes alone, the others each with the previous tile's P V.
  const int n_active = !wg_has_rows ? 0
                       : p.causal ? min(n_tiles, (wg_last() - w.kv_lo) / kBc + 1)
                                  : n_tiles;
  auto step = [&](int tile, auto first_tile) {
    constexpr bool kFirst = decltype(first_tile)::value;
    const int stage = tile % kStages;
    mbarrier_wait(&full[stage], (tile / kStages) & 1);
    const int key0 = w.kv_lo + tile * kBc;
    const uint32_t stage16 = stage * 2 * Tl::kKVBytes / 16;

    float s[kBc / 2];
    fence_registers(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int panel = kk / 4, col_bytes = (kk % 4) * 32;
      wgmma_ss<T, kBc, gmma::Major::K>(s, q_desc + (panel * kBr * 128 + col_bytes) / 16,
                                       k_desc + stage16 + (panel * kBc * 128 + col_bytes) / 16, kk > 0);
    }
    wgmma_commit();
    if constexpr (kFirst) {
      wgmma_wait<0>();
    } else {
      issue_pv();
      wgmma_wait<1>();  // S has landed (groups complete in order); P V may still run
    }
    fence_registers(s);

    // Whether any (row, key) pair of the warpgroup's rows is masked in this tile.
    const bool masked = key0 + kBc > w.kv_hi || (p.causal && key0 + kBc - 1 > wg_first) ||
                        (p.window > 0 && key0 <= wg_last() - p.window);
    float corr[2];
    bool rescale = false;
    // s[4j + 2 half + e] is S[row0 + 8 half][key0 + 8j + 2t + e].
    auto softmax = [&](auto general) {
      constexpr bool kGeneral = decltype(general)::value;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int pos = w.position(p, row0 + 8 * half);
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kBc / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float x = s[4 * j + 2 * half + e];
            if constexpr (kGeneral) {
              if (has_cap) x = p.cap_log2 * tanh_fast(x * p.q_scale);
              const int key = key0 + 8 * j + 2 * t + e;
              const bool ok = key < w.kv_hi && (!p.causal || key <= pos) && (p.window <= 0 || key > pos - p.window);
              x = ok ? x : -INFINITY;
              s[4 * j + 2 * half + e] = x;
            }
            mx = fmaxf(mx, x);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[half], mx * s_scale);
        corr[half] = exp2f(m[half] - m_new);
        rescale |= m_new != m[half];
        m[half] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < kBc / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = exp2f(fmaf(s[4 * j + 2 * half + e], s_scale, -m_new));
            s[4 * j + 2 * half + e] = pe;
            sum += pe;
          }
        }
        l[half] = l[half] * corr[half] + sum;
      }
    };
    if (masked || has_cap) {
      softmax(std::true_type{});
    } else {
      softmax(std::false_type{});
    }
    if constexpr (!kFirst) {
      wgmma_wait<0>();
      finish_pv();
    }
    pv_corr[0] = corr[0];
    pv_corr[1] = corr[1];
    pv_rescale = rescale;
    // P's A fragment of keys 16kk.. is the S accumulators of n-tiles 2kk and 2kk + 1.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) pa[4 * kk + r] = pack2<T>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
    }
    pv_stage = stage;
  };
  if (n_active > 0) {
    step(0, std::true_type{});
    for (int tile = 1; tile < n_active; ++tile) step(tile, std::false_type{});
    issue_pv();
    wgmma_wait<0>();
    finish_pv();
  }
  for (int tile = n_active; tile < n_tiles; ++tile) {
    mbarrier_wait(&full[tile % kStages], (tile / kStages) & 1);
    mbarrier_arrive(&empty[tile % kStages]);
  }

  // Normalise and stage the warp's 16 rows in its own rows of the Q buffer (only this warp's
  // wgmmas read them, and they are done), then write 16-byte chunks of whole rows.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = l[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = 1.f / sum;
    const int row = row0 + 8 * half;
    const int2 th = w.token_head(p, row);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<uint32_t*>(qs + tile_offset<kBr>(row, j) + 4 * t) =
          pack2<T>(o[4 * j + 2 * half] * inv, o[4 * j + 2 * half + 1] * inv);
    }
    if (t == 0 && row < w.rows) {
      p.lse[static_cast<int64_t>(th.x) * p.num_heads + th.y] = (m[half] + __log2f(sum)) * kLn2;
    }
  }
  __syncwarp();
  const int warp_row0 = 64 * cw + 16 * (warp % 4);
  for (int u = lane; u < 16 * kLpt; u += 32) {
    const int row = warp_row0 + u / kLpt, ch = u % kLpt;
    if (row < w.rows) {
      const int2 th = w.token_head(p, row);
      T* dst = static_cast<T*>(p.out) + (static_cast<int64_t>(th.x) * p.num_heads + th.y) * D + ch * 8;  // contiguous
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(qs + tile_offset<kBr>(row, ch));
    }
  }
#endif
}

template <typename T, int D>
cudaError_t launch_d(const PrefillParams& p, int device, cudaStream_t stream) {
  using Tl = Sm90Tiling<D>;
  const auto kernel = paged_prefill_sm90_kernel<T, D>;
  // Per device, asked once: 0 not yet, 1 it runs the sm_90a binary, 2 it does not.
  static std::atomic<int> runs[kMaxDevices];
  static std::atomic<bool> raised[kMaxDevices];
  const bool cached = device >= 0 && device < kMaxDevices;
  int r = cached ? runs[device].load(std::memory_order_acquire) : 0;
  if (r == 0) {
    r = runs_sm90a_binary(reinterpret_cast<const void*>(kernel)) ? 1 : 2;
    if (cached) runs[device].store(r, std::memory_order_release);
  }
  if (r == 2) return cudaErrorNoKernelImageForDevice;
  const cudaError_t e = raise_smem_once(reinterpret_cast<const void*>(kernel), Tl::kSmemBytes, device, raised);
  if (e != cudaSuccess) return e;
  kernel<<<prefill_grid(p, Tl::kBr), Tl::kThreads, Tl::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dtype(const PrefillParams& p, int head_dim, int device, cudaStream_t stream) {
  switch (head_dim) {
    case 64: return launch_d<T, 64>(p, device, stream);
    case 128: return launch_d<T, 128>(p, device, stream);
    default: return cudaErrorNoKernelImageForDevice;
  }
}

}  // namespace

cudaError_t launch_paged_prefill_sm90(const PrefillParams& p, int head_dim, bool bf16, int device,
                                      cudaStream_t stream) {
  PrefillParams packed = p;  // a KV head's query heads share its tiles
  packed.pack = FastDiv(static_cast<uint32_t>(p.num_heads / p.num_kv_heads));
  return bf16 ? launch_dtype<__nv_bfloat16>(packed, head_dim, device, stream)
              : launch_dtype<__half>(packed, head_dim, device, stream);
}

}  // namespace kernels::cuda::prefill
