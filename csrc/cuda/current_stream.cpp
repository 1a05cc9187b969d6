// The torch 2.10 stable ABI has no current-stream accessor, so the AOTI shim function that
// libtorch_cuda exports is looked up at run time: the library links no CUDA part of torch and so
// also loads into a CPU-only torch (where CUDA tensors, and so these calls, cannot occur).
#include "cuda/current_stream.h"

#include <dlfcn.h>

#include "common/check.h"

namespace kernels::cuda {
namespace {

constexpr const char* kSymbol = "aoti_torch_get_current_cuda_stream";

// AOTITorchError (0 = success) aoti_torch_get_current_cuda_stream(int32_t, void**).
using GetStream = int32_t (*)(int32_t device_index, void** stream);

GetStream find_get_stream() {
  void* fn = dlsym(RTLD_DEFAULT, kSymbol);
  if (fn == nullptr) {
    // torch may have loaded libtorch_cuda with RTLD_LOCAL, out of the global scope: ask for the
    // already-loaded library by name (RTLD_NOLOAD never loads a new one).
    if (void* lib = dlopen("libtorch_cuda.so", RTLD_LAZY | RTLD_NOLOAD)) fn = dlsym(lib, kSymbol);
  }
  return reinterpret_cast<GetStream>(fn);
}

}  // namespace

cudaStream_t current_stream(int32_t device_index) {
  static const GetStream get_stream = find_get_stream();
  KERNELS_CHECK(get_stream != nullptr, kSymbol,
                " not found: CUDA kernels need a CUDA build of torch");
  void* stream = nullptr;
  KERNELS_CHECK(get_stream(device_index, &stream) == 0,
                "could not get the current CUDA stream of device ", device_index);
  return static_cast<cudaStream_t>(stream);
}

}  // namespace kernels::cuda
