// Paged prefill attention over a ragged batch, flash-attention style on tensor cores (sm_80+).
//
// One CTA per (query tile, query head): 4 warps, each owning 16 x kMT query rows (kMT m16 tiles,
// 128 rows per CTA for head_dim <= 128, 64 for 256). The CTA's query tile sits in shared memory
// (A fragments by ldmatrix every k-step: registers go to the accumulators); K and V tiles of kBc
// tokens stream through three stages with cp.async, each row finding its own page (looked up a
// tile ahead, divided without a division), so any page size works. S = Q K^T and O += P V by mma.sync m16n8k16 (bf16 / fp16 in, float32
// accumulate), online softmax in the exp2 domain; a warp's two m-tiles share every K / V fragment
// it loads, which halves the shared-memory traffic per mma (the limit of this design on Hopper).
// The softmax has two instances, a lean one and one with masks and soft cap for the tiles that
// need them. benchmarks/NOTES.md tells what each choice measured.
//
// Work: the grid is (an upper bound on the query tiles, heads). A CTA maps its index to (sequence,
// tile) by a warp scan over qo_indptr (no host sync: graph-safe), last tile of a sequence first:
// under a causal mask the last tiles attend the most keys, so the heavy CTAs start first and the
// light ones fill the tail. Surplus CTAs exit.
//
// Bad input (qo_indptr decreasing or out of [0, total_q], a kv_len below its query count or beyond
// the page table, a page index outside [0, num_pages) among the pages a CTA would read) is never
// read through: the CTA writes NaN to its rows of out and lse.
#include <atomic>
#include <cmath>
#include <type_traits>

#include "cuda/attention/paged_attention.h"
#include "cuda/attention/paged_prefill_common.cuh"
#include "cuda/common/async_copy.cuh"
#include "cuda/common/mma.cuh"

namespace kernels::cuda {
namespace {

using namespace prefill;

template <int D>
struct PrefillTiling {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMT = D <= 128 ? 2 : 1;  // m16 tiles per warp
  static constexpr int kBr = 16 * kMT * kWarps;  // query rows per CTA
  static constexpr int kBc = D <= 64 ? 64 : 32;  // keys per tile
  static constexpr int kRowBytes = 2 * D;
  static constexpr int kChunks = D / 8;  // 16-byte chunks of a row
  static constexpr int kQBytes = kBr * kRowBytes;
  static constexpr int kKVBytes = kBc * kRowBytes;  // K (or V) of one stage
  static constexpr int kStages = 3;  // two tiles in flight while one is consumed
  static constexpr int kSmemBytes = kQBytes + kStages * 2 * kKVBytes;
};

// Byte offset of 16-byte chunk c of row `row`: within each 128-byte group the chunk index is
// XORed with row % 8, so the 8 rows of an ldmatrix 8x8 matrix hit 8 different bank groups.
template <int D>
__device__ __forceinline__ int swz(int row, int c) {
  return row * (2 * D) + ((c ^ (row & 7)) << 4);
}

template <typename T, int D>
__global__ void __launch_bounds__(PrefillTiling<D>::kThreads, 2)
    paged_prefill_kernel(const PrefillParams p) {
  using Tl = PrefillTiling<D>;
  constexpr int kMT = Tl::kMT, kBr = Tl::kBr, kBc = Tl::kBc, kStages = Tl::kStages, kThreads = Tl::kThreads;
  constexpr int kLpt = Tl::kChunks;
  char* smem = dynamic_smem();
  char* qs = smem;
  char* kv_s = smem + Tl::kQBytes;  // stage s: K at s * 2 * kKVBytes, V kKVBytes after it

  __shared__ int work[2];
  QueryTile w;
  if (!find_query_tile<T, D, kBr, kBc, kThreads>(p, work, w)) return;
  const int h = w.first_head(p);  // pack 1: one query head per CTA
  const int q_begin = w.q_begin, q0 = w.q0, rows = w.rows, prefix = w.prefix;
  const int kv_lo = w.kv_lo, kv_hi = w.kv_hi;
  const int32_t* pt = w.pt;
  const int kvh = h / (p.num_heads / p.num_kv_heads);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t = lane % 4;  // mma fragment row / column pair
  const int ps = p.page_size;

  // Loads. Q: rows of this tile (zero past the sequence's queries). K / V: row r of a tile is
  // token tile_start + r; each thread copies chunk tid % kLpt of rows tid / kLpt + i * kRowsPerPass.
  constexpr int kRowsPerPass = kThreads / kLpt;
  const int c = tid % kLpt;
  {
    const T* qg = static_cast<const T*>(p.q) + static_cast<int64_t>(h) * D + c * 8;
    for (int r = tid / kLpt; r < kBr; r += kRowsPerPass) {
      const bool valid = r < rows;
      const T* src = qg + (valid ? (q_begin + q0 + r) * p.q_stride : 0);
      cp_async_16(qs + swz<D>(r, c), src, valid);
    }
  }
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t token_stride = static_cast<int64_t>(p.num_kv_heads) * D;
  const int n_tiles = (kv_hi - kv_lo + kBc - 1) / kBc;
  // K / V: each thread copies chunk c of rows tid / kLpt + i * kRowsPerPass (a warp's copy
  // instruction reads whole rows). Their pages (-1: past the keys) and offsets in the page are
  // fetched a tile ahead of the copies, so the page-table read never stalls them.
  constexpr int kLoads = kBc / kRowsPerPass;
  const int64_t head_off = static_cast<int64_t>(kvh) * D + c * 8;
  int page[kLoads], in_page[kLoads];
  auto fetch_pages = [&](int tile) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int token = kv_lo + tile * kBc + tid / kLpt + i * kRowsPerPass;
      const int idx = p.page_div.div(token);
      in_page[i] = token - idx * ps;
      page[i] = tile < n_tiles && token < kv_hi ? pt[idx] : -1;
    }
  };
  auto issue = [&](int tile) {
    if (tile < n_tiles) {
      char* ks = kv_s + (tile % kStages) * 2 * Tl::kKVBytes;
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int r = tid / kLpt + i * kRowsPerPass;
        const bool valid = page[i] >= 0;
        const int64_t off = valid ? (static_cast<int64_t>(page[i]) * ps + in_page[i]) * token_stride + head_off : 0;
        cp_async_16(ks + swz<D>(r, c), kc + off, valid);
        cp_async_16(ks + Tl::kKVBytes + swz<D>(r, c), vc + off, valid);
      }
    }
    cp_async_commit();
  };
  for (int i = 0; i < kStages - 1; ++i) {  // the first group also holds Q
    fetch_pages(i);
    issue(i);
  }
  fetch_pages(kStages - 1);

  // The warp's rows: wr0 + 16 mt + g (+ 8). Online softmax state per (m-tile, half).
  const int wr0 = warp * 16 * kMT;
  float o[kMT][D / 8][4];
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    m[mt][0] = m[mt][1] = kNoMax;
    l[mt][0] = l[mt][1] = 0.f;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.f;
  }
  // ldmatrix lanes: lane / 8 picks the 8x8 matrix, lane % 8 its row. Every row below is lane % 8
  // plus a multiple of 8, so chunk 2i + x (+ 8j) of it lies at off[i] + 128 j + 16 rows' bytes:
  // four lane offsets per operand, the rest immediates.
  const int mi = lane / 8, lr = lane % 8;
  constexpr int kRows16 = 16 * Tl::kRowBytes;
  int q_off[4], k_off[4], v_off[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    q_off[i] = swz<D>(wr0 + (mi % 2) * 8 + lr, 2 * i + mi / 2);  // Q quadrants a0..a3
    k_off[i] = swz<D>((mi / 2) * 8 + lr, 2 * i + mi % 2);        // K: tokens +0/+8 x dims +0/+8
    v_off[i] = swz<D>((mi % 2) * 8 + lr, 2 * i + mi / 2);        // V: tokens +0/+8 x dims +0/+8
  }
  const bool has_cap = p.cap_log2 > 0.f;
  const float s_scale = has_cap ? 1.f : p.q_scale;  // applied inside the exp2's fma
  const int pos0 = prefix + q0;                     // position of the tile's row 0

  for (int tile = 0; tile < n_tiles; ++tile) {
    cp_async_wait<kStages - 2>();  // this tile (and Q) landed for this thread ...
    __syncthreads();               // ... and for all; the stage of tile - 1 is free again
    issue(tile + kStages - 1);
    fetch_pages(tile + kStages);
    const char* ks = kv_s + (tile % kStages) * 2 * Tl::kKVBytes;
    const char* vs = ks + Tl::kKVBytes;

    const int key0 = kv_lo + tile * kBc;
    float s[kMT][kBc / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) ldmatrix_x4(qa[mt], qs + q_off[kk % 4] + 128 * (kk / 4) + kRows16 * mt);
#pragma unroll
      for (int np = 0; np < kBc / 16; ++np) {
        uint32_t kb[4];
        ldmatrix_x4(kb, ks + k_off[kk % 4] + 128 * (kk / 4) + kRows16 * np);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_16816<T>(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          mma_16816<T>(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    // Whether any (row, key) pair of this tile is masked: causal diagonal, window edge, or the
    // end of the keys. Uniform over the CTA.
    const bool masked = key0 + kBc > kv_hi || (p.causal && key0 + kBc - 1 > pos0) ||
                        (p.window > 0 && key0 <= pos0 + kBr - 1 - p.window);
    float corr[kMT][2];
    bool rescale = false;
    // Scores -> probabilities in place, with the running max and sum. Two instances: the general
    // one (soft cap, masks) only where a tile needs it; inlined into one body, the compiler would
    // predicate the mask arithmetic into every tile.
    auto softmax = [&](auto general) {
      constexpr bool kGeneral = decltype(general)::value;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int pos = pos0 + wr0 + 16 * mt + g + 8 * half;
          float mx = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < kBc / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              float x = s[mt][nt][2 * half + e];
              if constexpr (kGeneral) {
                if (has_cap) x = p.cap_log2 * tanh_fast(x * p.q_scale);
                const int key = key0 + 8 * nt + 2 * t + e;
                const bool ok = key < kv_hi && (!p.causal || key <= pos) && (p.window <= 0 || key > pos - p.window);
                x = ok ? x : -INFINITY;
                s[mt][nt][2 * half + e] = x;
              }
              mx = fmaxf(mx, x);
            }
          }
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float m_new = fmaxf(m[mt][half], mx * s_scale);
          corr[mt][half] = exp2f(m[mt][half] - m_new);
          rescale |= m_new != m[mt][half];
          m[mt][half] = m_new;
          float sum = 0.f;
#pragma unroll
          for (int nt = 0; nt < kBc / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float pe = exp2f(fmaf(s[mt][nt][2 * half + e], s_scale, -m_new));
              s[mt][nt][2 * half + e] = pe;
              sum += pe;
            }
          }
          l[mt][half] = l[mt][half] * corr[mt][half] + sum;
        }
      }
    };
    if (masked || has_cap) {
      softmax(std::true_type{});
    } else {
      softmax(std::false_type{});
    }
    // Once the running maxima settle (most tiles), no row's max moves and O needs no rescale.
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[mt][nt][e] *= corr[mt][e / 2];
    }

    // O += P V: P's A fragments come straight from the S accumulators of two adjacent n-tiles.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t pa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, vs + v_off[dp % 4] + 128 * (dp / 4) + kRows16 * kk);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_16816<T>(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
          mma_16816<T>(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
}
  cp_async_wait<0>();

  // Normalise and stage the warp's rows in its own rows of the Q buffer (no other warp reads
  // them), then write 16-byte chunks of whole rows.
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = l[mt][half];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = 1.f / sum;
      const int row = wr0 + 16 * mt + g + 8 * half;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        *reinterpret_cast<uint32_t*>(qs + swz<D>(row, nt) + 4 * t) =
            pack2<T>(o[mt][nt][2 * half] * inv, o[mt][nt][2 * half + 1] * inv);
      }
      if (t == 0 && row < rows) {
        p.lse[static_cast<int64_t>(q_begin + q0 + row) * p.num_heads + h] = (m[mt][half] + __log2f(sum)) * kLn2;
      }
    }
  }
  __syncwarp();
  for (int u = lane; u < 16 * kMT * kLpt; u += 32) {
    const int row = wr0 + u / kLpt, ch = u % kLpt;
    if (row < rows) {
      // out is contiguous (q may not be).
      T* dst = static_cast<T*>(p.out) + (q_begin + q0 + row) * (static_cast<int64_t>(p.num_heads) * D) +
               static_cast<int64_t>(h) * D + ch * 8;
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(qs + swz<D>(row, ch));
    }
  }
}

template <typename T, int D>
cudaError_t launch_d(const PrefillParams& p, int device, cudaStream_t stream) {
  using Tl = PrefillTiling<D>;
  const auto kernel = paged_prefill_kernel<T, D>;
  static std::atomic<bool> raised[kMaxDevices];
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
    default: return launch_d<T, 256>(p, device, stream);
  }
}

}  // namespace

cudaError_t launch_paged_prefill(void* out, float* lse, const void* q, const void* k_cache,
                                 const void* v_cache, const int32_t* page_table,
                                 const int32_t* qo_indptr, const int32_t* kv_lens,
                                 const PrefillShape& shape, float scale, bool causal, int window,
                                 float soft_cap, Dtype dtype, bool allow_sm90a, cudaStream_t stream) {
  if (shape.total_q == 0 || shape.batch == 0) return cudaSuccess;
  PrefillParams p;
  p.out = out;
  p.lse = lse;
  p.q = q;
  p.k_cache = k_cache;
  p.v_cache = v_cache;
  p.page_table = page_table;
  p.qo_indptr = qo_indptr;
  p.kv_lens = kv_lens;
  p.num_pages = shape.num_pages;
  p.q_stride = shape.q_stride;
  p.total_q = shape.total_q;
  p.batch = shape.batch;
  p.num_heads = shape.num_heads;
  p.num_kv_heads = shape.num_kv_heads;
  p.page_size = shape.page_size;
  p.page_div = FastDiv(static_cast<uint32_t>(shape.page_size));
  p.max_pages = shape.max_pages;
  p.window = window;
  p.pack = FastDiv(1);
  p.causal = causal;
  p.q_scale = soft_cap > 0.f ? scale / soft_cap : scale * kLog2e;
  p.cap_log2 = soft_cap > 0.f ? soft_cap * kLog2e : 0.f;
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) return cudaGetLastError();
  if (allow_sm90a && shape.head_dim <= 128 && (dtype == Dtype::kBFloat16 || dtype == Dtype::kFloat16)) {
    const cudaError_t sm90 = launch_paged_prefill_sm90(p, shape.head_dim, dtype == Dtype::kBFloat16, device, stream);
    if (sm90 != cudaErrorNoKernelImageForDevice) return sm90;
  }
  if (dtype == Dtype::kBFloat16) return launch_dtype<__nv_bfloat16>(p, shape.head_dim, device, stream);
  if (dtype == Dtype::kFloat16) return launch_dtype<__half>(p, shape.head_dim, device, stream);
  return cudaErrorInvalidValue;  // float32 attention is CPU-only
}

}  // namespace kernels::cuda
