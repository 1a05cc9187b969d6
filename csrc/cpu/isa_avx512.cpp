// Built with -mavx512f -mavx512bw -mavx512vl -mavx512dq (platforms/cpu/build.cmake);
// isa_select.cpp calls it only on CPUs that have all four.
#include "cpu/vec_avx512.h"
#include "cpu/make_kernels.h"

namespace kernels::cpu {

const Kernels& avx512_kernels() {
  static constexpr Kernels table = make_kernels<avx512::Vec>();
  return table;
}

}  // namespace kernels::cpu
