"""The ``native`` backend: the compiled library (C++ on CPU, CUDA on NVIDIA).

Verification: CPU is tested in CI (AVX2) and on the GPU machine's host (AVX-512); CUDA is
compile-checked in CI and tested on the H100 by scripts/gpu_check.sh.
"""

from __future__ import annotations

import torch

from .. import registry
from . import library
from .fakes import register_fakes

PLATFORMS = {"cpu": "verified", "cuda": "verified"}
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _availability(op: str):
    def available(platform: str) -> str | None:
        reason = library.load()
        if reason is not None:
            return reason
        key = _DISPATCH_KEYS[platform]
        if not library.has_kernel(op, key):
            return f"the installed library was built without {key} kernels (see docs/install.md)"
        return None

    return available


OPS = (
    "rms_norm",
    "fused_add_rms_norm_",
    "rotary_embedding_",
    "rotary_embedding_and_store_kv_",
    "silu_and_mul",
    "store_kv_cache",
    "paged_decode_attention",
    "paged_prefill_attention",
    "merge_attention_states",
)


def _forward(op: str):
    """Calls torch.ops.kernels.<op> with the dispatch arguments; looked up at the first call, since
    the schema exists only once the library is loaded, and kept."""
    handle = None

    def call(*args):
        nonlocal handle
        if handle is None:
            handle = getattr(torch.ops.kernels, op).default
        return handle(*args)

    call.__name__ = op
    return call


def _gelu_and_mul(x, approximate):
    # The schema takes a bool where the Python API takes the name of the approximation.
    return torch.ops.kernels.gelu_and_mul(x, approximate == "tanh")


def _half_precision_on_gpu(q, *args) -> str | None:
    # The CUDA attention kernels are tensor-core kernels: bf16 / fp16 only.
    if q.device.type != "cpu" and q.dtype == torch.float32:
        return "float32 attention runs natively on the CPU only (Triton takes it on GPUs)"
    return None


ATTENTION = {"paged_decode_attention", "paged_prefill_attention"}

W4A16_GROUP_SIZES = (32, 64, 128)


def _w4a16_gemm_supports(a, qweight, scales, zero_points, mins, group_size) -> str | None:
    # The C++ kernel (csrc/cpu/quant_kernels.h): contiguous 2-d a, group sizes whose words fill
    # whole vector lanes; uint8 zero points; float scales and mins of any of the three dtypes.
    if group_size not in W4A16_GROUP_SIZES:
        return f"group_size must be one of {W4A16_GROUP_SIZES}, got {group_size}"
    if a.dim() != 2 or not a.is_contiguous():
        return "a must be a contiguous [M, K] tensor"
    if not qweight.is_contiguous() or not scales.is_contiguous():
        return "qweight and scales must be contiguous"
    if zero_points is not None and not (zero_points.dtype == torch.uint8 and zero_points.is_contiguous()):
        return "zero_points must be a contiguous uint8 tensor"
    if mins is not None and not mins.is_contiguous():
        return "mins must be contiguous"
    if a.device.type == "cuda":
        return _w4a16_cuda_declines(a, qweight)
    return None


W4A16_CUDA_MAX_M = 32  # csrc/cuda/quant/w4a16.h: kW4A16MaxM


def _w4a16_cuda_declines(a, qweight) -> str | None:
    # The CUDA kernel (csrc/cuda/quant/w4a16_kernel.cuh) is a decode kernel: tensor cores on
    # half-precision tokens, at most 32 of them (slower than Triton beyond); Triton takes the rest. Its 16-byte loads need
    # aligned a and qweight (torch's allocations are; a view at an odd offset is not).
    if a.dtype not in (torch.float16, torch.bfloat16):
        return "float32 w4a16_gemm runs natively on the CPU only (Triton takes it on GPUs)"
    if a.shape[0] > W4A16_CUDA_MAX_M:
        return f"the CUDA kernel takes M <= {W4A16_CUDA_MAX_M} tokens (Triton takes larger M)"
    if qweight.shape[0] > 2**30 or a.shape[1] > 2**24:
        return "the CUDA kernel takes N <= 2^30 and K <= 2^24"
    if (a.storage_offset() * a.element_size()) % 16 or (qweight.storage_offset() * 4) % 16:
        return "a and qweight must start 16-byte aligned"
    if torch.cuda.get_device_capability(a.device) < (8, 0):
        return "the CUDA kernel needs sm_80 or newer"
    return None

if library.load() is None:
    register_fakes()
for _name, _fn in [*((op, _forward(op)) for op in OPS), ("gelu_and_mul", _gelu_and_mul)]:
    _supports = {"supports": _half_precision_on_gpu} if _name in ATTENTION else {}
    registry.register(_name, "native", PLATFORMS, available=_availability(_name), **_supports)(_fn)
registry.register(
    "w4a16_gemm",
    "native",
    PLATFORMS,
    available=_availability("w4a16_gemm"),
    supports=_w4a16_gemm_supports,
)(_forward("w4a16_gemm"))


def _decode_with_rope_supports(positions, q, k, v, cos_sin_cache, *rest) -> str | None:
    # The CPU form (csrc/cpu/bindings.cpp) runs the two ops' kernels in turn: anything they take.
    # The CUDA kernel (csrc/cuda/attention/decode_new_token.cuh) keeps q in registers (head_dim
    # 64 / 128), rotates whole dim pairs (a neox rotary_dim a multiple of 4) and reads k / v rows 16
    # bytes at a time; the torch backend runs the two ops in turn otherwise.
    if q.device.type == "cpu":
        return None
    is_neox = rest[-1]
    if q.dtype not in (torch.float16, torch.bfloat16):
        return "the CUDA kernel takes float16 and bfloat16"
    if q.shape[2] not in (64, 128):
        return "the CUDA kernel takes head_dim 64 and 128"
    if is_neox and cos_sin_cache.shape[1] % 4:
        return "the CUDA kernel takes a neox rotary_dim that is a multiple of 4"
    for t in (k, v):
        if t.shape[0] > 1 and t.stride(0) % 8 or (t.storage_offset() * t.element_size()) % 16:
            return "the CUDA kernel reads k and v rows 16-byte aligned"
    return None


registry.register(
    "paged_decode_attention_with_rope_",
    "native",
    {"cpu": "verified", "cuda": "verified"},
    available=_availability("paged_decode_attention_with_rope_"),
    supports=_decode_with_rope_supports,
)(_forward("paged_decode_attention_with_rope_"))


W8A16_GROUP_SIZES = (32, 64, 128)


def _w8a16_gemm_supports(a, qweight, scales, group_size) -> str | None:
    # The C++ kernel (csrc/cpu/w8a16_kernels.h): contiguous operands, groups of whole vectors.
    if group_size not in W8A16_GROUP_SIZES:
        return f"group_size must be one of {W8A16_GROUP_SIZES}, got {group_size}"
    if not (a.is_contiguous() and qweight.is_contiguous() and scales.is_contiguous()):
        return "a, qweight and scales must be contiguous"
    return None


# CPU only: no CUDA kernel (the reference runs it there). Tested in CI (AVX2, scalar).
registry.register(
    "w8a16_gemm", "native", {"cpu": "verified"}, available=_availability("w8a16_gemm"), supports=_w8a16_gemm_supports
)(_forward("w8a16_gemm"))

# The schema takes the granularity as an int (python/kernels/ops/fp8.py's names, in order).
FP8_GRANULARITY_CODES = {"tensor": 0, "token": 1, "group128": 2}


def _quantize_fp8(x, granularity, scale, column_major_scales):
    return torch.ops.kernels.quantize_fp8(x, FP8_GRANULARITY_CODES[granularity], scale, column_major_scales)


# CUDA only: on the CPU the reference quantises (FP8 there is a correctness path, not a fast one).
registry.register("quantize_fp8", "native", {"cuda": "verified"}, available=_availability("quantize_fp8"))(
    _quantize_fp8
)


def _fp8_gemm_supports(a, b, scale_a, scale_b, out_dtype, bias, use_fast_accum) -> str | None:
    # The CUTLASS kernels (csrc/cuda/quant/fp8_gemm*): wgmma and TMA, sm_90a instructions; TMA
    # moves 16-byte aligned rows.
    if torch.cuda.get_device_capability(a.device) != (9, 0):
        return "the CUTLASS FP8 GEMM runs on sm_90 (Hopper) GPUs only"
    if out_dtype not in (torch.bfloat16, torch.float16):
        return "the CUDA FP8 GEMM writes bfloat16 or float16 (float32 output runs on another backend)"
    if a.shape[1] % 16 or b.shape[0] % 16:
        return f"K and N must be multiples of 16 for TMA; got K={a.shape[1]}, N={b.shape[0]}"
    if any(t is not None and t.numel() and t.data_ptr() % 16 for t in (a, b, bias)):
        return "a, b and bias must be 16-byte aligned for TMA"
    return None


registry.register(
    "fp8_gemm", "native", {"cuda": "verified"}, available=_availability("fp8_gemm"), supports=_fp8_gemm_supports
)(_forward("fp8_gemm"))
