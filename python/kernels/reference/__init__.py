"""Plain-torch float32 references: the ground truth of every test, and the backend of last resort.

Written for clarity, not speed: upcast to float32, compute, round once to the input dtype.
"""

from .activation import gelu_and_mul, silu_and_mul
from .fp8 import fp8_gemm, quantize_fp8
from .attention import merge_attention_states, paged_decode_attention, paged_prefill_attention, store_kv_cache
from .attention_rope import paged_decode_attention_with_rope_
from .norm import fused_add_rms_norm_, rms_norm
from .quant import w4a16_gemm, w8a16_gemm
from .rope import rotary_embedding_, rotary_embedding_and_store_kv_

OPS = {
    "rms_norm": rms_norm,
    "fused_add_rms_norm_": fused_add_rms_norm_,
    "rotary_embedding_": rotary_embedding_,
    "rotary_embedding_and_store_kv_": rotary_embedding_and_store_kv_,
    "silu_and_mul": silu_and_mul,
    "gelu_and_mul": gelu_and_mul,
    "store_kv_cache": store_kv_cache,
    "paged_decode_attention": paged_decode_attention,
    "paged_decode_attention_with_rope_": paged_decode_attention_with_rope_,
    "paged_prefill_attention": paged_prefill_attention,
    "merge_attention_states": merge_attention_states,
    "w4a16_gemm": w4a16_gemm,
    "w8a16_gemm": w8a16_gemm,
    "quantize_fp8": quantize_fp8,
    "fp8_gemm": fp8_gemm,
}
