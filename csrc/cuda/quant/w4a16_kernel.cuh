// W4A16 GEMM for a few tokens (M <= 32), reading our packed INT4 layout as it is (no re-layout).
//
// Tensor cores with the operands swapped: the weight is the 16 x 16 A operand of
// mma.m16n8k16 (16 output channels), the tokens are the 8 columns of B, so M <= 8 wastes nothing
// of the weight side. A dot product over k is unchanged by a permutation of k applied to both
// operands, so each thread takes an actual k range that matches the words it loads: in a chunk of
// 128 k, thread c = lane % 4 owns k [32 c, 32 c + 32) of rows g and g + 8 (g = lane / 4), one
// 16-byte load each (four words). Word j of that load (8 nibbles, k 32 c + 8 j + 0..7) feeds the
// two k-steps 2 j and 2 j + 1: nibbles (e, e + 4), e = 0..3, extracted as one 16-bit pair with the
// magic exponent (0x4300: bf16 128 + q; 0x6400: fp16 1024 + q), take the fragment slots
// {2c, 2c+1} and {2c+8, 2c+9} of step 0 (e = 0, 1) and step 1 (e = 2, 3). The tokens' fragments
// take the same actual k for the same slots. Each thread's 32 k lie in one group (groups are 32,
// 64 or 128 k), so one scale per row and chunk.
//
// Dequantisation rounds like the other half-precision kernels: (1024 + q) - (1024 + z) is exact,
// then one rounding for the product with the scale (or the fused q s + m).
//
// Work split: a CTA (8 warps) owns WN x 32 output channels; WN warps side by side take 32
// channels each, 8 / WN warps interleave along k chunk by chunk (neighbouring 64-byte pieces of
// each row in flight together: DRAM pages are read while open) and are summed in shared memory. When 128-channel blocks are too few to fill
// the GPU, a cluster of `splits` CTAs (sm_90) divides K and sums through distributed shared
// memory: no workspace, no second launch. The weight streams through registers (P chunks in
// flight per thread, L1 bypassed); the tokens' slice of `a` is staged in shared memory in pieces,
// permuted so that each fragment read is one conflict-free 16-byte load.
#pragma once
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/async_copy.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/vec.cuh"
#include "cuda/quant/w4a16.h"

namespace kernels::cuda::w4a16 {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTilesN = 2;        // 16-channel tiles per warp
constexpr int kChunk = 128;       // k per chunk
constexpr int kChunkBytesA = kChunk * 2;           // bytes of one token's chunk of a
// A token's row of a staged piece is padded to 64 (mod 128) bytes: the 8 lanes of one phase of a
// 16-byte shared load (tokens g, g + 1; c = 0..3) then cover all 32 banks.
constexpr int kRowPadA = 64;
constexpr int kMaxSplits = 8;  // portable cluster size

// WN warps side by side along N (32 channels each), kWarps / WN interleaved along K.
template <int WN>
struct Tiling {
  static constexpr int kWarpsN = WN;
  static constexpr int kWarpsK = kWarps / WN;
  static constexpr int kColumns = WN * kTilesN * 16;  // output channels per CTA
  static constexpr int kPartStride = kColumns + 4;   // floats per token of a warp's sums (no conflicts)
};

struct Params {
  void* out;
  const void* a;
  const int32_t* qweight;
  const void* scales;
  const void* extra;  // zero points or mins
  int m, n, k;
  int words;        // k / 8: int32 words per weight row
  int groups;       // k / group_size
  int group_shift;  // log2(group_size)
  int mode;         // W4A16Mode
  int scale_bytes, extra_bytes;
  Dtype scale_dtype;
  int chunks;          // ceil(k / kChunk)
  int chunks_per_cta;  // per split, a multiple of kWarpsK
  int piece_chunks;    // chunks of a staged at a time, a multiple of kWarpsK
  int row_bytes_a;     // piece_chunks * kChunkBytesA + kRowPadA
  int splits;          // CTAs of a cluster along K (1, 2, 4, 8)
};

// The 16-bit type's constants: the magic exponent that turns a nibble q into (magic + q), and
// the pair vector type.
template <typename T>
struct PairTraits;

template <>
struct PairTraits<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u;  // 128 in both halves
  static constexpr float kMagicValue = 128.f;
  using V = __nv_bfloat162;
  static __device__ __forceinline__ V splat2(float f) { return __float2bfloat162_rn(f); }
};

template <>
struct PairTraits<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;  // 1024 in both halves
  static constexpr float kMagicValue = 1024.f;
  using V = __half2;
  static __device__ __forceinline__ V splat2(float f) { return __float2half2_rn(f); }
};

// Pair arithmetic of the 16-bit type, on raw 32-bit registers.
template <typename T>
struct Pair : PairTraits<T> {
  using V = typename PairTraits<T>::V;
  static __device__ __forceinline__ uint32_t splat(float f) { return bit_cast<uint32_t>(PairTraits<T>::splat2(f)); }
  static __device__ __forceinline__ uint32_t sub(uint32_t x, uint32_t y) {
    return bit_cast<uint32_t>(__hsub2(bit_cast<V>(x), bit_cast<V>(y)));
  }
  static __device__ __forceinline__ uint32_t fma(uint32_t x, uint32_t y, uint32_t z) {
    return bit_cast<uint32_t>(__hfma2(bit_cast<V>(x), bit_cast<V>(y), bit_cast<V>(z)));
  }
};

// Nibbles (e, e + 4) of a word shifted right by 4 e, dequantised as a pair: (q - zb') s + m,
// zb' = magic + zero point (exact), one rounding after.
template <typename T>
__device__ __forceinline__ uint32_t dequant_pair(uint32_t shifted, uint32_t zb, uint32_t s, uint32_t m) {
  return Pair<T>::fma(Pair<T>::sub((shifted & 0x000F000Fu) | Pair<T>::kMagic, zb), s, m);
}

// 16 bytes of the weight stream: read once, so kept out of L1.
__device__ __forceinline__ uint4 load_stream(const int32_t* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// One scale, zero point or min as raw bits (converted where used, so the load stays in flight).
__device__ __forceinline__ uint32_t load_param(const void* base, int64_t i, int bytes) {
  if (bytes == 4) return __ldg(static_cast<const unsigned int*>(base) + i);
  if (bytes == 2) return __ldg(static_cast<const unsigned short*>(base) + i);
  return __ldg(static_cast<const unsigned char*>(base) + i);
}

__device__ __forceinline__ float param_float(uint32_t bits, Dtype dtype) {
  if (dtype == Dtype::kFloat32) return __uint_as_float(bits);
  if (dtype == Dtype::kFloat16) return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
  return __uint_as_float(bits << 16);
}

template <int J>
__device__ __forceinline__ uint32_t word(const uint4& v) {
  return J == 0 ? v.x : J == 1 ? v.y : J == 2 ? v.z : v.w;
}

// One chunk's loads for one thread: rows g and g + 8 of each tile (32 k each), and their group's
// scale and zero point or min.
struct Stage {
  uint4 w[kTilesN][2];
  uint32_t s[kTilesN][2];
  uint32_t x[kTilesN][2];
};

// MT: 8-token tiles (M <= 8 MT); P: chunks in flight per thread.
template <typename T, int MT, int P, int WN>
__global__ void __launch_bounds__(kThreads, 2) w4a16_gemm_kernel(const Params p) {
  using Tl = Tiling<WN>;
  constexpr int kWarpsN = Tl::kWarpsN, kWarpsK = Tl::kWarpsK, kColumns = Tl::kColumns;
  constexpr int kPartStride = Tl::kPartStride;
  char* smem = dynamic_smem();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, c = lane % 4;
  const int wn = warp % kWarpsN, wk = warp / kWarpsN;
  const int block = blockIdx.x / p.splits, rank = blockIdx.x % p.splits;
  const int n_warp = block * kColumns + wn * kTilesN * 16;
  const int first = rank * p.chunks_per_cta;  // this CTA's first chunk
  const int count = max(0, min(p.chunks, first + p.chunks_per_cta) - first);
  const int iters = (count + kWarpsK - 1) / kWarpsK;  // the same in every warp (barriers)

  // Iteration i of this warp works on CTA-local chunk i * kWarpsK + wk.
  auto load = [&](Stage& st, int i) {
    const int local = i * kWarpsK + wk;
    const int kk = (first + local) * kChunk + 32 * c;
    const bool valid = local < count && kk < p.k;
#pragma unroll
    for (int t = 0; t < kTilesN; ++t) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int n = n_warp + t * 16 + h * 8 + g;
        const bool ok = valid && n < p.n;
        const int64_t gi = static_cast<int64_t>(n) * p.groups + (kk >> p.group_shift);
        // Zero words, scales and mins outside the weight: a dequantised zero.
        st.w[t][h] = ok ? load_stream(p.qweight + static_cast<int64_t>(n) * p.words + kk / 8) : make_uint4(0, 0, 0, 0);
        st.s[t][h] = ok ? load_param(p.scales, gi, p.scale_bytes) : 0u;
        st.x[t][h] = ok && p.extra_bytes ? load_param(p.extra, gi, p.extra_bytes) : 0u;
      }
    }
  };

  // Stages piece `piece` of this CTA's slice of a: token rows of piece_chunks chunks, each 16-byte
  // unit u = 4 c + j of a chunk (k 32 c + 8 j ..) stored at unit 4 j + c, where lanes c = 0..3
  // read it together.
  auto stage_piece = [&](int piece) {
    const int c0 = piece * p.piece_chunks;
    const int units = min(p.piece_chunks, count - c0) * (kChunk / 8);
    const int k0 = (first + c0) * kChunk;
    for (int row = 0; row < p.m; ++row) {
      const T* src = static_cast<const T*>(p.a) + static_cast<int64_t>(row) * p.k + k0;
      char* dst = smem + row * p.row_bytes_a;
      for (int q = threadIdx.x; q < units && k0 + q * 8 < p.k; q += kThreads) {
        const int u = q % 16;
        cp_async_16(dst + (q / 16) * kChunkBytesA + ((u % 4) * 4 + u / 4) * 16, src + q * 8, true);
      }
    }
    cp_async_commit();
  };

  float acc[kTilesN][MT][4];
#pragma unroll
  for (int t = 0; t < kTilesN; ++t)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[t][mt][r] = 0.f;

  // The chunk of st (CTA-local `local`) at chunk `lc` of the staged piece.
  auto compute = [&](const Stage& st, int local, int lc) {
    const bool kv = (first + local) * kChunk + 32 * c < p.k;  // a partial last chunk
    uint32_t zb[kTilesN][2], sc[kTilesN][2], mn[kTilesN][2];
#pragma unroll
    for (int t = 0; t < kTilesN; ++t) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float z = Pair<T>::kMagicValue, add = 0.f;
        if (p.mode == static_cast<int>(W4A16Mode::kSymmetric)) {
          z += 8.f;
        } else if (p.mode == static_cast<int>(W4A16Mode::kZeroPoints)) {
          z += static_cast<float>(st.x[t][h]);
        } else {
          add = param_float(st.x[t][h], p.scale_dtype);
        }
        zb[t][h] = Pair<T>::splat(z);
        sc[t][h] = Pair<T>::splat(param_float(st.s[t][h], p.scale_dtype));
        mn[t][h] = Pair<T>::splat(add);
      }
    }
    const char* a_chunk = smem + lc * kChunkBytesA + c * 16;
    auto step = [&](auto J) {
      constexpr int j = decltype(J)::value;
      // The tokens' fragments: b[mt][s] for k-step 2 j + s, halves (h_{2s}, h_{2s+4}) and
      // (h_{2s+1}, h_{2s+5}) of the 8 elements k 32 c + 8 j + 0..7.
      uint32_t b[MT][2][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int tok = mt * 8 + g;
        uint4 u = make_uint4(0, 0, 0, 0);
        if (kv && tok < p.m) u = *reinterpret_cast<const uint4*>(a_chunk + tok * p.row_bytes_a + j * 64);
        b[mt][0][0] = __byte_perm(u.x, u.z, 0x5410);
        b[mt][0][1] = __byte_perm(u.x, u.z, 0x7632);
        b[mt][1][0] = __byte_perm(u.y, u.w, 0x5410);
        b[mt][1][1] = __byte_perm(u.y, u.w, 0x7632);
      }
#pragma unroll
      for (int t = 0; t < kTilesN; ++t) {
        uint32_t q[2][4];  // [row g / g + 8][nibbles (e, e + 4)]
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t w = word<j>(st.w[t][h]);
#pragma unroll
          for (int e = 0; e < 4; ++e) q[h][e] = dequant_pair<T>(w >> (4 * e), zb[t][h], sc[t][h], mn[t][h]);
        }
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const uint32_t frag[4] = {q[0][2 * s], q[1][2 * s], q[0][2 * s + 1], q[1][2 * s + 1]};
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) mma_16816<T>(acc[t][mt], frag, b[mt][s][0], b[mt][s][1]);
        }
      }
    };
    step(std::integral_constant<int, 0>{});
    step(std::integral_constant<int, 1>{});
    step(std::integral_constant<int, 2>{});
    step(std::integral_constant<int, 3>{});
  };

  Stage st[P];
#pragma unroll
  for (int s = 0; s < P; ++s) load(st[s], s);
  if (iters > 0) stage_piece(0);
  cp_async_wait<0>();
  __syncthreads();
  int piece_pos = 0;  // piece-local chunk of this iteration's warp 0
  for (int i0 = 0; i0 < iters; i0 += P) {
#pragma unroll
    for (int s = 0; s < P; ++s) {
      const int i = i0 + s;
      if (i < iters) {
        if (piece_pos == p.piece_chunks) {  // uniform: every warp is at the same iteration
          __syncthreads();
          stage_piece(i * kWarpsK / p.piece_chunks);
          cp_async_wait<0>();
          __syncthreads();
          piece_pos = 0;
        }
        if (i * kWarpsK + wk < count) compute(st[s], i * kWarpsK + wk, piece_pos + wk);
        load(st[s], i + P);
        piece_pos += kWarpsK;
      }
    }
  }

  // The warps along K, then the CTAs of the cluster, summed in a fixed order.
  __syncthreads();  // the pieces of a are dead: the same memory holds the partial sums
  float* part = reinterpret_cast<float*>(smem);  // [kWarpsK][m][kPartStride]
  const int slab = p.m * kPartStride;
#pragma unroll
  for (int t = 0; t < kTilesN; ++t)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int tok = mt * 8 + 2 * c + (r & 1);
        const int col = wn * kTilesN * 16 + t * 16 + g + (r >= 2 ? 8 : 0);
        if (tok < p.m) part[wk * slab + tok * kPartStride + col] = acc[t][mt][r];
      }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  if (p.splits > 1) {
    cg::this_cluster().sync();
  } else {
    __syncthreads();
  }
#else
  __syncthreads();  // splits is 1 before sm_90 (no clusters)
#endif
  const int width = kColumns / p.splits;  // this CTA writes channels [rank, rank + 1) * width
  T* out = static_cast<T*>(p.out);
  for (int e = threadIdx.x; e < p.m * width; e += kThreads) {
    const int tok = e / width, col = rank * width + e % width;
    const int n = block * kColumns + col;
    if (n >= p.n) continue;
    float v = 0.f;
    for (int r = 0; r < p.splits; ++r) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      const float* src = p.splits > 1 ? cg::this_cluster().map_shared_rank(part, r) : part;
#else
      const float* src = part;
#endif
#pragma unroll
      for (int w = 0; w < kWarpsK; ++w) v += src[w * slab + tok * kPartStride + col];
    }
    reinterpret_cast<uint16_t*>(out)[static_cast<int64_t>(tok) * p.n + n] = static_cast<uint16_t>(float_to_bits<T>(v));
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (p.splits > 1) cg::this_cluster().sync();  // peers read this CTA's sums until here
#endif
}

}  // namespace kernels::cuda::w4a16
