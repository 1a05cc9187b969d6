// The CPU kernels of one ISA variant, as plain function pointers. Each variant is compiled in
// its own translation unit with its own ISA flags (isa_*.cpp); bindings.cpp calls through the
// table that active_kernels() picks, so no code built with AVX flags runs before CPUID says it may.
//
// Every kernel works on a range [begin, end) of independent work items, the unit that
// torch's parallel_for splits across threads.
#pragma once
#include <cstdint>

#include "cpu/dtypes.h"

namespace kernels::cpu {

struct RopeArgs {
  const int64_t* positions;
  void* q;
  void* k;
  const void* cos_sin_cache;
  int64_t q_token_stride;  // elements
  int64_t k_token_stride;
  int64_t q_heads;
  int64_t k_heads;
  int64_t head_dim;
  int64_t rot_dim;
  DType dtype;
  bool cache_is_float32;
  bool is_neox;
};

struct Kernels {
  // Work item: one row.
  void (*rms_norm)(DType, const void* x, int64_t x_row_stride, const void* weight, void* out,
                   int64_t hidden, float eps, int64_t begin, int64_t end);
  void (*fused_add_rms_norm)(DType, void* x, void* residual, const void* weight, int64_t hidden,
                             float eps, int64_t begin, int64_t end);
  // Work item: one head of one token, t * (q_heads + k_heads) + h, q heads before k heads.
  void (*rotary_embedding)(const RopeArgs&, int64_t begin, int64_t end);
  // Work item: one element of the [T, d] output, so that a single long row still splits.
  void (*silu_and_mul)(DType, const void* x, void* out, int64_t d, int64_t begin, int64_t end);
  void (*gelu_and_mul)(DType, const void* x, void* out, int64_t d, int64_t begin, int64_t end);
  void (*gelu_tanh_and_mul)(DType, const void* x, void* out, int64_t d, int64_t begin,
                            int64_t end);
};

const Kernels& scalar_kernels();
const Kernels& avx2_kernels();    // built on x86-64 only
const Kernels& avx512_kernels();  // built on x86-64 only

// The best variant this CPU runs, capped by the environment variable KERNELS_CPU_ISA
// (scalar | avx2 | avx512). Read at every call, so a test can switch variants in-process.
const Kernels& active_kernels();

}  // namespace kernels::cpu
