"""kernels: LLM inference kernels behind one API across NVIDIA, ROCm, Intel XPU and CPU.

Each op validates its arguments and dispatches, through the registry, to the best implementation
for the platform its tensors live on. ``kernels.backend("triton")`` forces one backend.
"""

from importlib.metadata import PackageNotFoundError, version

from . import composite, native, triton  # noqa: F401  (each registers its implementations)
from .ops.activation import gelu_and_mul, silu_and_mul
from .ops.attention import merge_attention_states, paged_decode_attention, paged_prefill_attention, store_kv_cache
from .ops.attention_rope import paged_decode_attention_with_rope_
from .ops.fp8 import fp8_gemm, quantize_fp8
from .ops.norm import fused_add_rms_norm_, rms_norm
from .ops.quant import (
    Int4Weight,
    dequantize_int4,
    from_awq,
    from_gguf_q4_0,
    from_gguf_q4_1,
    from_gptq,
    pack_int4,
    unpack_int4,
    w4a16_gemm,
)
from .ops.quant_int8 import Int8Weight, dequantize_int8, from_gguf_q8_0, w8a16_gemm
from .ops.rope import rotary_embedding_, rotary_embedding_and_store_kv_
from .reference import registration as _reference_registration  # noqa: F401
from .platform import local_platforms as _local_platforms
from .registry import BackendUnavailableError, backend
from .registry import prepare as _prepare

_prepare(_local_platforms())

try:
    __version__ = version("kernels")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "rms_norm",
    "fused_add_rms_norm_",
    "rotary_embedding_",
    "rotary_embedding_and_store_kv_",
    "silu_and_mul",
    "gelu_and_mul",
    "store_kv_cache",
    "paged_decode_attention",
    "paged_decode_attention_with_rope_",
    "paged_prefill_attention",
    "merge_attention_states",
    "w4a16_gemm",
    "Int4Weight",
    "pack_int4",
    "unpack_int4",
    "dequantize_int4",
    "from_gptq",
    "from_awq",
    "from_gguf_q4_0",
    "from_gguf_q4_1",
    "w8a16_gemm",
    "Int8Weight",
    "dequantize_int8",
    "from_gguf_q8_0",
    "quantize_fp8",
    "fp8_gemm",
    "backend",
    "BackendUnavailableError",
    "__version__",
]
