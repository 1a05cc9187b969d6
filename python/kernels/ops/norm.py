"""RMS normalisation."""

from __future__ import annotations

import torch

from .. import registry
from . import checks


def _check_weight(x: torch.Tensor, weight) -> None:
    checks.tensor("weight", weight, ndim=1, layout="[hidden]")
    checks.same_device("weight", weight, "x", x)
    checks.same_dtype("weight", weight, "x", x)
    checks.dim_size("weight", weight, 0, x.shape[1], "hidden, the last dim of x")
    checks.contiguous("weight", weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Root-mean-square normalisation of each row, scaled by ``weight``.

    ``out[t] = x[t] / sqrt(mean(x[t] ** 2) + eps) * weight``, computed in float32 and rounded once.

    Parameters
    ----------
    x : torch.Tensor
        ``[num_tokens, hidden]``, float32, float16 or bfloat16. The last dim must be contiguous;
        rows may be strided (a view of a wider tensor). ``num_tokens`` may be 0.
    weight : torch.Tensor
        ``[hidden]``, contiguous, same dtype and device as ``x``.
    eps : float
        Added to the mean square, > 0.

    Returns
    -------
    torch.Tensor
        A new contiguous ``[num_tokens, hidden]`` tensor of ``x``'s dtype. ``x`` is not modified.
    """
    checks.tensor("x", x, ndim=2, layout="[num_tokens, hidden]")
    checks.nonempty("x", x, 1, "hidden")
    if x.stride(1) != 1 or (x.shape[0] > 1 and x.stride(0) < x.shape[1]):
        raise ValueError(f"x must have a contiguous last dim and non-overlapping rows; got strides {x.stride()}")
    _check_weight(x, weight)
    eps = checks.positive_float("eps", eps)
    return registry.dispatch("rms_norm", x, weight, eps)


def fused_add_rms_norm_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> None:
    """Residual add then RMS normalisation, in place on both inputs (one pass over memory).

    ``residual += x`` (rounded to the dtype and stored), then ``x = rms_norm(residual, weight, eps)``,
    the norm taken of the float32 sum. This is the pre-norm transformer's
    ``h = h + layer(h); x = norm(h)`` step.

    Parameters
    ----------
    x : torch.Tensor
        ``[num_tokens, hidden]``, contiguous, float32, float16 or bfloat16. Overwritten with the
        normalised sum.
    residual : torch.Tensor
        Same shape, dtype and device as ``x``, contiguous, not sharing memory with it. Overwritten
        with ``x + residual``.
    weight : torch.Tensor
        ``[hidden]``, contiguous, same dtype and device as ``x``.
    eps : float
        Added to the mean square, > 0.

    Returns
    -------
    None
    """
    checks.tensor("x", x, ndim=2, layout="[num_tokens, hidden]")
    checks.nonempty("x", x, 1, "hidden")
    checks.contiguous("x", x)
    checks.tensor("residual", residual, ndim=2, layout="[num_tokens, hidden]")
    checks.same_device("residual", residual, "x", x)
    checks.same_dtype("residual", residual, "x", x)
    if residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}; got {tuple(residual.shape)}")
    checks.contiguous("residual", residual)
    checks.distinct("x", x, "residual", residual)
    _check_weight(x, weight)
    eps = checks.positive_float("eps", eps)
    registry.dispatch("fused_add_rms_norm_", x, residual, weight, eps)
