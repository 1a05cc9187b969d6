"""The ``torch`` backend: each op as the composite of torch ops that model code usually writes.

It runs wherever torch runs (the portable fallback on XPU and ROCm without Triton) and is the
``torch_eager`` peer of ``kernels bench`` (and, compiled, the ``torch_compile`` peer).
Verification: ``registry.TORCH_OPS_PLATFORMS``.
"""

from .. import registry
from . import activation, attention_rope, fp8, norm, quant, rope

OPS = {
    "rms_norm": norm.rms_norm,
    "fused_add_rms_norm_": norm.fused_add_rms_norm_,
    "rotary_embedding_": rope.rotary_embedding_,
    "rotary_embedding_and_store_kv_": rope.rotary_embedding_and_store_kv_,
    "silu_and_mul": activation.silu_and_mul,
    "gelu_and_mul": activation.gelu_and_mul,
    "w4a16_gemm": quant.w4a16_gemm,
    "paged_decode_attention_with_rope_": attention_rope.paged_decode_attention_with_rope_,
    "fp8_gemm": fp8.fp8_gemm,
}

for _name, _fn in OPS.items():
    registry.register(_name, "torch", registry.TORCH_OPS_PLATFORMS)(_fn)
