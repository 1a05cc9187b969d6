// Launcher of the in-place rotary embedding (plain pointers, no torch). Returns the launch status;
// tokens == 0 launches nothing.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/common/dtype.h"

namespace kernels::cuda {

// Where rotated keys go with their values: v [tokens, heads_k, head_dim] (heads contiguous, tokens
// v_stride elements apart), the paged caches (contiguous [num_slots, heads_k * head_dim] rows of
// dtype) and each token's slot (int64; -1 or out of range: not stored).
struct KvStore {
  const void* v;
  int64_t v_stride;
  void* k_cache;
  void* v_cache;
  const int64_t* slots;
  int64_t num_slots;
};

// q [tokens, heads_q, head_dim] and k [tokens, heads_k, head_dim] (heads contiguous, tokens
// q_stride / k_stride elements apart) rotate their first rot_dim dims by the cos_sin_cache row
// [max_position, rot_dim] (cos then sin, float32 or dtype) of each token's position (positions
// positions_stride elements apart). A position outside [0, max_position) turns that token's q and
// k into NaN without reading the cache. With a store, the rotated k rows and the v rows are then
// written to the caches, in the same kernel.
cudaError_t launch_rotary_embedding(const int64_t* positions, int64_t positions_stride, void* q,
                                    void* k, const void* cos_sin_cache, int64_t tokens, int heads_q,
                                    int heads_k, int head_dim, int rot_dim, int64_t q_stride,
                                    int64_t k_stride, int64_t max_position, bool is_neox,
                                    Dtype dtype, bool cache_float32, const KvStore* store,
                                    cudaStream_t stream);

}  // namespace kernels::cuda
