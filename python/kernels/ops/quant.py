"""INT4 weight-only quantisation: the W4A16 GEMM, our packed layout, and converters into it.

One packed layout for every backend (docs/api/quant.md); a backend that wants another re-lays the
weight once, at load, never per call:

- ``qweight``: int32 ``[N, K // 8]``, the row order of a Linear weight ``[N, K]``. Element ``(n, k)`` is
  ``(qweight[n, k // 8] >> (4 * (k % 8))) & 0xF``, an unsigned 4-bit value 0..15 (low nibble first).
- ``scales``: ``[N, K // group_size]``, float32, float16 or bfloat16: one per ``group_size``
  consecutive ``k`` of a row.
- the weight of element ``(n, k)``, ``g = k // group_size``:

  - symmetric (GPTQ ``sym=True``, GGUF Q4_0): ``w = (q - 8) * scales[n, g]``;
  - integer zero points (AWQ, asymmetric GPTQ): ``w = (q - zero_points[n, g]) * scales[n, g]``;
  - float mins (GGUF Q4_1): ``w = q * scales[n, g] + mins[n, g]``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .. import registry
from ..reference import quant as _reference
from . import checks

GROUP_SIZES = (32, 64, 128)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
GPTQ_FORMATS = ("gptq", "gptq_v2")
GGUF_BLOCK = 32
GGUF_Q4_0_BYTES = 18  # f16 d, then 16 bytes of nibbles
GGUF_Q4_1_BYTES = 20  # f16 d, f16 m, then 16 bytes of nibbles
# AWQ packs output columns 0..7 of a word into nibbles in this order: nibble i holds column AWQ_ORDER[i].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


class Int4Weight(NamedTuple):
    """A weight in our packed INT4 layout: the arguments of :func:`w4a16_gemm` after ``a``.

    ``kernels.w4a16_gemm(a, *weight[:3], zero_points=weight.zero_points, mins=weight.mins,
    group_size=weight.group_size)``, or more simply :meth:`gemm`.
    """

    qweight: torch.Tensor  # int32 [N, K // 8]
    scales: torch.Tensor  # [N, K // group_size], float32 / float16 / bfloat16
    zero_points: torch.Tensor | None  # uint8 [N, K // group_size], 0..15; or None
    mins: torch.Tensor | None  # [N, K // group_size], scales' dtype; or None
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)`` of the dequantised weight."""
        return self.qweight.shape[0], self.qweight.shape[1] * 8

    def gemm(self, a: torch.Tensor) -> torch.Tensor:
        """``a @ W.T`` through :func:`w4a16_gemm`."""
        return w4a16_gemm(
            a, self.qweight, self.scales, zero_points=self.zero_points, mins=self.mins, group_size=self.group_size
        )


# ---------------------------------------------------------------------------------------------
# Validation


def _group_size(group_size) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {', '.join(map(str, GROUP_SIZES))}; got {group_size}")
    return group_size


def _check_weight(qweight, scales, zero_points, mins, group_size) -> None:
    """The weight half of the arguments: layout, dtypes, and shapes consistent with each other."""
    group_size = _group_size(group_size)
    checks.tensor("qweight", qweight, ndim=2, dtypes=(torch.int32,), layout="[N, K // 8]")
    checks.nonempty("qweight", qweight, 0, "N (output features)")
    checks.nonempty("qweight", qweight, 1, "K // 8 (input features)")
    checks.contiguous("qweight", qweight)
    n, k = qweight.shape[0], qweight.shape[1] * 8
    if k % group_size:
        raise ValueError(
            f"K = qweight.shape[1] * 8 = {k} must be a multiple of group_size {group_size} (whole groups per row)"
        )
    groups = k // group_size
    if zero_points is not None and mins is not None:
        raise ValueError("zero_points and mins are exclusive: give zero_points (w = (q - z) * s), mins (w = q * s + m), or neither (w = (q - 8) * s)")
    layout = "[N, K // group_size]"
    checks.tensor("scales", scales, ndim=2, layout=layout)
    if tuple(scales.shape) != (n, groups):
        raise ValueError(
            f"scales must have shape (N, K // group_size) = ({n}, {groups}) for qweight {tuple(qweight.shape)} "
            f"and group_size {group_size}; got {tuple(scales.shape)}"
        )
    checks.contiguous("scales", scales)
    checks.same_device("scales", scales, "qweight", qweight)
    if zero_points is not None:
        checks.tensor("zero_points", zero_points, ndim=2, dtypes=(torch.uint8,), layout=layout)
        if tuple(zero_points.shape) != (n, groups):
            raise ValueError(f"zero_points must have shape (N, K // group_size) = ({n}, {groups}); got {tuple(zero_points.shape)}")
        checks.contiguous("zero_points", zero_points)
        checks.same_device("zero_points", zero_points, "qweight", qweight)
        # Reading the values needs a host sync on a GPU: checked where it is free (CPU), as the
        # other ops check indices.
        if not checks.tracing() and zero_points.device.type == "cpu" and zero_points.numel():
            hi = int(zero_points.max())
            if hi > 15:
                raise ValueError(f"zero_points must hold 4-bit values 0..15; got a maximum of {hi}")
    if mins is not None:
        checks.tensor("mins", mins, ndim=2, layout=layout)
        checks.same_dtype("mins", mins, "scales", scales)
        if tuple(mins.shape) != (n, groups):
            raise ValueError(f"mins must have shape (N, K // group_size) = ({n}, {groups}); got {tuple(mins.shape)}")
        checks.contiguous("mins", mins)
        checks.same_device("mins", mins, "qweight", qweight)


# ---------------------------------------------------------------------------------------------
# The op


def w4a16_gemm(
    a: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    *,
    zero_points: torch.Tensor | None = None,
    mins: torch.Tensor | None = None,
    group_size: int,
) -> torch.Tensor:
    """INT4 weight-only GEMM: ``a @ W.T`` where ``W [N, K]`` is dequantised from 4-bit groups.

    The weight of element ``(n, k)`` with ``q = (qweight[n, k // 8] >> (4 * (k % 8))) & 0xF`` and
    ``g = k // group_size`` is, by mode:

    - ``zero_points`` given (AWQ, asymmetric GPTQ): ``(q - zero_points[n, g]) * scales[n, g]``;
    - ``mins`` given (GGUF Q4_1): ``q * scales[n, g] + mins[n, g]``;
    - neither (symmetric: GPTQ ``sym=True``, GGUF Q4_0): ``(q - 8) * scales[n, g]``.

    Parameters
    ----------
    a : torch.Tensor
        ``[M, K]`` activations, contiguous, float32, float16 or bfloat16. ``M`` (tokens) may be 0.
    qweight : torch.Tensor
        ``[N, K // 8]`` int32, contiguous: eight 4-bit values per word along ``K``, element ``k`` of a
        row in bits ``4 * (k % 8)`` and up (low nibble first). Built by :func:`pack_int4` or the
        ``from_*`` converters.
    scales : torch.Tensor
        ``[N, K // group_size]``, contiguous, float32, float16 or bfloat16 (independent of ``a``'s).
    zero_points : torch.Tensor, optional
        ``[N, K // group_size]`` uint8, contiguous, values 0..15 (checked on CPU; a GPU kernel uses
        the values as stored). Exclusive with ``mins``.
    mins : torch.Tensor, optional
        ``[N, K // group_size]``, contiguous, ``scales``' dtype. Exclusive with ``zero_points``.
    group_size : int
        32, 64 or 128: the ``K`` extent of one scale. ``K`` must be a multiple of it.

    Returns
    -------
    torch.Tensor
        A new contiguous ``[M, N]`` tensor of ``a``'s dtype, accumulated in float32 (the dequantised
        weight is rounded to ``a``'s dtype first by the half-precision kernels).

    Raises
    ------
    TypeError
        A wrong dtype (``a`` not a float type, ``qweight`` not int32, ``zero_points`` not uint8,
        ``mins`` not ``scales``' dtype) or ``group_size`` not an int.
    ValueError
        Wrong ranks or shapes (``a.shape[1] != K``, ``scales`` not ``[N, K // group_size]``), ``K``
        not a multiple of ``group_size``, ``group_size`` not 32/64/128, both ``zero_points`` and
        ``mins``, a non-contiguous argument, tensors on different devices, a zero point above 15.
    """
    _check_weight(qweight, scales, zero_points, mins, group_size)
    checks.tensor("a", a, ndim=2, layout="[M, K]")
    k = qweight.shape[1] * 8
    checks.dim_size("a", a, 1, k, "K = qweight.shape[1] * 8")
    checks.contiguous("a", a)
    checks.same_device("qweight", qweight, "a", a)
    return registry.dispatch("w4a16_gemm", a, qweight, scales, zero_points, mins, group_size)


# ---------------------------------------------------------------------------------------------
# Packing


def _nibbles(name: str, q) -> torch.Tensor:
    checks.tensor(name, q, ndim=2, dtypes=INT_DTYPES, layout="[N, K]")
    if q.shape[1] % 8:
        raise ValueError(f"{name}.shape[1] (K) must be a multiple of 8 (eight values per int32); got shape {tuple(q.shape)}")
    if q.numel():
        lo, hi = (int(v) for v in torch.aminmax(q))
        if lo < 0 or hi > 15:
            raise ValueError(f"{name} must hold 4-bit values 0..15; got values in [{lo}, {hi}]")
    return q


def _pack_rows(q: torch.Tensor) -> torch.Tensor:
    """``[R, C]`` values 0..15 (C a multiple of 8) -> int32 ``[R, C // 8]``, low nibble first."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=q.device)
    words = (q.to(torch.int64).view(q.shape[0], -1, 8) << shifts).sum(dim=-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the same 32 bits, signed


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit values ``[N, K]`` (any integer dtype, values 0..15, ``K`` a multiple of 8) into our
    int32 ``[N, K // 8]`` layout: ``k`` goes to bits ``4 * (k % 8)`` of word ``k // 8``."""
    return _pack_rows(_nibbles("q", q)).contiguous()


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: int32 ``[N, K // 8]`` -> uint8 ``[N, K]`` values 0..15."""
    checks.tensor("qweight", qweight, ndim=2, dtypes=(torch.int32,), layout="[N, K // 8]")
    return _reference.unpack(qweight).to(torch.uint8)


def dequantize_int4(weight: Int4Weight) -> torch.Tensor:
    """The float32 ``[N, K]`` weight that :func:`w4a16_gemm` multiplies by (the reference's math)."""
    _check_weight(weight.qweight, weight.scales, weight.zero_points, weight.mins, weight.group_size)
    return _reference.dequantize(weight.qweight, weight.scales, weight.zero_points, weight.mins, weight.group_size)


# ---------------------------------------------------------------------------------------------
# Converters


def _unpack_words(words: torch.Tensor) -> torch.Tensor:
    """int32 ``[R, C]`` -> int32 ``[R, C * 8]``: nibble i of word c at column ``8 * c + i``."""
    return _reference.unpack(words.to(torch.int32))


def _check_packed(name: str, t, shape: tuple[int, int], layout: str) -> None:
    checks.tensor(name, t, ndim=2, dtypes=(torch.int32,), layout=layout)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}; got {tuple(t.shape)}")


def _check_foreign_scales(scales, groups: int, n: int, qweight: torch.Tensor) -> None:
    checks.tensor("scales", scales, ndim=2, layout="[K // group_size, N]")
    if tuple(scales.shape) != (groups, n):
        raise ValueError(f"scales must have shape [K // group_size, N] = ({groups}, {n}); got {tuple(scales.shape)}")
    checks.same_device("scales", scales, "qweight", qweight)


def from_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor | None,
    scales: torch.Tensor,
    group_size: int,
    *,
    sym: bool = True,
    g_idx: torch.Tensor | None = None,
    checkpoint_format: str = "gptq",
) -> Int4Weight:
    """A 4-bit GPTQ checkpoint's tensors (AutoGPTQ / GPTQModel / Transformers layout) in our layout.

    Parameters
    ----------
    qweight : torch.Tensor
        int32 ``[K // 8, N]``, packed along ``K``: ``q[k, n] = (qweight[k // 8, n] >> (4 * (k % 8))) & 0xF``.
    qzeros : torch.Tensor or None
        int32 ``[K // group_size, N // 8]``, packed along ``N`` the same way. May be None when ``sym``.
    scales : torch.Tensor
        ``[K // group_size, N]``, a float dtype (float16 in checkpoints); kept in its dtype.
    group_size : int
        The checkpoint's ``group_size``: 32, 64 or 128 (per-channel ``-1`` is not supported).
    sym : bool
        The checkpoint's ``sym``. Symmetric GPTQ has every zero point at 8, so the result has no
        ``zero_points`` (our symmetric mode, ``(q - 8) * s``); ``qzeros``, when given, must hold 8
        everywhere (after the format's offset), else ValueError. ``sym=False`` keeps the zero points.
    g_idx : torch.Tensor, optional
        The checkpoint's ``g_idx`` ``[K]``. Only the trivial order ``g_idx[k] == k // group_size`` has
        our layout; act-order (``desc_act=True``) checkpoints, whose groups are not contiguous runs of
        ``k``, raise ValueError.
    checkpoint_format : str
        How the zero points are stored. ``"gptq"`` (the default; GPTQ "v1", what AutoGPTQ wrote and
        what nearly all published GPTQ checkpoints are): each stored nibble is ``z - 1``, so
        ``z = (stored + 1) mod 16`` (symmetric checkpoints store 7 for 8). The default because it is
        the format of published checkpoints (``quantize_config.json`` without ``checkpoint_format``,
        or with ``"gptq"``); taking it modulo 16 recovers ``z = 0`` too, which v1 stores as 15 after
        the subtraction wraps. ``"gptq_v2"`` (GPTQModel's): nibbles are ``z`` as is.

    Returns
    -------
    Int4Weight
        ``qweight [N, K // 8]``, ``scales [N, K // group_size]``, ``zero_points`` uint8 or None, no
        ``mins``.
    """
    group_size = _group_size(group_size)
    checks.choice("checkpoint_format", checkpoint_format, GPTQ_FORMATS)
    checks.boolean("sym", sym)
    checks.tensor("qweight", qweight, ndim=2, dtypes=(torch.int32,), layout="[K // 8, N]")
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    if k == 0 or n == 0:
        raise ValueError(f"qweight has an empty dimension (shape {tuple(qweight.shape)})")
    if k % group_size:
        raise ValueError(f"K = qweight.shape[0] * 8 = {k} must be a multiple of group_size {group_size}")
    groups = k // group_size
    _check_foreign_scales(scales, groups, n, qweight)
    if g_idx is not None:
        checks.tensor("g_idx", g_idx, ndim=1, dtypes=INT_DTYPES, layout="[K]")
        checks.dim_size("g_idx", g_idx, 0, k, "K")
        trivial = torch.arange(k, device=g_idx.device) // group_size
        if not torch.equal(g_idx.to(torch.int64), trivial):
            raise ValueError(
                "g_idx is not the trivial order k // group_size: act-order (desc_act=True) checkpoints have "
                "groups that are not contiguous runs of k, which this layout cannot express; use a checkpoint "
                "quantised with desc_act=False"
            )
    zeros = None
    if qzeros is not None:
        if n % 8:
            raise ValueError(f"N = {n} must be a multiple of 8 for qzeros packed along N")
        _check_packed("qzeros", qzeros, (groups, n // 8), "[K // group_size, N // 8]")
        checks.same_device("qzeros", qzeros, "qweight", qweight)
        zeros = _unpack_words(qzeros)
        if checkpoint_format == "gptq":
            zeros = (zeros + 1) & 0xF
    elif not sym:
        raise ValueError("qzeros is required when sym=False")
    if sym:
        if zeros is not None and zeros.numel() and not bool((zeros == 8).all()):
            raise ValueError(
                f"sym=True but qzeros hold zero points other than 8 (in [{int(zeros.min())}, {int(zeros.max())}] "
                f"read as {checkpoint_format!r}); pass sym=False, or the other checkpoint_format"
            )
        zero_points = None
    else:
        zero_points = zeros.T.contiguous().to(torch.uint8)
    q = _unpack_words(qweight.T.contiguous())  # [N, K // 8] words along K -> [N, K]
    return Int4Weight(_pack_rows(q), scales.T.contiguous(), zero_points, None, group_size)


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> Int4Weight:
    """A 4-bit AWQ checkpoint's tensors (llm-awq / AutoAWQ "GEMM" layout) in our layout.

    Parameters
    ----------
    qweight : torch.Tensor
        int32 ``[K, N // 8]``, packed along ``N`` in AWQ's interleaved order: nibble ``i`` (bits
        ``4 * i``) of word ``j`` holds column ``8 * j + (0, 2, 4, 6, 1, 3, 5, 7)[i]``.
    qzeros : torch.Tensor
        int32 ``[K // group_size, N // 8]``, packed the same way; zero points stored as is.
    scales : torch.Tensor
        ``[K // group_size, N]``, a float dtype (float16 in checkpoints); kept in its dtype.
    group_size : int
        32, 64 or 128.

    Returns
    -------
    Int4Weight
        ``w = (q - z) * s``: ``zero_points`` uint8 ``[N, K // group_size]``, no ``mins``.
    """
    group_size = _group_size(group_size)
    checks.tensor("qweight", qweight, ndim=2, dtypes=(torch.int32,), layout="[K, N // 8]")
    k, n = qweight.shape[0], qweight.shape[1] * 8
    if k == 0 or n == 0:
        raise ValueError(f"qweight has an empty dimension (shape {tuple(qweight.shape)})")
    if k % group_size:
        raise ValueError(f"K = qweight.shape[0] = {k} must be a multiple of group_size {group_size}")
    groups = k // group_size
    _check_packed("qzeros", qzeros, (groups, n // 8), "[K // group_size, N // 8]")
    checks.same_device("qzeros", qzeros, "qweight", qweight)
    _check_foreign_scales(scales, groups, n, qweight)
    # Column c of a word sits in nibble AWQ_ORDER.index(c).
    nibble_of_column = torch.tensor([AWQ_ORDER.index(c) for c in range(8)], device=qweight.device)

    def columns(words: torch.Tensor) -> torch.Tensor:
        nib = _unpack_words(words).view(words.shape[0], -1, 8)
        return nib[:, :, nibble_of_column].reshape(words.shape[0], -1)

    q = columns(qweight)  # [K, N]
    zeros = columns(qzeros)  # [K // group_size, N]
    return Int4Weight(
        _pack_rows(q.T.contiguous()), scales.T.contiguous(), zeros.T.contiguous().to(torch.uint8), None, group_size
    )


def _gguf_blocks(blocks, n: int, k: int, block_bytes: int, kind: str) -> torch.Tensor:
    """The raw bytes as a uint8 ``[N * K // 32, block_bytes]`` tensor."""
    for name, v in (("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if k % GGUF_BLOCK:
        raise ValueError(f"k = {k} must be a multiple of {GGUF_BLOCK} ({kind} blocks of {GGUF_BLOCK} weights)")
    if isinstance(blocks, np.ndarray):
        if blocks.dtype != np.uint8:
            raise TypeError(f"blocks must hold raw bytes (uint8); got numpy dtype {blocks.dtype}")
        blocks = torch.from_numpy(np.ascontiguousarray(blocks))
    if not isinstance(blocks, torch.Tensor):
        raise TypeError(f"blocks must be a uint8 torch.Tensor or numpy array, got {type(blocks).__name__}")
    if blocks.dtype != torch.uint8:
        raise TypeError(f"blocks must hold raw bytes (uint8); got {str(blocks.dtype).removeprefix('torch.')}")
    count = n * (k // GGUF_BLOCK)
    if blocks.numel() != count * block_bytes:
        raise ValueError(
            f"blocks must hold {count} {kind} blocks of {block_bytes} bytes ({count * block_bytes} bytes for "
            f"n={n}, k={k}); got {blocks.numel()} bytes"
        )
    return blocks.contiguous().view(count, block_bytes)


def _gguf_nibbles(qs: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """``[blocks, 16]`` bytes -> ``[N, K]``: byte j holds element j (low nibble) and j + 16 (high)."""
    q = torch.cat((qs & 0xF, qs >> 4), dim=1)  # [blocks, 32] in element order
    return q.reshape(n, k)


def _f16(raw: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Little-endian float16 bytes ``[blocks, 2]`` -> float16 ``[N, K // 32]``."""
    return raw.contiguous().view(torch.float16).reshape(n, k // GGUF_BLOCK)


def from_gguf_q4_0(blocks, n: int, k: int) -> Int4Weight:
    """A GGUF / GGML ``Q4_0`` tensor of ``n`` rows of ``k`` weights (``[N, K]``, GGUF dims ``(k, n)``).

    ``blocks`` holds the tensor's raw bytes (a uint8 torch tensor or numpy array of any shape with
    ``n * k // 32 * 18`` bytes, e.g. ``GGUFReader``'s ``tensor.data``): per row, ``k // 32`` blocks of
    a float16 ``d`` and 16 bytes ``qs``; element ``j < 16`` of a block is ``qs[j] & 0xF``, element
    ``j + 16`` is ``qs[j] >> 4``, and ``w = (q - 8) * d`` (llama.cpp's ``dequantize_row_q4_0``).

    Returns an :class:`Int4Weight` in the symmetric mode, ``group_size`` 32, float16 ``scales = d``.
    """
    raw = _gguf_blocks(blocks, n, k, GGUF_Q4_0_BYTES, "Q4_0")
    q = _gguf_nibbles(raw[:, 2:], n, k)
    return Int4Weight(_pack_rows(q), _f16(raw[:, :2], n, k), None, None, GGUF_BLOCK)


def from_gguf_q4_1(blocks, n: int, k: int) -> Int4Weight:
    """A GGUF / GGML ``Q4_1`` tensor of ``n`` rows of ``k`` weights (``[N, K]``, GGUF dims ``(k, n)``).

    As :func:`from_gguf_q4_0`, with blocks of 20 bytes: float16 ``d``, float16 ``m``, 16 bytes ``qs``
    (same element order); ``w = q * d + m``.

    Returns an :class:`Int4Weight` in the mins mode, ``group_size`` 32, float16 ``scales = d`` and
    ``mins = m``.
    """
    raw = _gguf_blocks(blocks, n, k, GGUF_Q4_1_BYTES, "Q4_1")
    q = _gguf_nibbles(raw[:, 4:], n, k)
    return Int4Weight(_pack_rows(q), _f16(raw[:, :2], n, k), None, _f16(raw[:, 2:4], n, k), GGUF_BLOCK)
