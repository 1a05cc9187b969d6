"""INT8 weight-only quantisation: the W8A16 GEMM, its layout, and the GGUF Q8_0 converter.

The layout (docs/api/quant.md), the same for every backend:

- ``qweight``: int8 ``[N, K]``, the row order of a Linear weight ``[N, K]``, one value per weight;
- ``scales``: ``[N, K // group_size]``, float32, float16 or bfloat16: one per ``group_size``
  consecutive ``k`` of a row;
- the weight of element ``(n, k)`` is ``qweight[n, k] * scales[n, k // group_size]`` (symmetric:
  GGUF Q8_0, which is ``group_size`` 32 with float16 scales).

The int8 rows are also an embedding table: :meth:`Int8Weight.rows` dequantises only the rows it
is asked for, so a model whose LM head is tied to its token embedding keeps one int8 copy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import registry
from ..reference import quant as _reference
from . import checks
from .quant import GGUF_BLOCK, _f16, _gguf_blocks, _group_size

GGUF_Q8_0_BYTES = 34  # f16 d, then 32 int8 values


class Int8Weight(NamedTuple):
    """A weight in our INT8 layout: the arguments of :func:`w8a16_gemm` after ``a``.

    ``kernels.w8a16_gemm(a, weight.qweight, weight.scales, group_size=weight.group_size)``, or more
    simply :meth:`gemm`.
    """

    qweight: torch.Tensor  # int8 [N, K]
    scales: torch.Tensor  # [N, K // group_size], float32 / float16 / bfloat16
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)`` of the dequantised weight."""
        return self.qweight.shape[0], self.qweight.shape[1]

    def gemm(self, a: torch.Tensor) -> torch.Tensor:
        """``a @ W.T`` through :func:`w8a16_gemm`."""
        return w8a16_gemm(a, self.qweight, self.scales, group_size=self.group_size)

    def rows(self, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W[index]`` dequantised to ``dtype``: an embedding lookup that reads only the rows
        gathered (``index`` any shape of integer indices; the result has one more dimension, K).
        Computed in float32 and rounded once, so it equals ``dequantize_int8(self)[index].to(dtype)``."""
        k = self.qweight.shape[1]
        q = self.qweight[index].float().view(*index.shape, k // self.group_size, self.group_size)
        return (q * self.scales[index].float().unsqueeze(-1)).view(*index.shape, k).to(dtype)


def _check_weight(qweight, scales, group_size) -> None:
    """The weight half of the arguments: layout, dtypes, and shapes consistent with each other."""
    group_size = _group_size(group_size)
    checks.tensor("qweight", qweight, ndim=2, dtypes=(torch.int8,), layout="[N, K]")
    checks.nonempty("qweight", qweight, 0, "N (output features)")
    checks.nonempty("qweight", qweight, 1, "K (input features)")
    checks.contiguous("qweight", qweight)
    n, k = qweight.shape
    if k % group_size:
        raise ValueError(f"K = qweight.shape[1] = {k} must be a multiple of group_size {group_size} (whole groups per row)")
    checks.tensor("scales", scales, ndim=2, layout="[N, K // group_size]")
    if tuple(scales.shape) != (n, k // group_size):
        raise ValueError(
            f"scales must have shape (N, K // group_size) = ({n}, {k // group_size}) for qweight {tuple(qweight.shape)} "
            f"and group_size {group_size}; got {tuple(scales.shape)}"
        )
    checks.contiguous("scales", scales)
    checks.same_device("scales", scales, "qweight", qweight)


def w8a16_gemm(a: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """INT8 weight-only GEMM: ``a @ W.T`` where ``W [N, K]`` is dequantised from int8 groups.

    The weight of element ``(n, k)`` is ``qweight[n, k] * scales[n, k // group_size]`` (symmetric, no
    zero point: GGUF ``Q8_0`` is ``group_size`` 32 with float16 scales, see :func:`from_gguf_q8_0`).
    The native CPU kernel converts each int8 weight to float in registers, so the weight is read at
    one byte per value (plus the scales) instead of four for a float32 copy: at decode sizes, where
    the weight read is the whole cost, that is the speed-up.

    Parameters
    ----------
    a : torch.Tensor
        ``[M, K]`` activations, contiguous, float32, float16 or bfloat16. ``M`` (tokens) may be 0.
    qweight : torch.Tensor
        ``[N, K]`` int8, contiguous: the quantised weight in a Linear's row order.
    scales : torch.Tensor
        ``[N, K // group_size]``, contiguous, float32, float16 or bfloat16 (independent of ``a``'s).
    group_size : int
        32, 64 or 128: the ``K`` extent of one scale. ``K`` must be a multiple of it.

    Returns
    -------
    torch.Tensor
        A new contiguous ``[M, N]`` tensor of ``a``'s dtype, accumulated in float32.

    Raises
    ------
    TypeError
        A wrong dtype (``a`` or ``scales`` not a float type, ``qweight`` not int8) or ``group_size``
        not an int.
    ValueError
        Wrong ranks or shapes (``a.shape[1] != K``, ``scales`` not ``[N, K // group_size]``), ``K``
        not a multiple of ``group_size``, ``group_size`` not 32/64/128, an empty ``N`` or ``K``, a
        non-contiguous argument, tensors on different devices.

    Examples
    --------
    >>> w = kernels.from_gguf_q8_0(tensor.data, n, k)  # a GGUF Q8_0 tensor of n rows of k
    >>> out = kernels.w8a16_gemm(x, w.qweight, w.scales, group_size=w.group_size)  # == w.gemm(x)
    """
    _check_weight(qweight, scales, group_size)
    checks.tensor("a", a, ndim=2, layout="[M, K]")
    checks.dim_size("a", a, 1, qweight.shape[1], "K = qweight.shape[1]")
    checks.contiguous("a", a)
    checks.same_device("qweight", qweight, "a", a)
    return registry.dispatch("w8a16_gemm", a, qweight, scales, group_size)


def dequantize_int8(weight: Int8Weight) -> torch.Tensor:
    """The float32 ``[N, K]`` weight that :func:`w8a16_gemm` multiplies by (the reference's math)."""
    _check_weight(weight.qweight, weight.scales, weight.group_size)
    return _reference.dequantize_int8(weight.qweight, weight.scales, weight.group_size)


def from_gguf_q8_0(blocks, n: int, k: int) -> Int8Weight:
    """A GGUF / GGML ``Q8_0`` tensor of ``n`` rows of ``k`` weights (``[N, K]``, GGUF dims ``(k, n)``).

    ``blocks`` holds the tensor's raw bytes (a uint8 torch tensor or numpy array of any shape with
    ``n * k // 32 * 34`` bytes, e.g. ``GGUFReader``'s ``tensor.data``): per row, ``k // 32`` blocks of
    a float16 ``d`` and 32 int8 ``qs``; ``w = qs[j] * d`` (llama.cpp's ``dequantize_row_q8_0``).

    Returns an :class:`Int8Weight` with ``group_size`` 32 and float16 ``scales = d``: the same
    weights, losslessly.
    """
    raw = _gguf_blocks(blocks, n, k, GGUF_Q8_0_BYTES, "Q8_0")
    q = raw[:, 2:].contiguous().view(torch.int8).reshape(n, k)
    return Int8Weight(q, _f16(raw[:, :2], n, k), GGUF_BLOCK)
