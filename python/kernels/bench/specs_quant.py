"""Benchmark spec of the INT4 weight-only GEMM (``w4a16_gemm``).

Shape ``MxNxK`` (DESIGN.md's GEMM order): ``a [M, K]`` times the dequantised weight ``[N, K]``
transposed. Variant ``MODE+groupG``: MODE ``sym`` (``(q - 8) * s``), ``zp`` (uint8 zero points) or
``min`` (float mins, GGUF Q4_1), G the group size (32, 64, 128). Scales (and mins) are float16 for
float32 activations (GGUF's and GPTQ/AWQ checkpoints' type), else the activations' dtype.

Bytes: the packed weight (N * K / 2) + scales (+ zero points or mins) + ``a`` + the output, each
once; flops 2 * M * N * K. The decode shapes here read the weight far more than they compute, so
the ceiling is the device read bandwidth. Peers: ``bf16_matmul`` (GPU) and ``fp32_matmul`` (CPU),
``torch.matmul`` of ``a`` by the weight dequantised ahead of time to that dtype (peers.py).
"""

from __future__ import annotations

import re

import torch

from .. import composite as _composite
from .. import reference as _reference
from ..ops import quant as _quant
from .specs import OpSpec, ShapeError, dtype_size

MODES = ("sym", "zp", "min")
_VARIANT = re.compile(r"^(sym|zp|min)\+group(\d+)$")


def parse_variant(text: str) -> tuple[str, int]:
    m = _VARIANT.match(text.strip().lower())
    if m is None or int(m.group(2)) not in _quant.GROUP_SIZES:
        groups = ", ".join(map(str, _quant.GROUP_SIZES))
        raise ShapeError(f"bad variant {text!r} for w4a16_gemm: MODE+groupG, MODE one of {', '.join(MODES)}, G one of {groups} (e.g. sym+group128)")
    return m.group(1), int(m.group(2))


def _canonical(text: str) -> str:
    mode, group = parse_variant(text)
    return f"{mode}+group{group}"


def _check_case(variant: str, dims) -> str | None:
    _, group = parse_variant(variant)
    if dims[2] % group:
        return f"K ({dims[2]}) must be a multiple of the group size {group}"
    return None


def scale_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float16 if dtype == torch.float32 else dtype


def _bytes(dims, dtype, variant):
    m, n, k = dims
    mode, group = parse_variant(variant)
    groups = n * (k // group)
    params = groups * dtype_size(scale_dtype(dtype))
    if mode == "zp":
        params += groups  # uint8
    elif mode == "min":
        params += groups * dtype_size(scale_dtype(dtype))
    return n * k // 2 + params + (m * k + m * n) * dtype_size(dtype)


def _flops(dims, dtype, variant):
    m, n, k = dims
    return 2 * m * n * k


def _inputs(dims, dtype, device, variant, gen):
    m, n, k = dims
    mode, group = parse_variant(variant)
    groups = k // group
    sdt = scale_dtype(dtype)
    words = torch.randint(-(2**31), 2**31, (n, k // 8), dtype=torch.int64, device=device, generator=gen)
    qweight = words.to(torch.int32)
    # |w| about 1 / sqrt(K), so outputs of N(0, 1) activations are O(1)
    s = (torch.rand((n, groups), device=device, generator=gen) + 0.5) / (4.6 * k**0.5)
    zero_points = torch.randint(0, 16, (n, groups), dtype=torch.uint8, device=device, generator=gen) if mode == "zp" else None
    mins = (-7.5 * s).to(sdt) if mode == "min" else None
    a = torch.randn((m, k), device=device, generator=gen).to(dtype)
    return (a, qweight, s.to(sdt), zero_points, mins, group)


def _public(a, qweight, scales, zero_points, mins, group_size):
    return _quant.w4a16_gemm(a, qweight, scales, zero_points=zero_points, mins=mins, group_size=group_size)


def _validate(text, dims):
    if dims[2] % min(_quant.GROUP_SIZES):
        raise ShapeError(f"bad shape {text!r} for w4a16_gemm: K must be a multiple of {min(_quant.GROUP_SIZES)} (a group)")


_GPU_SHAPES = tuple(f"{m}x8192x8192" for m in (1, 4, 16, 64))

QUANT_SPECS: dict[str, OpSpec] = {
    "w4a16_gemm": OpSpec(
        name="w4a16_gemm",
        summary="a @ W.T with W [N, K] dequantised from 4-bit groups (symmetric, zero points or mins)",
        layout="MxNxK",
        layout_doc="a [M, K]; qweight int32 [N, K/8]; scales [N, K/G]; variant MODE+groupG (sym, zp, min)",
        variants=tuple(f"{mode}+group128" for mode in MODES),
        default_shapes={},
        inplace=False,
        public=_public,
        composite=_composite.quant.w4a16_gemm,
        reference=_reference.w4a16_gemm,
        _bytes=_bytes,
        _inputs=_inputs,
        _outputs=lambda args, result: [result],
        _validate=_validate,
        ceiling="read_gbps",
        _flops=_flops,
        peers={"cuda": ("bf16_matmul",), "cpu": ("fp32_matmul",)},
        _parse_variant=_canonical,
        _check_case=_check_case,
        default_cases={
            "cuda": tuple((f"{mode}+group128", shape) for mode in MODES for shape in _GPU_SHAPES),
            # SmolLM2-135M's MLP projections as its Q4_1 GGUF stores them (hidden 576, intermediate 1536)
            "cpu": (("min+group32", "1x1536x576"), ("min+group32", "1x576x1536")),
        },
    ),
}
