// Picks the kernel variant: the best ISA that CPUID reports (and the OS has enabled), capped
// by KERNELS_CPU_ISA so tests and benchmarks can force the slower paths on a fast machine.
#include <cstdlib>
#include <cstring>

#include "common/check.h"
#include "cpu/kernel_table.h"

namespace kernels::cpu {
namespace {

enum class Isa { Scalar, Avx2, Avx512 };

Isa best_supported() {
#if defined(KERNELS_CPU_X86)
  // libgcc's CPUID probe also checks XGETBV, so a feature reads as missing when the OS does not
  // save the wider registers.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Isa::Avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return Isa::Avx2;
  }
#endif
  return Isa::Scalar;
}

Isa requested_cap() {
  const char* env = std::getenv("KERNELS_CPU_ISA");
  if (env == nullptr || *env == '\0') return Isa::Avx512;
  if (std::strcmp(env, "scalar") == 0) return Isa::Scalar;
  if (std::strcmp(env, "avx2") == 0) return Isa::Avx2;
  // A typo must not silently test the wrong variant.
  KERNELS_CHECK(std::strcmp(env, "avx512") == 0,
                "KERNELS_CPU_ISA must be one of scalar, avx2, avx512; got '", env, "'");
  return Isa::Avx512;
}

}  // namespace

const Kernels& active_kernels() {
  static const Isa best = best_supported();
  const Isa cap = requested_cap();
  const Isa isa = cap < best ? cap : best;
#if defined(KERNELS_CPU_X86)
  if (isa == Isa::Avx512) return avx512_kernels();
  if (isa == Isa::Avx2) return avx2_kernels();
#endif
  (void)isa;
  return scalar_kernels();
}

}  // namespace kernels::cpu
