# CPU backend (csrc/cpu), added to kernels_C. Kernels are compiled once per ISA, each variant in
# its own file with its own flags, and chosen at run time by CPUID (csrc/cpu/isa_select.cpp), so
# one binary runs on any x86-64 and uses the widest vectors the machine has. No -march=native:
# the wheel must not depend on the build machine.
set(_kernels_cpu_dir "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cpu")

# Baseline files first: where the ISA files share an inline function that the compiler did not
# inline (from the standard library, say), the linker keeps the first copy, which must be the
# one that runs everywhere.
set(_kernels_cpu_sources
  "${_kernels_cpu_dir}/bindings.cpp"
  "${_kernels_cpu_dir}/isa_select.cpp"
  "${_kernels_cpu_dir}/isa_scalar.cpp")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(_kernels_cpu_avx2 "${_kernels_cpu_dir}/isa_avx2.cpp")
  set(_kernels_cpu_avx512 "${_kernels_cpu_dir}/isa_avx512.cpp")
  list(APPEND _kernels_cpu_sources "${_kernels_cpu_avx2}" "${_kernels_cpu_avx512}")
  set_source_files_properties("${_kernels_cpu_avx2}" PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  set_source_files_properties("${_kernels_cpu_avx512}" PROPERTIES
    COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq")
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC 12's own AVX-512 intrinsics (their _mm512_undefined_* placeholders) set off
    # -W(maybe-)uninitialized at every use; the same kernel code is still checked in the AVX2 file.
    set_property(SOURCE "${_kernels_cpu_avx512}" APPEND PROPERTY COMPILE_OPTIONS
      -Wno-uninitialized -Wno-maybe-uninitialized)
  endif()
  set_source_files_properties("${_kernels_cpu_dir}/isa_select.cpp" PROPERTIES
    COMPILE_DEFINITIONS KERNELS_CPU_X86)
endif()

# A configure without a build type compiles at -O0, where the vector code is several times
# slower than eager torch; an explicit Debug build is left alone.
get_property(_kernels_multi_config GLOBAL PROPERTY GENERATOR_IS_MULTI_CONFIG)
if(NOT CMAKE_BUILD_TYPE AND NOT _kernels_multi_config)
  set_property(SOURCE ${_kernels_cpu_sources} APPEND PROPERTY COMPILE_OPTIONS -O3)
endif()

target_sources(kernels_C PRIVATE ${_kernels_cpu_sources})
