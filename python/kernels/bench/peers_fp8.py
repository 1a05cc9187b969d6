"""Peers of ``fp8_gemm``: torch's scaled GEMMs (cuBLAS on NVIDIA), each for the granularity it takes.

- ``scaled_mm_tensor`` (``per_tensor``) and ``scaled_mm_rowwise`` (``per_token``):
  ``torch._scaled_mm`` with scalar / ``[M, 1]`` x ``[1, N]`` scales and its default accumulation
  (no ``use_fast_accum``: cuBLAS promotes the tensor cores' sums into float32 as our kernels do);
  ``scaled_mm_rowwise_fast`` (``per_token_fast_accum``) with ``use_fast_accum=True``.
- ``scaled_mm_blockwise`` (``block128``): ``torch.nn.functional.scaled_mm`` with the
  ``BlockWise1x128`` and ``BlockWise128x128`` recipes.

``prepare`` lays the scales out as each call wants them, outside timing.
"""

from __future__ import annotations

import torch

from .peers import Peer, PeerUnavailable
from .specs import OpSpec

VARIANT_OF = {
    "scaled_mm_tensor": "per_tensor",
    "scaled_mm_rowwise": "per_token",
    "scaled_mm_rowwise_fast": "per_token_fast_accum",
    "scaled_mm_blockwise": "block128",
}
NAMES = tuple(VARIANT_OF)


def _scaled_mm(a, b_t, scale_a, scale_b, out_dtype, bias, use_fast_accum):
    return torch._scaled_mm(a, b_t, scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=out_dtype, use_fast_accum=use_fast_accum)


def _blockwise(a, b_t, scale_a, scale_b, out_dtype, bias):
    from torch.nn.functional import ScalingType, scaled_mm

    return scaled_mm(
        a, b_t, scale_a, ScalingType.BlockWise1x128, scale_b, ScalingType.BlockWise128x128, bias=bias, output_dtype=out_dtype
    )


def make(name: str, spec: OpSpec, variant: str, device: torch.device) -> Peer:
    if spec.name != "fp8_gemm":
        raise PeerUnavailable(f"{name} is a peer of fp8_gemm, not of {spec.name}")
    if variant != VARIANT_OF[name]:
        raise PeerUnavailable(f"{name} takes {VARIANT_OF[name]} scales, not {variant}")
    if device.type != "cuda":
        raise PeerUnavailable("torch's scaled GEMMs need FP8 tensor cores (CUDA sm_89+)")
    if name == "scaled_mm_blockwise":
        import torch.nn.functional as F

        if not hasattr(F, "scaled_mm"):
            raise PeerUnavailable(f"torch {torch.__version__} has no torch.nn.functional.scaled_mm")

        def prepare(args):
            a, b, sa, sb, out_dtype, bias, _ = args  # blockwise has no fast accumulation
            # torch wants scale_a [M, K/128] column-major and scale_b [K/128, N/128] with strides
            # (1, K/128): the transpose of ours, as b is given transposed.
            return (a, b.T, sa.T.contiguous().T, sb.T, out_dtype, bias)

        return Peer(name, _blockwise, prepare=prepare, outputs=lambda args, out: [out])

    def prepare(args):
        a, b, sa, sb, out_dtype, bias, fast = args
        if variant == "per_tensor":
            return (a, b.T, sa.reshape(()), sb.reshape(()), out_dtype, bias, fast)
        m, n = a.shape[0], b.shape[0]
        return (a, b.T, sa.expand(m).reshape(m, 1).contiguous(), sb.expand(n).reshape(1, n).contiguous(), out_dtype, bias, fast)

    return Peer(name, _scaled_mm, prepare=prepare, outputs=lambda args, out: [out])
