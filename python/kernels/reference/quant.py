"""Weight-only GEMMs: dequantise the weight to float32, then one float32 matmul.

INT4 (docs/api/quant.md): ``qweight`` int32 ``[N, K // 8]``, element ``(n, k)`` in bits
``4 * (k % 8)`` .. ``4 * (k % 8) + 3`` of ``qweight[n, k // 8]``; one scale (and zero point or min) per
``group_size`` consecutive ``k`` of a row.

INT8: ``qweight`` int8 ``[N, K]``, ``w = qweight * scales[n, k // group_size]`` (symmetric, GGUF Q8_0).
"""

from __future__ import annotations

import torch


def unpack(qweight: torch.Tensor) -> torch.Tensor:
    """``[N, K // 8]`` int32 -> ``[N, K]`` int32 values 0..15, low nibble first."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=qweight.device)
    nibbles = (qweight[:, :, None] >> shifts) & 0xF  # arithmetic shift; the mask drops the sign
    return nibbles.reshape(qweight.shape[0], qweight.shape[1] * 8)


def dequantize(qweight, scales, zero_points, mins, group_size: int) -> torch.Tensor:
    """The float32 ``[N, K]`` weight: ``(q - z) * s``, ``q * s + m``, or ``(q - 8) * s``."""
    q = unpack(qweight).float()
    s = scales.float().repeat_interleave(group_size, dim=1)
    if zero_points is not None:
        return (q - zero_points.float().repeat_interleave(group_size, dim=1)) * s
    if mins is not None:
        return q * s + mins.float().repeat_interleave(group_size, dim=1)
    return (q - 8.0) * s


def w4a16_gemm(a, qweight, scales, zero_points, mins, group_size: int) -> torch.Tensor:
    w = dequantize(qweight, scales, zero_points, mins, group_size)
    return (a.float() @ w.T).to(a.dtype)


def dequantize_int8(qweight, scales, group_size: int) -> torch.Tensor:
    """The float32 ``[N, K]`` weight ``q * s``."""
    return qweight.float() * scales.float().repeat_interleave(group_size, dim=1)


def w8a16_gemm(a, qweight, scales, group_size: int) -> torch.Tensor:
    w = dequantize_int8(qweight, scales, group_size)
    return (a.float() @ w.T).to(a.dtype)
