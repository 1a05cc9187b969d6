"""Rotary position embedding (RoPE)."""

from __future__ import annotations

import torch

from .. import registry
from . import checks
from .attention import check_store


def _check_heads(name: str, t, head_dim: int | None) -> None:
    checks.tensor(name, t, ndim=3, layout="[num_tokens, num_heads, head_dim]")
    checks.nonempty(name, t, 1, "heads")
    checks.nonempty(name, t, 2, "head_dim")
    if head_dim is not None:
        checks.dim_size(name, t, 2, head_dim, "head_dim of q")
    checks.heads_contiguous(name, t)
    if t.shape[0] > 1 and t.stride(0) < t.shape[1] * t.shape[2]:
        raise ValueError(f"{name} has overlapping tokens (strides {t.stride()})")


def rotary_embedding_(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """Apply rotary position embedding to ``q`` and ``k`` in place.

    For each token ``t`` and head, the first ``rotary_dim`` dims of the head are rotated by the
    angles of position ``positions[t]``; the remaining ``head_dim - rotary_dim`` dims (partial
    rotary) are left as they are. Pairs are ``(i, i + rotary_dim / 2)`` with ``is_neox`` (Llama,
    Qwen, Mistral) and ``(2i, 2i + 1)`` without (GPT-J). Each pair becomes
    ``(x1 * cos - x2 * sin, x2 * cos + x1 * sin)``, computed in float32.

    Parameters
    ----------
    positions : torch.Tensor
        ``[num_tokens]``, int64, each in ``[0, max_position)``.
    q : torch.Tensor
        ``[num_tokens, num_heads, head_dim]``, float32, float16 or bfloat16, heads contiguous
        (``stride(2) == 1``, ``stride(1) == head_dim``); the token stride may be larger (a view of a
        fused qkv projection). Modified in place.
    k : torch.Tensor
        ``[num_tokens, num_kv_heads, head_dim]``, same dtype, device and layout rules as ``q``,
        not overlapping it. Modified in place.
    cos_sin_cache : torch.Tensor
        ``[max_position, rotary_dim]``, contiguous, float32 or ``q``'s dtype: row ``p`` holds
        ``cos(p * inv_freq)`` in its first half and ``sin(p * inv_freq)`` in its second.
        ``rotary_dim`` is even and at most ``head_dim``.
    is_neox : bool
        Neox-style (rotate halves) pairing if True, GPT-J-style (interleaved) if False.

    Returns
    -------
    None

    Notes
    -----
    A position outside ``[0, max_position)`` is an error: on CPU it raises before anything is
    written; GPU kernels, which cannot raise without a host sync, fill that token's ``q`` and ``k``
    with NaN rather than read outside the cache.
    """
    is_neox = _check_rotary(positions, q, k, cos_sin_cache, is_neox)
    registry.dispatch("rotary_embedding_", positions, q, k, cos_sin_cache, is_neox)


def rotary_embedding_and_store_kv_(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """:func:`rotary_embedding_` on ``q`` and ``k``, then :func:`kernels.store_kv_cache` of the
    rotated ``k`` and of ``v``: what an attention layer does to its new tokens before attending.

    The same results as the two calls in turn (``q`` and ``k`` rotated in place, the caches
    written); on CUDA it is one kernel instead of two, and the decode attention launched after it
    is placed on the GPU while it runs (programmatic dependent launch; it waits for its results).

    Parameters
    ----------
    positions, q, k, cos_sin_cache, is_neox
        As in :func:`rotary_embedding_`.
    v : torch.Tensor
        ``[num_tokens, num_kv_heads, head_dim]``, ``k``'s dtype and layout rules.
    k_cache, v_cache, slot_mapping
        As in :func:`kernels.store_kv_cache`; ``k_cache`` and ``v_cache`` have ``q``'s dtype.

    Returns
    -------
    None
    """
    is_neox = _check_rotary(positions, q, k, cos_sin_cache, is_neox)
    check_store(k, v, k_cache, v_cache, slot_mapping)
    checks.same_device("k_cache", k_cache, "q", q)
    registry.dispatch(
        "rotary_embedding_and_store_kv_", positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, is_neox
    )


def _check_rotary(positions, q, k, cos_sin_cache, is_neox) -> bool:
    checks.tensor("positions", positions, ndim=1, dtypes=(torch.int64,), layout="[num_tokens]")
    _check_heads("q", q, None)
    _check_heads("k", k, q.shape[2])
    checks.same_dtype("k", k, "q", q)
    for name, t in (("positions", positions), ("k", k), ("cos_sin_cache", cos_sin_cache)):
        if isinstance(t, torch.Tensor):
            checks.same_device(name, t, "q", q)
    checks.dim_size("positions", positions, 0, q.shape[0], "num_tokens of q")
    checks.dim_size("k", k, 0, q.shape[0], "num_tokens of q")
    checks.tensor(
        "cos_sin_cache", cos_sin_cache, ndim=2, dtypes=tuple({torch.float32, q.dtype}), layout="[max_position, rotary_dim]"
    )
    checks.nonempty("cos_sin_cache", cos_sin_cache, 0, "max_position")
    rotary_dim = cos_sin_cache.shape[1]
    if rotary_dim == 0 or rotary_dim % 2 or rotary_dim > q.shape[2]:
        raise ValueError(
            f"cos_sin_cache.shape[1] (rotary_dim) must be even, > 0 and <= head_dim {q.shape[2]}; got {rotary_dim}"
        )
    checks.contiguous("cos_sin_cache", cos_sin_cache)
    is_neox = checks.boolean("is_neox", is_neox)
    if not checks.tracing():  # these need data pointers and values, unknown while tracing
        _check_memory(positions, q, k, cos_sin_cache.shape[0])
    return is_neox


_POSITIONS_CHECKED = checks.CheckedTensors()


def _check_memory(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, max_position: int) -> None:
    if q.numel() and k.numel() and _overlap(q, k):
        raise ValueError("q and k must not overlap in memory: both are rotated in place")
    if positions.device.type == "cpu" and positions.numel():
        _POSITIONS_CHECKED.check_once((positions,), (max_position,), lambda: _check_positions(positions, max_position))


def _check_positions(positions: torch.Tensor, max_position: int) -> None:
    lo, hi = (int(x) for x in torch.aminmax(positions))
    if lo < 0 or hi >= max_position:
        raise ValueError(f"positions must lie in [0, {max_position}) (the rows of cos_sin_cache); got [{lo}, {hi}]")


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two views may touch the same bytes (interleaved views of one qkv row are fine)."""
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    # Within one token row, q's heads and k's heads occupy disjoint spans; rows repeat with the
    # same stride, so comparing the spans of the first row decides it when strides agree.
    size = a.element_size()
    a_lo, b_lo = a.data_ptr(), b.data_ptr()
    a_hi = a_lo + a.shape[1] * a.shape[2] * size
    b_hi = b_lo + b.shape[1] * b.shape[2] * size
    if a.stride(0) == b.stride(0) and a.stride(0) * size >= max(a_hi, b_hi) - min(a_lo, b_lo):
        return a_lo < b_hi and b_lo < a_hi
    span_a = a_lo + ((a.shape[0] - 1) * a.stride(0) * size) + (a_hi - a_lo)
    span_b = b_lo + ((b.shape[0] - 1) * b.stride(0) * size) + (b_hi - b_lo)
    return a_lo < span_b and b_lo < span_a
