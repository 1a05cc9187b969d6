# CUDA backend (csrc/cuda), added to kernels_C for the architectures in KERNELS_CUDA_ARCHS
# ("90a", "80;90a"; CMake turns "90a" into arch=compute_90a,code=[compute_90a,sm_90a]).
# The .cu files are torch-free launchers; only bindings.cpp, built by the host compiler, includes
# torch's stable-ABI headers, so nvcc never parses them.
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

set(_kernels_cuda_dir "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda")
target_sources(kernels_C PRIVATE
  "${_kernels_cuda_dir}/bindings.cpp"
  "${_kernels_cuda_dir}/current_stream.cpp"
  "${_kernels_cuda_dir}/activation/act_and_mul.cu"
  "${_kernels_cuda_dir}/attention/kv_cache.cu"
  "${_kernels_cuda_dir}/attention/paged_decode.cu"
  "${_kernels_cuda_dir}/attention/paged_prefill.cu"
  "${_kernels_cuda_dir}/attention/paged_prefill_sm90.cu"
  "${_kernels_cuda_dir}/norm/rms_norm.cu"
  "${_kernels_cuda_dir}/norm/fused_add_rms_norm.cu"
  "${_kernels_cuda_dir}/quant/fp8_gemm.cu"
  "${_kernels_cuda_dir}/quant/fp8_gemm_blockwise_bf16.cu"
  "${_kernels_cuda_dir}/quant/fp8_gemm_blockwise_fp16.cu"
  "${_kernels_cuda_dir}/quant/fp8_gemm_rowwise_bf16.cu"
  "${_kernels_cuda_dir}/quant/fp8_gemm_rowwise_fp16.cu"
  "${_kernels_cuda_dir}/quant/fp8_gemm_rowwise_fast_bf16.cu"
  "${_kernels_cuda_dir}/quant/fp8_gemm_rowwise_fast_fp16.cu"
  "${_kernels_cuda_dir}/quant/quantize_fp8.cu"
  "${_kernels_cuda_dir}/quant/w4a16.cu"
  "${_kernels_cuda_dir}/rotary/rotary_embedding.cu")

# CUTLASS 3.x headers (fp8_gemm's kernels) from the nvidia-cutlass wheel, a build requirement:
# found through the interpreter without importing the package; nothing is downloaded here.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import importlib.util, os; s = importlib.util.find_spec('cutlass_library'); print(os.path.join(s.submodule_search_locations[0], 'source') if s else '')"
  OUTPUT_VARIABLE KERNELS_CUTLASS_DIR OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
if(NOT EXISTS "${KERNELS_CUTLASS_DIR}/include/cutlass/cutlass.h")
  message(FATAL_ERROR "CUTLASS headers not found: pip install nvidia-cutlass==4.2.0.0 into ${Python_EXECUTABLE}'s environment")
endif()
target_include_directories(kernels_C PRIVATE
  "$<$<COMPILE_LANGUAGE:CUDA>:${KERNELS_CUTLASS_DIR}/include;${KERNELS_CUTLASS_DIR}/tools/util/include>")
# CUTLASS's device-side asserts are calls that serialise the wgmma pipeline (ptxas C7510): off
# for its kernels whatever the build type.
set_source_files_properties(
  "${_kernels_cuda_dir}/quant/fp8_gemm_blockwise_bf16.cu" "${_kernels_cuda_dir}/quant/fp8_gemm_blockwise_fp16.cu"
  "${_kernels_cuda_dir}/quant/fp8_gemm_rowwise_bf16.cu" "${_kernels_cuda_dir}/quant/fp8_gemm_rowwise_fp16.cu"
  "${_kernels_cuda_dir}/quant/fp8_gemm_rowwise_fast_bf16.cu" "${_kernels_cuda_dir}/quant/fp8_gemm_rowwise_fast_fp16.cu"
  TARGET_DIRECTORY kernels_C PROPERTIES COMPILE_DEFINITIONS NDEBUG)
# CuTe calls constexpr host functions from host-device code throughout.
target_compile_options(kernels_C PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>)

# The host files use the runtime API's declarations (cudaStream_t, cudaGetErrorString).
target_include_directories(kernels_C PRIVATE ${CUDAToolkit_INCLUDE_DIRS})

# Static runtime: the library needs no libcudart at load time, so one build loads into a CPU-only
# torch as well as into any CUDA torch. libcuda itself is opened by the runtime when first used.
set_target_properties(kernels_C PROPERTIES
  CUDA_ARCHITECTURES "${KERNELS_CUDA_ARCHS}"
  CUDA_RUNTIME_LIBRARY Static
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  CUDA_VISIBILITY_PRESET hidden)
# Keep the static runtime's symbols private: exported, they would bind to the libcudart that a
# CUDA torch has already loaded globally, mixing two runtimes' state.
target_link_options(kernels_C PRIVATE "LINKER:--exclude-libs,ALL")

# Fast math (approximate exp / division / rsqrt, flush-to-zero) stays far inside the bf16 / fp16
# tolerances and within a few float32 ulps; erff and the NaN rule are unaffected.
target_compile_options(kernels_C PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --use_fast_math>)
