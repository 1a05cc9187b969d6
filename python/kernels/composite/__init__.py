"""The ``torch`` backend: each op as the composite of torch ops that model code usually writes.

It runs wherever torch runs (the portable fallback on XPU and ROCm without Triton) and is the
``torch_eager`` peer of ``kernels bench`` (and, compiled, the ``torch_compile`` peer).
Verification: tested on CPU in CI and on CUDA on the GPU machine; on ROCm and XPU the same torch
ops run untested on that hardware, hence ``emulated``.
"""

from .. import registry
from . import activation, norm, rope

PLATFORMS = {"cpu": "verified", "cuda": "verified", "rocm": "emulated", "xpu": "emulated"}

OPS = {
    "rms_norm": norm.rms_norm,
    "fused_add_rms_norm_": norm.fused_add_rms_norm_,
    "rotary_embedding_": rope.rotary_embedding_,
    "silu_and_mul": activation.silu_and_mul,
    "gelu_and_mul": activation.gelu_and_mul,
}

for _name, _fn in OPS.items():
    registry.register(_name, "torch", PLATFORMS)(_fn)
