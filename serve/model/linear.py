"""The model's one matmul: a Linear whose weight is a float tensor or a packed INT4 / INT8 weight.

A projection loaded from a 4-bit GGUF tensor (Q4_0, Q4_1) may stay packed as a
:class:`kernels.Int4Weight` (``qweight`` int32 ``[N, K // 8]``, ``scales`` / ``mins``
``[N, K // 32]``; docs/api/quant.md) and run through :func:`kernels.w4a16_gemm`; an LM head loaded
from a Q8_0 tensor may stay a :class:`kernels.Int8Weight` (``qweight`` int8 ``[N, K]``, ``scales``
``[N, K // 32]``) and run through :func:`kernels.w8a16_gemm`. Either reads the quantised weight
instead of a float copy of it. Activations stay in the model dtype either way.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from kernels import Int4Weight, Int8Weight

__all__ = ["Int4Weight", "Int8Weight", "linear", "prefer_cublaslt", "weight_nbytes"]


def linear(x: torch.Tensor, weight: torch.Tensor | Int4Weight | Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)``: ``F.linear`` for a tensor, the packed weight's GEMM
    (``w4a16_gemm`` / ``w8a16_gemm``) for an :class:`Int4Weight` / :class:`Int8Weight`.

    ``x`` is ``[M, K]`` in the model dtype; the result is ``[M, N]`` in ``x``'s dtype.
    """
    if isinstance(weight, torch.Tensor):
        return F.linear(x, weight, bias)
    out = weight.gemm(x.contiguous())
    if bias is not None:
        out += bias
    return out


@contextmanager
def prefer_cublaslt(device: torch.device):
    """Run the model's float matmuls through cuBLASLt on CUDA, restoring the caller's choice after.

    torch's default (cuBLAS) splits the decode step's down projection (M 64, K 14336) into a
    split-K kernel and a reduction; cuBLASLt's pick reads the weight at 0.89 of the copy rate
    instead of 0.81, and its prefill GEMMs are ~4% faster. On an H100 the whole decode step of a
    Llama-3-8B batch of 64 went from 6.89 to 6.77 ms (benchmarks/NOTES.md). A CUDA graph keeps the
    kernels it captured, so replays need no setting.
    """
    if device.type != "cuda" or torch.version.cuda is None:
        yield
        return
    previous = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library("cublaslt")
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(previous)


def weight_nbytes(weight: torch.Tensor | Int4Weight | Int8Weight) -> int:
    """Bytes a weight holds: a tensor's, or the sum of a packed weight's tensors (``qweight``,
    ``scales``, and an INT4 weight's zero points or mins)."""
    if isinstance(weight, torch.Tensor):
        return weight.numel() * weight.element_size()
    return sum(t.numel() * t.element_size() for t in weight if isinstance(t, torch.Tensor))
