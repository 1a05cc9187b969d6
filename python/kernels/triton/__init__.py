"""The ``triton`` backend: portable GPU kernels (ROCm, XPU, and a CUDA fallback) written in Triton.

Triton is optional. Importing this package never imports triton: the kernel modules (norm, rope,
activation, attention, quant, fp8) load on the first call, and ``available`` reports why the
backend cannot run when ``import triton`` fails.

Verification: tested on the H100 (CUDA); on ROCm and XPU the kernels are tested under the Triton
interpreter and compiled ahead of time for AMD (``python -m kernels.triton.aot``), hence
``emulated``. With ``TRITON_INTERPRET=1`` set before import, the interpreter runs the kernels on CPU
tensors, and the backend registers for ``cpu`` too (that is how the test suite runs it without a GPU);
being slow, the interpreter is used only where the triton backend is forced, never chosen by default.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from .. import platform as _platform
from .. import registry

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

PLATFORMS = {"cuda": "verified", "rocm": "emulated", "xpu": "emulated"}
if INTERPRETER:
    PLATFORMS["cpu"] = "emulated"

# op -> (module, function)
OPS = {
    "rms_norm": ("norm", "rms_norm"),
    "fused_add_rms_norm_": ("norm", "fused_add_rms_norm_"),
    "rotary_embedding_": ("rope", "rotary_embedding_"),
    "rotary_embedding_and_store_kv_": ("rope", "rotary_embedding_and_store_kv_"),
    "silu_and_mul": ("activation", "silu_and_mul"),
    "gelu_and_mul": ("activation", "gelu_and_mul"),
    "store_kv_cache": ("attention", "store_kv_cache"),
    "paged_decode_attention": ("attention", "paged_decode_attention"),
    "paged_prefill_attention": ("attention", "paged_prefill_attention"),
    "merge_attention_states": ("attention", "merge_attention_states"),
    "w4a16_gemm": ("quant", "w4a16_gemm"),
    "quantize_fp8": ("fp8", "quantize_fp8"),
    "fp8_gemm": ("fp8", "fp8_gemm"),
}


@functools.lru_cache(maxsize=None)
def _import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken installation
        return f"triton is not importable ({type(e).__name__}: {e}); pip install triton"
    return None


# The Triton backend plugin each GPU platform needs (the interpreter needs none).
_TRITON_BACKEND = {"cuda": "nvidia", "rocm": "amd", "xpu": "intel"}


def available(platform: str) -> str | None:
    reason = _import_error()
    if reason is not None or platform not in _TRITON_BACKEND:
        return reason
    from triton.backends import backends

    if _TRITON_BACKEND[platform] not in backends:
        return (
            f"the installed triton has no {_TRITON_BACKEND[platform]!r} backend for {platform} "
            f"(it has: {', '.join(sorted(backends)) or 'none'})"
        )
    return None


def supports(*args) -> str | None:
    if INTERPRETER and registry.forced_backend() != "triton" and _platform.platform_of(*args) == "cpu":
        return "the Triton interpreter runs CPU tensors only when the triton backend is forced"
    return None


def fp8_supports(*args) -> str | None:
    """Triton has no float8_e4m3fn type on NVIDIA GPUs below sm_89 (no FP8 hardware)."""
    t = args[0]
    if t.device.type == "cuda" and not torch.version.hip and torch.cuda.get_device_capability(t.device) < (8, 9):
        return "Triton supports float8_e4m3fn on NVIDIA GPUs from sm_89 on"
    return supports(*args)


# Ops whose arguments need more than ``supports``.
SUPPORTS = {"quantize_fp8": fp8_supports, "fp8_gemm": fp8_supports}


def _lazy(module: str, name: str):
    """A function that imports ``module`` (and so triton) on its first call, then calls ``name``."""
    fn = None

    def call(*args):
        nonlocal fn
        if fn is None:
            fn = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        return fn(*args)

    call.__name__ = call.__qualname__ = name
    call.__module__ = f"{__name__}.{module}"
    return call


for _op, (_module, _name) in OPS.items():
    registry.register(_op, "triton", PLATFORMS, supports=SUPPORTS.get(_op, supports), available=available)(_lazy(_module, _name))
