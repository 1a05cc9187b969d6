// Builds the kernel table of one ISA from the templated kernels; included once per isa_*.cpp,
// together with that ISA's vector layer.
#pragma once
#include <cstdint>
#include <type_traits>

#include "cpu/activation_kernels.h"
#include "cpu/attention_kernels.h"
#include "cpu/kernel_table.h"
#include "cpu/norm_kernels.h"
#include "cpu/quant_kernels.h"
#include "cpu/rope_kernels.h"
#include "cpu/w8a16_kernels.h"
#include "cpu/vec_math.h"

namespace kernels::cpu {

template <class F>
inline void visit_dtype(DType dtype, F f) {
  switch (dtype) {
    case DType::Float32: return f(float{});
    case DType::Float16: return f(Half{});
    case DType::BFloat16: return f(BFloat16{});
  }
}

// head_dim as a compile-time constant: 64, 128 or 256 (bindings.cpp checks).
template <class F>
inline void visit_head_dim(int64_t head_dim, F f) {
  switch (head_dim) {
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return f(std::integral_constant<int, 256>{});
  }
}

template <class Vec>
struct TypeErased {
  static void rms_norm(DType dtype, const void* x, int64_t x_row_stride, const void* weight,
                       void* out, int64_t hidden, float eps, int64_t begin, int64_t end) {
    visit_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      rms_norm_rows<Vec>(static_cast<const T*>(x), x_row_stride, static_cast<const T*>(weight),
                         static_cast<T*>(out), hidden, eps, begin, end);
    });
  }
  static void fused_add_rms_norm(DType dtype, void* x, void* residual, const void* weight,
                                 int64_t hidden, float eps, int64_t begin, int64_t end) {
    visit_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      fused_add_rms_norm_rows<Vec>(static_cast<T*>(x), static_cast<T*>(residual),
                                   static_cast<const T*>(weight), hidden, eps, begin, end);
    });
  }
  static void rotary_embedding(const RopeArgs& args, int64_t begin, int64_t end) {
    visit_dtype(args.dtype, [&](auto tag) {
      using T = decltype(tag);
      if (args.cache_is_float32) {
        rotary_embedding_items<Vec, T, float>(args, begin, end);
      } else {
        rotary_embedding_items<Vec, T, T>(args, begin, end);
      }
    });
  }
  template <Vec (*Act)(Vec)>
  static void gated(DType dtype, const void* x, void* out, int64_t d, int64_t begin, int64_t end) {
    visit_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      gated_activation<Vec, T, Act>(static_cast<const T*>(x), static_cast<T*>(out), d, begin,
                                    end);
    });
  }
  template <int Which>  // 0 decode, 1 decode chunk merge, 2 prefill
  static void attention(const AttentionArgs& args, int64_t begin, int64_t end) {
    visit_dtype(args.dtype, [&](auto tag) {
      visit_head_dim(args.head_dim, [&](auto d) {
        using A = PagedAttention<Vec, decltype(tag), decltype(d)::value>;
        if constexpr (Which == 0) A::decode(args, begin, end);
        if constexpr (Which == 1) A::decode_merge(args, begin, end);
        if constexpr (Which == 2) A::prefill(args, begin, end);
      });
    });
  }
  static void merge_attention_states(const MergeArgs& args, int64_t begin, int64_t end) {
    visit_dtype(args.dtype, [&](auto tag) {
      merge_attention_rows<Vec, decltype(tag)>(args, begin, end);
    });
  }
  static void w4a16_prepare(const W4A16Args& args, int64_t begin, int64_t end) {
    visit_dtype(args.dtype, [&](auto tag) {
      w4a16_prepare_rows<Vec, decltype(tag)>(args, begin, end);
    });
  }
  static void w4a16_gemm(const W4A16Args& args, int64_t begin, int64_t end) {
    visit_dtype(args.dtype, [&](auto tag) {
      using T = decltype(tag);
      switch (args.group_size) {
        case 32: return w4a16_channels<Vec, T, 4>(args, begin, end);
        case 64: return w4a16_channels<Vec, T, 8>(args, begin, end);
        default: return w4a16_channels<Vec, T, 16>(args, begin, end);
      }
    });
  }
  static void w8a16_prepare(const W8A16Args& args, int64_t begin, int64_t end) {
    visit_dtype(args.dtype, [&](auto tag) {
      w8a16_prepare_rows<Vec, decltype(tag)>(args, begin, end);
    });
  }
  static void w8a16_gemm(const W8A16Args& args, int64_t begin, int64_t end) {
    visit_dtype(args.dtype, [&](auto tag) {
      using T = decltype(tag);
      switch (args.group_size) {
        case 32: return w8a16_channels<Vec, T, 32>(args, begin, end);
        case 64: return w8a16_channels<Vec, T, 64>(args, begin, end);
        default: return w8a16_channels<Vec, T, 128>(args, begin, end);
      }
    });
  }
};

template <class Vec>
constexpr Kernels make_kernels() {
  using K = TypeErased<Vec>;
  return Kernels{
      &K::rms_norm,
      &K::fused_add_rms_norm,
      &K::rotary_embedding,
      &K::template gated<silu<Vec>>,
      &K::template gated<gelu_erf<Vec>>,
      &K::template gated<gelu_tanh<Vec>>,
      &K::template attention<0>,
      &K::template attention<1>,
      &K::template attention<2>,
      &K::merge_attention_states,
      &K::w4a16_prepare,
      &K::w4a16_gemm,
      &K::w8a16_prepare,
      &K::w8a16_gemm,
  };
}

}  // namespace kernels::cpu
