"""FP8 (e4m3) quantisation and the scaled FP8 GEMM, with three scale granularities.

Values are ``torch.float8_e4m3fn``; scales are float32 and multiply (``x ≈ q * scale``). The
granularities (docs/api/fp8.md):

- per-tensor: one scale, ``[1]``;
- per-token (activations, ``[M]``) and per-channel (weights, ``[N]``);
- blockwise, as DeepSeek-V3: activations ``[M, ceil(K / 128)]`` (1 x 128 groups along ``K``),
  weights ``[ceil(N / 128), ceil(K / 128)]`` (128 x 128 tiles).
"""

from __future__ import annotations

import torch

from .. import registry
from ..reference.fp8 import BLOCK, FP8, FP8_MAX, blocks
from . import checks

GRANULARITIES = ("tensor", "token", "group128")
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

__all__ = ["BLOCK", "FP8", "FP8_MAX", "GRANULARITIES", "blocks", "fp8_gemm", "quantize_fp8"]


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quantize_fp8(
    x: torch.Tensor,
    granularity: str = "token",
    scale: torch.Tensor | None = None,
    *,
    column_major_scales: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` to FP8 e4m3 with float32 scales: ``x ≈ q * scale``.

    A dynamic scale is ``max(amax, 1e-10) / 448`` over the values it covers (448 is e4m3's largest
    finite value); ``q = round_to_nearest_even(clamp(x / scale, -448, 448))``.

    Parameters
    ----------
    x : torch.Tensor
        ``[M, K]``, contiguous, float32, float16 or bfloat16. ``M`` (tokens) may be 0.
    granularity : str
        ``"tensor"``: one scale ``[1]`` (dynamic, or static when ``scale`` is given);
        ``"token"``: one scale per row, ``[M]``;
        ``"group128"``: one per row and 128 consecutive ``k`` (DeepSeek-V3 activations),
        ``[M, ceil(K / 128)]``.
    scale : torch.Tensor, optional
        Static per-tensor scale, float32 ``[1]`` on ``x``'s device; only with ``"tensor"``. Values
        beyond ``448 * scale`` saturate.
    column_major_scales : bool
        ``"group128"`` only: return the scales ``[M, ceil(K / 128)]`` with strides ``(1, M)`` (the
        memory of their transpose), the layout TMA-based GEMMs read without a copy. ``fp8_gemm``
        takes either layout.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``q``: new ``[M, K]`` float8_e4m3fn; ``scales``: float32, shaped as above (for a static
        scale, a ``[1]`` tensor holding it).

    Raises
    ------
    TypeError
        ``x`` not a float tensor, ``scale`` not a float32 tensor, a flag not a bool.
    ValueError
        ``x`` not 2-D or contiguous or with ``K == 0``, an unknown granularity, ``scale`` with a
        dynamic granularity or not ``[1]``, ``column_major_scales`` without ``"group128"``, tensors
        on different devices.
    """
    checks.tensor("x", x, ndim=2, layout="[M, K]")
    checks.nonempty("x", x, 1, "K (hidden)")
    checks.contiguous("x", x)
    checks.choice("granularity", granularity, GRANULARITIES)
    checks.boolean("column_major_scales", column_major_scales)
    if column_major_scales and granularity != "group128":
        raise ValueError(f"column_major_scales applies to granularity 'group128' only; got granularity {granularity!r}")
    if scale is not None:
        if granularity != "tensor":
            raise ValueError(f"a static scale is per-tensor: pass scale only with granularity 'tensor', not {granularity!r}")
        checks.tensor("scale", scale, ndim=1, dtypes=(torch.float32,), layout="[1]")
        checks.dim_size("scale", scale, 0, 1, "one per-tensor scale")
        checks.same_device("scale", scale, "x", x)
    return registry.dispatch("quantize_fp8", x, granularity, scale, column_major_scales)


def _check_scales(scale_a: torch.Tensor, scale_b: torch.Tensor, m: int, n: int, k: int) -> None:
    """The scales fit one granularity (per-tensor / per-token x per-channel, either side may be
    per-tensor, or blockwise); TypeError / ValueError naming the argument when they fit none."""
    for name, s in (("scale_a", scale_a), ("scale_b", scale_b)):
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(s).__name__}")
        if s.dtype != torch.float32:
            raise TypeError(f"{name} must have dtype float32; got {_dtype_name(s.dtype)}")
    if scale_a.dim() == 2 or scale_b.dim() == 2:
        kb = blocks(k)
        want_a, want_b = (m, kb), (blocks(n), kb)
        if tuple(scale_a.shape) != want_a:
            raise ValueError(f"blockwise scale_a must be [M, ceil(K / 128)] = {list(want_a)}; got shape {tuple(scale_a.shape)}")
        if tuple(scale_b.shape) != want_b:
            raise ValueError(
                f"blockwise scale_b must be [ceil(N / 128), ceil(K / 128)] = {list(want_b)}; got shape {tuple(scale_b.shape)}"
            )
        if not (scale_a.is_contiguous() or scale_a.T.is_contiguous()):
            raise ValueError(f"blockwise scale_a must be row-major or column-major (strides (1, M)); got strides {scale_a.stride()}")
        checks.contiguous("scale_b", scale_b)
        return
    for name, s, rows, what in (("scale_a", scale_a, m, "M (per token)"), ("scale_b", scale_b, n, "N (per channel)")):
        if s.dim() != 1 or s.shape[0] not in (1, rows):
            raise ValueError(f"{name} must be [1] (per tensor) or [{rows}] ({what}), or 2-D for blockwise; got shape {tuple(s.shape)}")
        checks.contiguous(name, s)


def fp8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    use_fast_accum: bool = False,
) -> torch.Tensor:
    """Scaled FP8 GEMM: ``(a * scale_a) @ (b * scale_b).T (+ bias)``, accumulated in float32.

    The granularity is read from the scales' shapes:

    ======================  ===========================  ===================================
    granularity             ``scale_a``                  ``scale_b``
    ======================  ===========================  ===================================
    per-tensor              ``[1]``                      ``[1]``
    per-token x channel     ``[M]`` (or ``[1]``)         ``[N]`` (or ``[1]``)
    blockwise (DeepSeek-V3) ``[M, ceil(K / 128)]``       ``[ceil(N / 128), ceil(K / 128)]``
    ======================  ===========================  ===================================

    Blockwise ``scale_a`` may be row-major or column-major (strides ``(1, M)``, as
    ``quantize_fp8(..., column_major_scales=True)`` returns it).

    Parameters
    ----------
    a : torch.Tensor
        ``[M, K]`` float8_e4m3fn, contiguous. ``M`` (tokens) may be 0.
    b : torch.Tensor
        ``[N, K]`` float8_e4m3fn, contiguous: the layout of a Linear weight.
    scale_a, scale_b : torch.Tensor
        float32, shaped as in the table.
    out_dtype : torch.dtype
        bfloat16 (default), float16 or float32.
    bias : torch.Tensor, optional
        ``[N]`` of ``out_dtype``, added after scaling.
    use_fast_accum : bool
        Allow Hopper's FP8 fast accumulation (as ``torch._scaled_mm``'s flag of that name): the
        tensor cores' narrower accumulator runs over the whole of ``K`` instead of being added into
        float32 every 128 of ``K``. Faster, and less accurate as ``K`` grows. It changes only the
        CUDA kernels for per-tensor and per-token scales and ``torch._scaled_mm``; the other
        backends and blockwise scales accumulate in float32 either way.

    Returns
    -------
    torch.Tensor
        A new contiguous ``[M, N]`` tensor of ``out_dtype``.

    Raises
    ------
    TypeError
        ``a`` or ``b`` not float8_e4m3fn, scales not float32, ``out_dtype`` not one of the three,
        ``bias`` not of ``out_dtype``, ``use_fast_accum`` not a bool.
    ValueError
        Wrong ranks, ``b.shape[1] != K``, scale shapes that fit no granularity (the message gives
        the expected shape), a non-contiguous argument, tensors on different devices.
    """
    checks.tensor("a", a, ndim=2, dtypes=(FP8,), layout="[M, K]")
    checks.tensor("b", b, ndim=2, dtypes=(FP8,), layout="[N, K]")
    checks.nonempty("a", a, 1, "K")
    checks.nonempty("b", b, 0, "N")
    checks.dim_size("b", b, 1, a.shape[1], "K = a.shape[1]")
    checks.contiguous("a", a)
    checks.contiguous("b", b)
    checks.same_device("b", b, "a", a)
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {', '.join(map(_dtype_name, OUT_DTYPES))}; got {out_dtype!r}")
    m, k = a.shape
    n = b.shape[0]
    _check_scales(scale_a, scale_b, m, n, k)
    checks.same_device("scale_a", scale_a, "a", a)
    checks.same_device("scale_b", scale_b, "a", a)
    if bias is not None:
        checks.tensor("bias", bias, ndim=1, dtypes=(out_dtype,), layout="[N]")
        checks.dim_size("bias", bias, 0, n, "N")
        checks.contiguous("bias", bias)
        checks.same_device("bias", bias, "a", a)
    if not isinstance(use_fast_accum, bool):
        raise TypeError(f"use_fast_accum must be a bool; got {type(use_fast_accum).__name__}")
    return registry.dispatch("fp8_gemm", a, b, scale_a, scale_b, out_dtype, bias, use_fast_accum)
