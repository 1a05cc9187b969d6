"""Paged decode attention fused with RoPE and the KV store of the new token (one kernel on CUDA).

See docs/api/attention.md.
"""

from __future__ import annotations

import torch

from .. import registry
from .attention import _check_decode, check_store
from .rope import _check_rotary


def paged_decode_attention_with_rope_(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    *,
    is_neox: bool = True,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    return_lse: bool = False,
):
    """A decode step's attention from the projection's output: RoPE on the new token's q and k,
    its K/V stored into the cache, then :func:`paged_decode_attention`. On CUDA one kernel does it
    all (the rotated q stays in registers; the CTA that reads the new token's page writes it
    first), one launch less per layer than :func:`kernels.rotary_embedding_and_store_kv_` followed
    by the decode.

    The result is that of those two calls in turn, except that ``q`` and ``k`` are left as they
    are (not rotated in place) and a bad slot is caught (below).

    Parameters
    ----------
    positions, q, k, v, cos_sin_cache, is_neox
        As in :func:`kernels.rotary_embedding_and_store_kv_`: one new token per sequence, so ``q``
        is ``[batch, num_heads, head_dim]`` and ``k``, ``v`` ``[batch, num_kv_heads, head_dim]``
        (heads contiguous, e.g. slices of a fused qkv).
    k_cache, v_cache
        The paged cache, as in :func:`paged_decode_attention`; written at the new tokens' slots.
    slot_mapping : torch.Tensor
        ``[batch]``, int64: the slot of each sequence's new token, i.e. of its token
        ``seq_lens[i] - 1`` (``page_table[i, (seq_lens[i] - 1) // page_size] * page_size +
        (seq_lens[i] - 1) % page_size``), or negative to store nothing (padding rows: the cache is
        read as it is). Any other value is bad input: that sequence's output is NaN and nothing is
        stored for it.
    page_table, seq_lens, scale, sliding_window, soft_cap, return_lse
        As in :func:`paged_decode_attention`.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        As :func:`paged_decode_attention`.

    Notes
    -----
    The CUDA kernel covers head_dim 64 and 128, bfloat16 and float16, a neox ``rotary_dim`` that
    is a multiple of 4 (any even one for GPT-J style) and 16-byte aligned ``k`` / ``v`` rows. On
    the CPU one call runs the two ops' kernels in turn on copies of ``q`` and ``k``; elsewhere the
    torch backend runs the two ops in turn on copies.
    """
    is_neox = _check_rotary(positions, q, k, cos_sin_cache, is_neox)
    check_store(k, v, k_cache, v_cache, slot_mapping)  # the caches too
    options = _check_decode(q, k_cache, page_table, seq_lens, scale, sliding_window, soft_cap, return_lse)
    out, lse = registry.dispatch(
        "paged_decode_attention_with_rope_", positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping,
        page_table, seq_lens, *options, is_neox,
    )
    return (out, lse) if return_lse else out

