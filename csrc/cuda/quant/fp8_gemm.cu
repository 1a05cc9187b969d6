// fp8_gemm launcher: picks the kernel family by granularity and output type (the families and
// their CUTLASS kernels live in fp8_gemm_<family>.cu; this file includes no CUTLASS).
#include "cuda/common/device.h"
#include "cuda/quant/fp8_gemm.h"
#include "cuda/quant/fp8_gemm_families.h"

namespace kernels::cuda {
namespace {

const fp8::Family& family_of(const Fp8GemmArgs& args) {
  const bool bf16 = args.out_dtype == Dtype::kBFloat16;
  if (args.blockwise) return bf16 ? fp8::kBlockwiseBf16 : fp8::kBlockwiseFp16;
  if (args.fast_accum) return bf16 ? fp8::kRowwiseFastBf16 : fp8::kRowwiseFastFp16;
  return bf16 ? fp8::kRowwiseBf16 : fp8::kRowwiseFp16;
}

}  // namespace

const char* fp8_gemm_unsupported_reason(int device) {
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return "cannot read the device's compute capability";
  }
  // wgmma and the TMA kernels are sm_90a instructions: no other GPU runs them.
  if (major != 9 || minor != 0) return "the CUTLASS FP8 kernels run on sm_90 (Hopper) GPUs only";
  return nullptr;
}

size_t fp8_gemm_workspace_size(const Fp8GemmArgs& args, int device) {
  return family_of(args).workspace_size(args, device, device_facts(device).sms);
}

cudaError_t launch_fp8_gemm(const Fp8GemmArgs& args, void* workspace, int device,
                            cudaStream_t stream) {
  if (args.m == 0) return cudaSuccess;
  if (args.out_dtype == Dtype::kFloat32) return cudaErrorNotSupported;
  return family_of(args).launch(args, workspace, device, device_facts(device).sms, stream);
}

}  // namespace kernels::cuda
