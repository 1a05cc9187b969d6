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
# Ops whose CUDA kernel is not written yet: the registry runs the next backend (Triton) there.
CPU_ONLY = {"paged_prefill_attention"}
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


def _ops():
    kernels = torch.ops.kernels
    return {
        "rms_norm": lambda x, weight, eps: kernels.rms_norm(x, weight, eps),
        "fused_add_rms_norm_": lambda x, residual, weight, eps: kernels.fused_add_rms_norm_(x, residual, weight, eps),
        "rotary_embedding_": lambda positions, q, k, cache, is_neox: kernels.rotary_embedding_(
            positions, q, k, cache, is_neox
        ),
        "silu_and_mul": lambda x: kernels.silu_and_mul(x),
        "gelu_and_mul": lambda x, approximate: kernels.gelu_and_mul(x, approximate == "tanh"),
        "store_kv_cache": lambda *args: kernels.store_kv_cache(*args),
        "paged_decode_attention": lambda *args: kernels.paged_decode_attention(*args),
        "paged_prefill_attention": lambda *args: kernels.paged_prefill_attention(*args),
        "merge_attention_states": lambda *args: kernels.merge_attention_states(*args),
    }


if library.load() is None:
    register_fakes()
for _name, _fn in _ops().items():
    _platforms = {"cpu": PLATFORMS["cpu"]} if _name in CPU_ONLY else PLATFORMS
    registry.register(_name, "native", _platforms, available=_availability(_name))(_fn)
