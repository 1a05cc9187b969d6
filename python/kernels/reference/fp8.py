"""FP8 (e4m3) quantisation and the scaled FP8 GEMM, in float32.

Scales are float32 and multiply: ``x ≈ q * scale``. A scale is ``amax / 448`` (448 is e4m3's
largest finite value), with ``amax`` the largest magnitude of the values it covers, floored at
``AMAX_FLOOR`` so that an all-zero block gets a finite scale and quantises to zeros.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
AMAX_FLOOR = 1e-10
BLOCK = 128


def blocks(n: int) -> int:
    """How many 128-wide blocks cover ``n``."""
    return -(-n // BLOCK)


def _expand(scale: torch.Tensor, rows: int, cols: int, row_block: int, col_block: int) -> torch.Tensor:
    """A scale per ``row_block x col_block`` tile, repeated to ``[rows, cols]`` (edge tiles cut)."""
    return scale.float().repeat_interleave(row_block, dim=0)[:rows].repeat_interleave(col_block, dim=1)[:, :cols]


def _scale_of(amax: torch.Tensor) -> torch.Tensor:
    """``max(amax, AMAX_FLOOR) / 448`` as an IEEE float32 division on every device: torch on CUDA
    turns a division by a Python number into a multiply by its reciprocal, one ulp off for about a
    third of the values, enough to move codes that sit on a rounding boundary."""
    floored = amax.clamp_min(AMAX_FLOOR)
    return floored / torch.full_like(floored, FP8_MAX)


def quantize_fp8(x: torch.Tensor, granularity: str, scale: torch.Tensor | None, column_major_scales: bool):
    m, k = x.shape
    xf = x.float()
    if granularity == "tensor":
        amax = xf.abs().amax() if xf.numel() else xf.new_zeros(())  # zero tokens: the floor
        s = scale.float().reshape(1) if scale is not None else _scale_of(amax).reshape(1)
        full = s.expand(m, k)
    elif granularity == "token":
        s = _scale_of(xf.abs().amax(dim=1))
        full = s[:, None].expand(m, k)
    else:  # group128
        pad = blocks(k) * BLOCK - k
        groups = torch.nn.functional.pad(xf.abs(), (0, pad)).view(m, blocks(k), BLOCK)
        s = _scale_of(groups.amax(dim=2))
        full = _expand(s, m, k, 1, BLOCK)
        if column_major_scales:
            s = s.T.contiguous().T
    q = (xf / full).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, s


def dequantize_a(a: torch.Tensor, scale_a: torch.Tensor) -> torch.Tensor:
    """float32 ``[M, K]``: ``scale_a`` ``[1]``, ``[M]`` or ``[M, ceil(K / 128)]``."""
    m, k = a.shape
    if scale_a.dim() == 2:
        return a.float() * _expand(scale_a, m, k, 1, BLOCK)
    return a.float() * (scale_a.float()[:, None] if scale_a.numel() == m and m != 1 else scale_a.float())


def dequantize_b(b: torch.Tensor, scale_b: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, K]``: ``scale_b`` ``[1]``, ``[N]`` or ``[ceil(N / 128), ceil(K / 128)]``."""
    n, k = b.shape
    if scale_b.dim() == 2:
        return b.float() * _expand(scale_b, n, k, BLOCK, BLOCK)
    return b.float() * (scale_b.float()[:, None] if scale_b.numel() == n and n != 1 else scale_b.float())


def fp8_gemm(a, b, scale_a, scale_b, out_dtype, bias, use_fast_accum=False):
    out = dequantize_a(a, scale_a) @ dequantize_b(b, scale_b).T
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
