// Built with no ISA flags: the fallback, and the only variant off x86.
#include "cpu/vec_scalar.h"
#include "cpu/make_kernels.h"

namespace kernels::cpu {

const Kernels& scalar_kernels() {
  static constexpr Kernels table = make_kernels<scalar::Vec>();
  return table;
}

}  // namespace kernels::cpu
