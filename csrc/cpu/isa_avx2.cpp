// Built with -mavx2 -mfma -mf16c (platforms/cpu/build.cmake); isa_select.cpp calls it only
// on CPUs that have all three.
#include "cpu/vec_avx2.h"
#include "cpu/make_kernels.h"

namespace kernels::cpu {

const Kernels& avx2_kernels() {
  static constexpr Kernels table = make_kernels<avx2::Vec>();
  return table;
}

}  // namespace kernels::cpu
