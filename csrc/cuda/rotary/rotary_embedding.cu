// Rotary embedding, in place on q and k. A block handles one token (or several, for few heads):
// threadIdx.x picks the item (a slice of the rotary dims), threadIdx.y the heads (q heads, then
// k heads), so one cos / sin load serves a thread's kHeadsPerPass heads, whose loads are all
// issued before the first store.
//
// Items: neox pairs dims (i, i + rot/2), so an item is W dims of each half (W cos and sin values);
// gptj pairs (2i, 2i + 1), so an item is W consecutive dims (W/2 cos and sin values).
//
// With a KV store (rotary_embedding_and_store_kv_), the block then writes its tokens' rotated k
// rows and their v rows into the paged caches: one kernel instead of the rotation and
// store_kv_cache, and the decode attention that follows is launched while it runs (pdl.cuh).
#include "cuda/common/launch.cuh"
#include "cuda/common/pdl.cuh"
#include "cuda/common/vec.cuh"
#include "cuda/rotary/rotary_embedding.h"

namespace kernels::cuda {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kMinThreads = 128;  // blocks are filled up to this with more tokens
constexpr int kMaxItemThreads = 64;
constexpr int kHeadsPerPass = 2;
constexpr float kNaN = __builtin_nanf("");

template <typename T, typename C>
struct RopeArgs {
  const int64_t* positions;
  int64_t positions_stride;
  T* q;
  T* k;
  const C* cache;
  int64_t tokens;
  int heads_q;
  int heads;  // heads_q + heads_k
  int head_dim;
  int rot_dim;
  int64_t q_stride;
  int64_t k_stride;
  int64_t max_position;
  KvStore store;  // used by the kStore kernels only
};

// Head h of the token: q's heads, then k's. Selects rather than branches, so that the loads of
// a pass's heads stay together.
template <typename T, typename C>
__device__ __forceinline__ T* head_ptr(const RopeArgs<T, C>& a, int64_t token, int h) {
  const bool is_q = h < a.heads_q;
  T* base = is_q ? a.q : a.k;
  const int64_t stride = is_q ? a.q_stride : a.k_stride;
  return base + token * stride + (is_q ? h : h - a.heads_q) * a.head_dim;
}

template <typename T, typename C, int W, bool kNeox, bool kWide>
__device__ __forceinline__ void rotate_token(const RopeArgs<T, C>& a, int64_t token) {
  constexpr int kCs = kNeox ? W : W / 2;  // cos (and sin) values per item
  constexpr int kChunks = kNeox ? 2 : 1;  // W-dim chunks per item and head
  const int64_t pos = a.positions[token * a.positions_stride];
  const bool valid = pos >= 0 && pos < a.max_position;
  const int half = a.rot_dim / 2;
  const int items = half / kCs;

  for (int item = threadIdx.x; item < items; item += blockDim.x) {
    // Dims of chunk c within the head: neox item * W + c * half, gptj item * W.
    const int offset = item * W;

    for (int h0 = threadIdx.y; h0 < a.heads; h0 += blockDim.y * kHeadsPerPass) {
      // Heads past the last load the last head (an L1 hit) rather than branch; not stored.
      Vec<T, W> x[kHeadsPerPass][kChunks];
      T* head[kHeadsPerPass];
#pragma unroll
      for (int p = 0; p < kHeadsPerPass; ++p) {
        head[p] =
            head_ptr(a, token, min(h0 + p * static_cast<int>(blockDim.y), a.heads - 1)) + offset;
#pragma unroll
        for (int c = 0; c < kChunks; ++c) x[p][c] = load_vec<W, kWide>(head[p] + c * half);
      }
      // cos / sin after q and k: their loads wait on the position, the heads' need not. Passes
      // after the first re-read them from L1.
      float cos_v[kCs], sin_v[kCs];
      if (valid) {
        const C* row = a.cache + pos * a.rot_dim + item * kCs;
        unpack(load_vec<kCs, kWide>(row), cos_v);
        unpack(load_vec<kCs, kWide>(row + half), sin_v);
      } else {
        // An invalid position never touches the cache: NaN makes every rotated value NaN.
#pragma unroll
        for (int i = 0; i < kCs; ++i) cos_v[i] = sin_v[i] = kNaN;
      }
#pragma unroll
      for (int p = 0; p < kHeadsPerPass; ++p) {
        float v[kChunks][W];
#pragma unroll
        for (int c = 0; c < kChunks; ++c) unpack(x[p][c], v[c]);
#pragma unroll
        for (int i = 0; i < kCs; ++i) {
          // The pair (x1, x2): neox dim i of each half, gptj dims 2i and 2i + 1.
          float* x1 = kNeox ? &v[0][i] : &v[0][2 * i];
          float* x2 = kNeox ? &v[kChunks - 1][i] : &v[0][2 * i + 1];
          const float r1 = *x1 * cos_v[i] - *x2 * sin_v[i];
          const float r2 = *x2 * cos_v[i] + *x1 * sin_v[i];
          *x1 = r1;
          *x2 = r2;
        }
        if (h0 + p * static_cast<int>(blockDim.y) < a.heads) {
#pragma unroll
          for (int c = 0; c < kChunks; ++c) store_vec<W, kWide>(head[p] + c * half, pack<T>(v[c]));
        }
      }
    }
  }

  // Partial rotary: the dims past rot_dim of an invalid token's heads become NaN too.
  if (!valid) {
    const float nan[1] = {kNaN};
    for (int h = threadIdx.y; h < a.heads; h += blockDim.y) {
      T* head = head_ptr(a, token, h);
      for (int d = a.rot_dim + threadIdx.x; d < a.head_dim; d += blockDim.x) {
        store_vec<1, false>(head + d, pack<T>(nan));
      }
    }
  }
}

// The token's k row (already rotated) and v row into the caches at its slot (-1 or out of range:
// skipped, as store_kv_cache does), W elements per access.
template <typename T, typename C, int W, bool kWide>
__device__ __forceinline__ void store_token(const RopeArgs<T, C>& a, int64_t token) {
  const KvStore& st = a.store;
  const int64_t slot = st.slots[token];
  if (slot < 0 || slot >= st.num_slots) return;
  const int64_t row = static_cast<int64_t>(a.heads - a.heads_q) * a.head_dim;
  const T* k = a.k + token * a.k_stride;
  const T* v = static_cast<const T*>(st.v) + token * st.v_stride;
  T* kc = static_cast<T*>(st.k_cache) + slot * row;
  T* vc = static_cast<T*>(st.v_cache) + slot * row;
  const int threads = blockDim.x * blockDim.y;
  for (int64_t e = (threadIdx.y * blockDim.x + threadIdx.x) * W; e < row; e += threads * W) {
    store_vec<W, kWide>(kc + e, load_vec<W, kWide>(k + e));
    store_vec<W, kWide>(vc + e, load_vec<W, kWide>(v + e));
  }
}

template <typename T, typename C, int W, bool kNeox, bool kWide, bool kStore>
__global__ void __launch_bounds__(kMaxThreads) rotary_kernel(const RopeArgs<T, C> a) {
  if constexpr (kStore) let_dependents_start();
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.z + threadIdx.z;
  const bool in_range = token < a.tokens;
  if (in_range) rotate_token<T, C, W, kNeox, kWide>(a, token);
  if constexpr (kStore) {
    __syncthreads();  // the block's rotated k rows, stored above by other threads, are read back
    if (in_range) store_token<T, C, kWide ? W : 1, kWide>(a, token);
  }
}

template <typename T, typename C, int W, bool kNeox, bool kWide, bool kStore>
void launch(const RopeArgs<T, C>& a, cudaStream_t stream) {
  constexpr int kCs = kNeox ? W : W / 2;
  const int items = a.rot_dim / 2 / kCs;
  // x: items (up to kMaxItemThreads; more loop); y: heads, each thread a whole number of passes
  // of kHeadsPerPass heads, as few threads as split them evenly; z: tokens, to fill small blocks.
  const int bx = min(items, kMaxItemThreads);
  const int max_by = max(1, kMaxThreads / bx);
  const int heads_per_thread = round_up(static_cast<int>(ceil_div(a.heads, max_by)), kHeadsPerPass);
  const int by = static_cast<int>(ceil_div(a.heads, heads_per_thread));
  const int bz = min(64, max(1, kMinThreads / (bx * by)));
  const dim3 grid(static_cast<unsigned>(ceil_div(a.tokens, bz)));
  rotary_kernel<T, C, W, kNeox, kWide, kStore><<<grid, dim3(bx, by, bz), 0, stream>>>(a);
}

template <typename T, typename C, bool kStore>
void launch_types(const RopeArgs<T, C>& a, bool is_neox, cudaStream_t stream) {
  constexpr int kW = kVec16<T>;
  // 16-byte items need every head, token and item start aligned, and the cache aligned to the
  // cos / sin values an item reads; a store also reads v rows 16 bytes at a time.
  const int cs_bytes = static_cast<int>(sizeof(C)) * (is_neox ? kW : kW / 2);
  const bool wide = (is_neox ? a.rot_dim / 2 : a.rot_dim) % kW == 0 && a.head_dim % kW == 0 &&
                    a.q_stride % kW == 0 && a.k_stride % kW == 0 && aligned(a.q, 16) &&
                    aligned(a.k, 16) && aligned(a.cache, cs_bytes) &&
                    (!kStore || (a.store.v_stride % kW == 0 && aligned(a.store.v, 16) &&
                                 aligned(a.store.k_cache, 16) && aligned(a.store.v_cache, 16)));
  if (is_neox) {
    wide ? launch<T, C, kW, true, true, kStore>(a, stream) : launch<T, C, 1, true, false, kStore>(a, stream);
  } else {
    wide ? launch<T, C, kW, false, true, kStore>(a, stream) : launch<T, C, 2, false, false, kStore>(a, stream);
  }
}

}  // namespace

cudaError_t launch_rotary_embedding(const int64_t* positions, int64_t positions_stride, void* q,
                                    void* k, const void* cos_sin_cache, int64_t tokens, int heads_q,
                                    int heads_k, int head_dim, int rot_dim, int64_t q_stride,
                                    int64_t k_stride, int64_t max_position, bool is_neox,
                                    Dtype dtype, bool cache_float32, const KvStore* store,
                                    cudaStream_t stream) {
  if (tokens == 0 || heads_q + heads_k == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    auto run = [&](auto cache_zero) {
      using C = decltype(cache_zero);
      const RopeArgs<T, C> args{positions,
                                positions_stride,
                                static_cast<T*>(q),
                                static_cast<T*>(k),
                                static_cast<const C*>(cos_sin_cache),
                                tokens,
                                heads_q,
                                heads_q + heads_k,
                                head_dim,
                                rot_dim,
                                q_stride,
                                k_stride,
                                max_position,
                                store != nullptr ? *store : KvStore{}};
      if (store != nullptr) {
        launch_types<T, C, true>(args, is_neox, stream);
      } else {
        launch_types<T, C, false>(args, is_neox, stream);
      }
    };
    if (cache_float32) {
      run(float{});
    } else {
      run(T{});
    }
  });
  return cudaGetLastError();
}

}  // namespace kernels::cuda
