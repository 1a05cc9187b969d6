// Element types as the kernels see them. 16-bit floats are opaque bit patterns here: every
// conversion goes through the vector layer of the ISA in use, so these headers stay free of
// torch and of code that a compiler could build with the wrong ISA flags.
#pragma once
#include <cstdint>

namespace kernels::cpu {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

enum class DType { Float32, Float16, BFloat16 };

}  // namespace kernels::cpu
