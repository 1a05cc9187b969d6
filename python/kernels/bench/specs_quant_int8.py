"""Benchmark spec of the INT8 weight-only GEMM (``w8a16_gemm``).

Shape ``MxNxK`` (DESIGN.md's GEMM order): ``a [M, K]`` times the dequantised weight ``[N, K]``
transposed. Variant ``groupG``: G the group size (32, 64, 128). Scales are float16 for float32
activations (GGUF Q8_0's type), else the activations' dtype.

Bytes: the int8 weight (N * K) + scales + ``a`` + the output, each once; flops 2 * M * N * K. The
decode shapes here read the weight far more than they compute, so the ceiling is the device read
bandwidth. Peer: ``fp32_matmul`` (CPU), ``torch.matmul`` of ``a`` by the weight dequantised ahead of
time to float32 (peers.py): what the serving layer ran for a Q8_0 LM head before this op.
"""

from __future__ import annotations

import re

import torch

from .. import reference as _reference
from ..ops import quant as _quant
from ..ops import quant_int8 as _quant_int8
from .specs import OpSpec, ShapeError, dtype_size
from .specs_quant import scale_dtype

_VARIANT = re.compile(r"^group(\d+)$")


def parse_variant(text: str) -> int:
    m = _VARIANT.match(text.strip().lower())
    if m is None or int(m.group(1)) not in _quant.GROUP_SIZES:
        groups = ", ".join(map(str, _quant.GROUP_SIZES))
        raise ShapeError(f"bad variant {text!r} for w8a16_gemm: groupG, G one of {groups} (e.g. group32)")
    return int(m.group(1))


def _check_case(variant: str, dims) -> str | None:
    group = parse_variant(variant)
    if dims[2] % group:
        return f"K ({dims[2]}) must be a multiple of the group size {group}"
    return None


def _bytes(dims, dtype, variant):
    m, n, k = dims
    scales = n * (k // parse_variant(variant)) * dtype_size(scale_dtype(dtype))
    return n * k + scales + (m * k + m * n) * dtype_size(dtype)


def _flops(dims, dtype, variant):
    m, n, k = dims
    return 2 * m * n * k


def _inputs(dims, dtype, device, variant, gen):
    m, n, k = dims
    group = parse_variant(variant)
    qweight = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=device, generator=gen)
    # |w| about 1 / sqrt(K), so outputs of N(0, 1) activations are O(1)
    s = (torch.rand((n, k // group), device=device, generator=gen) + 0.5) / (74 * k**0.5)
    a = torch.randn((m, k), device=device, generator=gen).to(dtype)
    return (a, qweight, s.to(scale_dtype(dtype)), group)


def _public(a, qweight, scales, group_size):
    return _quant_int8.w8a16_gemm(a, qweight, scales, group_size=group_size)


def _validate(text, dims):
    if dims[2] % min(_quant.GROUP_SIZES):
        raise ShapeError(f"bad shape {text!r} for w8a16_gemm: K must be a multiple of {min(_quant.GROUP_SIZES)} (a group)")


QUANT_INT8_SPECS: dict[str, OpSpec] = {
    "w8a16_gemm": OpSpec(
        name="w8a16_gemm",
        summary="a @ W.T with W [N, K] dequantised from int8 groups (w = q * s; GGUF Q8_0)",
        layout="MxNxK",
        layout_doc="a [M, K]; qweight int8 [N, K]; scales [N, K/G]; variant groupG",
        variants=("group32",),
        default_shapes={},
        inplace=False,
        public=_public,
        composite=None,
        reference=_reference.w8a16_gemm,
        _bytes=_bytes,
        _inputs=_inputs,
        _outputs=lambda args, result: [result],
        _validate=_validate,
        ceiling="read_gbps",
        _flops=_flops,
        peers={"cpu": ("fp32_matmul",)},
        _parse_variant=lambda text: f"group{parse_variant(text)}",
        _check_case=_check_case,
        default_cases={
            # SmolLM2-135M's LM head, tied to its Q8_0 token embedding (vocab 49152, hidden 576):
            # one decode token, and four.
            "cpu": (("group32", "1x49152x576"), ("group32", "4x49152x576")),
        },
    ),
}
