"""Gated activations of the MLP: ``act(gate) * up`` over the two halves of one tensor."""

from __future__ import annotations

import torch

from .. import registry
from . import checks

GELU_APPROXIMATIONS = ("none", "tanh")


def _check_gated(x) -> None:
    checks.tensor("x", x, ndim=2, layout="[num_tokens, 2 * d]")
    checks.nonempty("x", x, 1, "feature")
    if x.shape[1] % 2:
        raise ValueError(f"x.shape[1] must be even (the gate and up halves); got shape {tuple(x.shape)}")
    checks.contiguous("x", x)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU gate: ``silu(x[:, :d]) * x[:, d:]``.

    Parameters
    ----------
    x : torch.Tensor
        ``[num_tokens, 2 * d]``, contiguous, float32, float16 or bfloat16: the gate half first, then
        the up half (the output of a fused gate_up projection). ``num_tokens`` may be 0.

    Returns
    -------
    torch.Tensor
        A new contiguous ``[num_tokens, d]`` tensor of ``x``'s dtype; math in float32.
    """
    _check_gated(x)
    return registry.dispatch("silu_and_mul", x)


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GeGLU gate: ``gelu(x[:, :d]) * x[:, d:]``.

    Parameters
    ----------
    x : torch.Tensor
        ``[num_tokens, 2 * d]``, contiguous, float32, float16 or bfloat16: gate half, then up half.
    approximate : str
        ``"none"`` for the exact erf form of GELU, ``"tanh"`` for the tanh approximation (as
        ``torch.nn.functional.gelu``).

    Returns
    -------
    torch.Tensor
        A new contiguous ``[num_tokens, d]`` tensor of ``x``'s dtype; math in float32.
    """
    _check_gated(x)
    checks.choice("approximate", approximate, GELU_APPROXIMATIONS)
    return registry.dispatch("gelu_and_mul", x, approximate)
