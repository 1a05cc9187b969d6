"""Benchmark spec of the scaled FP8 GEMM (``fp8_gemm``).

Shape ``MxNxK`` (DESIGN.md's GEMM order): ``a [M, K]`` e4m3 times ``b [N, K]`` e4m3 transposed.
``--dtype`` is the output's dtype. Variants, by the scales' granularity:

- ``per_tensor``: ``[1]`` and ``[1]``;
- ``per_token``: ``[M]`` per token and ``[N]`` per channel;
- ``per_token_fast_accum``: the same with ``use_fast_accum=True``;
- ``block128``: DeepSeek-V3 blockwise, ``[M, K/128]`` per 1 x 128 activation group (column-major,
  as ``quantize_fp8(..., column_major_scales=True)`` gives it to the TMA GEMMs) and
  ``[N/128, K/128]`` per 128 x 128 weight tile.

Bytes: both operands, the scales and the output, once; flops ``2 * M * N * K``; the ceiling is the
measured FP8 matmul peak. Peers (bench/peers_fp8.py): torch's own scaled GEMMs on cuBLAS —
``scaled_mm_tensor``, ``scaled_mm_rowwise``, ``scaled_mm_rowwise_fast`` and ``scaled_mm_blockwise``,
each for its variant — and
our Triton backend.
"""

from __future__ import annotations

import torch

from .. import composite as _composite
from .. import reference as _reference
from ..ops import fp8 as _fp8
from .specs import OpSpec, ShapeError, dtype_size

VARIANTS = ("per_tensor", "per_token", "per_token_fast_accum", "block128")
# DeepSeek-V3's projections (N x K), at the token counts of decode batches up to long prefills.
DEEPSEEK_NK = ((7168, 18432), (18432, 7168), (24576, 1536))
DEEPSEEK_M = (64, 128, 256, 512, 1024, 2048, 4096)
DEEPSEEK_SHAPES = tuple(f"{m}x{n}x{k}" for n, k in DEEPSEEK_NK for m in DEEPSEEK_M)


def _granularity(variant: str) -> str:
    """The scales' granularity of a variant (``per_token_fast_accum`` has ``per_token``'s)."""
    return variant.removesuffix("_fast_accum")


def _scale_count(dims, variant) -> int:
    m, n, k = dims
    if variant == "per_tensor":
        return 2
    if _granularity(variant) == "per_token":
        return m + n
    return (m + _fp8.blocks(n)) * _fp8.blocks(k)


def _bytes(dims, dtype, variant):
    m, n, k = dims
    return m * k + n * k + 4 * _scale_count(dims, variant) + m * n * dtype_size(dtype)


def _flops(dims, dtype, variant):
    m, n, k = dims
    return 2 * m * n * k


def _inputs(dims, dtype, device, variant, gen):
    m, n, k = dims
    a = (torch.randn((m, k), device=device, generator=gen) * 16).to(_fp8.FP8)
    b = (torch.randn((n, k), device=device, generator=gen) * 16).to(_fp8.FP8)
    unit = 1.0 / (16 * k**0.25)  # per side: outputs O(1)
    shapes = {
        "per_tensor": ((1,), (1,)),
        "per_token": ((m,), (n,)),
        "block128": ((_fp8.blocks(k), m), (_fp8.blocks(n), _fp8.blocks(k))),
    }[_granularity(variant)]
    sa, sb = ((torch.rand(shape, device=device, generator=gen) + 0.5) * unit for shape in shapes)
    if variant == "block128":
        sa = sa.T  # [M, K/128] with strides (1, M)
    return (a, b, sa, sb, dtype, None, variant != _granularity(variant))


def _validate(text, dims):
    if any(d % 16 for d in dims[1:]):
        raise ShapeError(f"bad shape {text!r} for fp8_gemm: N and K must be multiples of 16 (FP8 rows of 16-byte units)")


FP8_SPECS: dict[str, OpSpec] = {
    "fp8_gemm": OpSpec(
        name="fp8_gemm",
        summary="(a * scale_a) @ (b * scale_b).T with e4m3 operands, per-tensor, per-token or blockwise scales",
        layout="MxNxK",
        layout_doc="a [M, K] e4m3; b [N, K] e4m3; variant per_tensor, per_token or block128; --dtype is the output's",
        variants=VARIANTS,
        default_shapes={},
        inplace=False,
        public=_fp8.fp8_gemm,
        composite=_composite.fp8.fp8_gemm,
        reference=_reference.fp8_gemm,
        _bytes=_bytes,
        _inputs=_inputs,
        _outputs=lambda args, result: [result],
        _validate=_validate,
        ceiling="fp8_tflops",
        _flops=_flops,
        peers={"cuda": ("scaled_mm_tensor", "scaled_mm_rowwise", "scaled_mm_rowwise_fast", "scaled_mm_blockwise", "triton"), "cpu": ()},
        default_cases={
            "cuda": (
                ("per_tensor", "8192x8192x8192"),
                *(("per_token", s) for s in ("8192x8192x8192", *DEEPSEEK_SHAPES)),
                *(("per_token_fast_accum", s) for s in ("8192x8192x8192", *DEEPSEEK_SHAPES)),
                *(("block128", s) for s in ("8192x8192x8192", *DEEPSEEK_SHAPES)),
            ),
            # FP8 on the CPU is dequantisation (correct, not fast): one small case per variant.
            "cpu": tuple((v, "16x1024x1024") for v in VARIANTS),
        },
    ),
}
