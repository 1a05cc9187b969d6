"""Attention over a paged KV cache: store, decode, ragged prefill, and merging partial results.

The KV cache of one layer is a pair ``k_cache``, ``v_cache`` of shape
``[num_pages, page_size, num_kv_heads, head_dim]``. A sequence's tokens live in the pages its row
of ``page_table`` lists, in order. See docs/api/attention.md.
"""

from __future__ import annotations

import math

import torch

from .. import registry
from . import checks

ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (64, 128, 256)
MAX_PAGE_SIZE = 256


def _check_cache(k_cache, v_cache) -> None:
    layout = "[num_pages, page_size, num_kv_heads, head_dim]"
    checks.tensor("k_cache", k_cache, ndim=4, dtypes=ATTENTION_DTYPES, layout=layout)
    checks.tensor("v_cache", v_cache, ndim=4, dtypes=ATTENTION_DTYPES, layout=layout)
    checks.same_device("v_cache", v_cache, "k_cache", k_cache)
    checks.same_dtype("v_cache", v_cache, "k_cache", k_cache)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}; got {tuple(v_cache.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        checks.contiguous(name, t)
    checks.nonempty("k_cache", k_cache, 0, "num_pages")
    page_size, head_dim = k_cache.shape[1], k_cache.shape[3]
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"k_cache.shape[1] (page_size) must be in [1, {MAX_PAGE_SIZE}]; got {page_size}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"k_cache.shape[3] (head_dim) must be one of {HEAD_DIMS}; got {head_dim}")
    checks.nonempty("k_cache", k_cache, 2, "num_kv_heads")


def _check_query(q, k_cache, layout: str, token_strided: bool = False) -> None:
    checks.tensor("q", q, ndim=3, dtypes=ATTENTION_DTYPES, layout=layout)
    checks.same_device("q", q, "k_cache", k_cache)
    checks.same_dtype("q", q, "k_cache", k_cache)
    if token_strided:
        checks.heads_contiguous("q", q)
    else:
        checks.contiguous("q", q)
    checks.dim_size("q", q, 2, k_cache.shape[3], "head_dim of k_cache")
    heads, kv_heads = q.shape[1], k_cache.shape[2]
    if heads == 0 or heads % kv_heads:
        raise ValueError(
            f"q.shape[1] (num_heads = {heads}) must be a positive multiple of k_cache.shape[2] "
            f"(num_kv_heads = {kv_heads}) for grouped-query attention"
        )


def _check_index(name: str, t, ndim: int, layout: str, q: torch.Tensor) -> None:
    checks.tensor(name, t, ndim=ndim, dtypes=(torch.int32,), layout=layout)
    checks.contiguous(name, t)
    checks.same_device(name, t, "q", q)


def _options(scale, sliding_window, soft_cap, head_dim: int) -> tuple[float, int, float]:
    scale = 1.0 / math.sqrt(head_dim) if scale is None else checks.positive_float("scale", scale)
    if sliding_window is None:
        window = -1
    elif isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 1:
        raise ValueError(f"sliding_window must be None or an int >= 1; got {sliding_window!r}")
    else:
        window = sliding_window
    soft_cap = 0.0 if soft_cap is None else checks.positive_float("soft_cap", soft_cap)
    return scale, window, soft_cap


_PAGES_CHECKED = checks.CheckedTensors()
_SLOTS_CHECKED = checks.CheckedTensors()


def _check_pages_on_cpu(page_table, lengths, page_size: int, num_pages: int, what: str) -> None:
    """Bounds of lengths and of the page indices they reach; only where reading them is free."""
    if checks.tracing() or page_table.device.type != "cpu" or lengths.numel() == 0:
        return
    _PAGES_CHECKED.check_once(
        (page_table, lengths), (page_size, num_pages), lambda: _check_pages(page_table, lengths, page_size, num_pages, what)
    )


def _check_pages(page_table, lengths, page_size: int, num_pages: int, what: str) -> None:
    capacity = page_table.shape[1] * page_size
    lo, hi = (int(v) for v in torch.aminmax(lengths))
    if lo < 1 or hi > capacity:
        raise ValueError(
            f"{what} must lie in [1, {capacity}] (page_table.shape[1] * page_size); got values in [{lo}, {hi}]"
        )
    # Decode is latency-bound on CPU: one pass over the whole table settles the usual case, and
    # only a table holding out-of-range entries needs the slower look at the pages in use.
    lo, hi = (int(v) for v in torch.aminmax(page_table))
    if lo >= 0 and hi < num_pages:
        return
    used = (torch.arange(page_table.shape[1])[None, :] * page_size) < lengths[:, None]
    pages = page_table[used]
    if pages.numel() and (int(pages.min()) < 0 or int(pages.max()) >= num_pages):
        raise ValueError(
            f"page_table holds page indices in [{int(pages.min())}, {int(pages.max())}] where the "
            f"sequences' tokens live; the cache has pages [0, {num_pages})"
        )


def store_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write new tokens' keys and values into the paged cache (writes ``k_cache`` and ``v_cache``).

    Parameters
    ----------
    k, v : torch.Tensor
        ``[num_tokens, num_kv_heads, head_dim]``, the cache's dtype; heads contiguous
        (``stride(2) == 1``, ``stride(1) == head_dim``), the token stride may be larger (views of
        a fused qkv projection).
    k_cache, v_cache : torch.Tensor
        ``[num_pages, page_size, num_kv_heads, head_dim]``, contiguous; written in place.
    slot_mapping : torch.Tensor
        ``[num_tokens]``, int64: token ``t`` goes to page ``slot // page_size``, offset
        ``slot % page_size``; ``-1`` skips the token (padding).
    """
    check_store(k, v, k_cache, v_cache, slot_mapping)
    registry.dispatch("store_kv_cache", k, v, k_cache, v_cache, slot_mapping)


def check_store(k, v, k_cache, v_cache, slot_mapping) -> None:
    """The arguments of :func:`store_kv_cache` (also those of ``rotary_embedding_and_store_kv_``)."""
    _check_cache(k_cache, v_cache)
    for name, t in (("k", k), ("v", v)):
        checks.tensor(name, t, ndim=3, dtypes=ATTENTION_DTYPES, layout="[num_tokens, num_kv_heads, head_dim]")
        checks.same_device(name, t, "k_cache", k_cache)
        checks.same_dtype(name, t, "k_cache", k_cache)
        checks.dim_size(name, t, 1, k_cache.shape[2], "num_kv_heads of k_cache")
        checks.dim_size(name, t, 2, k_cache.shape[3], "head_dim of k_cache")
        checks.heads_contiguous(name, t)
    checks.dim_size("v", v, 0, k.shape[0], "num_tokens of k")
    checks.tensor("slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int64,), layout="[num_tokens]")
    checks.same_device("slot_mapping", slot_mapping, "k_cache", k_cache)
    checks.dim_size("slot_mapping", slot_mapping, 0, k.shape[0], "num_tokens of k")
    if not checks.tracing() and slot_mapping.device.type == "cpu" and slot_mapping.numel():
        slots = k_cache.shape[0] * k_cache.shape[1]

        def check_slots() -> None:
            lo, hi = (int(x) for x in torch.aminmax(slot_mapping))
            if lo < -1 or hi >= slots:
                raise ValueError(f"slot_mapping must lie in [-1, {slots}) (-1 skips a token); got values in [{lo}, {hi}]")

        _SLOTS_CHECKED.check_once((slot_mapping,), (slots,), check_slots)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    *,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    return_lse: bool = False,
):
    """Attention of one new query token per sequence over its paged KV cache.

    Parameters
    ----------
    q : torch.Tensor
        ``[batch, num_heads, head_dim]``, the cache's dtype (float16, bfloat16; float32 on CPU);
        heads contiguous (``stride(2) == 1``, ``stride(1) == head_dim``), the batch stride may be
        larger (the q slice of a fused qkv projection, read in place). ``num_heads`` is a multiple
        of the cache's ``num_kv_heads`` (GQA).
    k_cache, v_cache : torch.Tensor
        ``[num_pages, page_size, num_kv_heads, head_dim]``; head_dim 64, 128 or 256; page_size 1..256.
    page_table : torch.Tensor
        ``[batch, max_pages]``, int32: row ``i`` lists sequence ``i``'s pages in order.
    seq_lens : torch.Tensor
        ``[batch]``, int32: the cached tokens of each sequence including the current one, whose
        K/V ``store_kv_cache`` wrote first; each in ``[1, max_pages * page_size]``.
    scale : float, optional
        Score scale; default ``1 / sqrt(head_dim)``.
    sliding_window : int, optional
        Attend only the last ``sliding_window`` keys (the current one included).
    soft_cap : float, optional
        Cap scores with ``soft_cap * tanh(score / soft_cap)`` (Gemma 2, Grok).
    return_lse : bool
        Also return the float32 ``[batch, num_heads]`` log-sum-exp (natural log) of the scores, to
        merge partial results with :func:`merge_attention_states`.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        ``out`` ``[batch, num_heads, head_dim]`` in q's dtype; with ``return_lse``, ``(out, lse)``.
    """
    _check_cache(k_cache, v_cache)
    options = _check_decode(q, k_cache, page_table, seq_lens, scale, sliding_window, soft_cap, return_lse)
    out, lse = registry.dispatch("paged_decode_attention", q, k_cache, v_cache, page_table, seq_lens, *options)
    return (out, lse) if return_lse else out


def _check_decode(q, k_cache, page_table, seq_lens, scale, sliding_window, soft_cap, return_lse):
    """The arguments of :func:`paged_decode_attention` past the caches (checked by the caller);
    returns the kernels' (scale, window, soft_cap)."""
    _check_query(q, k_cache, "[batch, num_heads, head_dim]", token_strided=True)
    _check_index("page_table", page_table, 2, "[batch, max_pages]", q)
    _check_index("seq_lens", seq_lens, 1, "[batch]", q)
    checks.dim_size("page_table", page_table, 0, q.shape[0], "batch of q")
    checks.dim_size("seq_lens", seq_lens, 0, q.shape[0], "batch of q")
    checks.nonempty("page_table", page_table, 1, "max_pages")
    _check_pages_on_cpu(page_table, seq_lens, k_cache.shape[1], k_cache.shape[0], "seq_lens")
    checks.boolean("return_lse", return_lse)
    return _options(scale, sliding_window, soft_cap, q.shape[2])


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_lens: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    *,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    return_lse: bool = False,
):
    """Attention of a ragged batch of new tokens over their sequences' paged KV cache.

    Each sequence's new tokens attend to its cached prefix and, causally, to each other: chunked
    prefill and prefix-cache reuse. The new tokens' K/V are stored (``store_kv_cache``) first.

    Parameters
    ----------
    q : torch.Tensor
        ``[total_new_tokens, num_heads, head_dim]``, the cache's dtype; heads contiguous, the token
        stride may be larger (the q slice of a fused qkv projection, read in place), as in
        :func:`paged_decode_attention`.
    k_cache, v_cache : torch.Tensor
        ``[num_pages, page_size, num_kv_heads, head_dim]``.
    page_table : torch.Tensor
        ``[batch, max_pages]``, int32.
    qo_indptr : torch.Tensor
        ``[batch + 1]``, int32, non-decreasing from 0 to ``total_new_tokens``: sequence ``i`` owns
        queries ``qo_indptr[i]`` to ``qo_indptr[i + 1] - 1``.
    kv_lens : torch.Tensor
        ``[batch]``, int32: each sequence's tokens after this step, new ones included (so at least
        its number of new tokens, and at least 1).
    causal : bool
        New token ``j`` of a sequence with ``n`` new tokens sits at position ``kv_len - n + j`` and
        attends keys up to its own position; ``False`` attends all ``kv_len`` keys.
    scale, sliding_window, soft_cap, return_lse
        As in :func:`paged_decode_attention`.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        ``out`` ``[total_new_tokens, num_heads, head_dim]``; with ``return_lse``, also ``lse``
        ``[total_new_tokens, num_heads]`` float32.
    """
    _check_cache(k_cache, v_cache)
    _check_query(q, k_cache, "[total_new_tokens, num_heads, head_dim]", token_strided=True)
    _check_index("page_table", page_table, 2, "[batch, max_pages]", q)
    _check_index("qo_indptr", qo_indptr, 1, "[batch + 1]", q)
    _check_index("kv_lens", kv_lens, 1, "[batch]", q)
    checks.dim_size("qo_indptr", qo_indptr, 0, page_table.shape[0] + 1, "batch + 1, from page_table")
    checks.dim_size("kv_lens", kv_lens, 0, page_table.shape[0], "batch, from page_table")
    checks.nonempty("page_table", page_table, 1, "max_pages")
    if not checks.tracing() and qo_indptr.device.type == "cpu":
        counts = qo_indptr[1:] - qo_indptr[:-1]
        if int(qo_indptr[0]) != 0 or int(qo_indptr[-1]) != q.shape[0] or (counts < 0).any():
            raise ValueError(
                f"qo_indptr must rise from 0 to q.shape[0] = {q.shape[0]} without decreasing; got {qo_indptr.tolist()}"
            )
        if (kv_lens < counts).any():
            raise ValueError("kv_lens must count each sequence's new tokens too: some kv_lens are below their query count")
    _check_pages_on_cpu(page_table, kv_lens, k_cache.shape[1], k_cache.shape[0], "kv_lens")
    checks.boolean("causal", causal)
    options = _options(scale, sliding_window, soft_cap, q.shape[2])
    checks.boolean("return_lse", return_lse)
    out, lse = registry.dispatch(
        "paged_prefill_attention", q, k_cache, v_cache, page_table, qo_indptr, kv_lens, options[0], causal, *options[1:]
    )
    return (out, lse) if return_lse else out


def merge_attention_states(
    v_a: torch.Tensor, lse_a: torch.Tensor, v_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two attention results over disjoint key sets (split-KV, or cached prefix + new tokens).

    ``lse = log(exp(lse_a) + exp(lse_b))``, ``v = v_a * exp(lse_a - lse) + v_b * exp(lse_b - lse)``.

    Parameters
    ----------
    v_a, v_b : torch.Tensor
        ``[num_tokens, num_heads, head_dim]``, contiguous, one dtype (float32, float16, bfloat16).
    lse_a, lse_b : torch.Tensor
        ``[num_tokens, num_heads]``, float32, natural log; ``-inf`` marks an empty part.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The merged ``v`` (new tensor, v_a's dtype) and ``lse`` (float32).
    """
    for name, t in (("v_a", v_a), ("v_b", v_b)):
        checks.tensor(name, t, ndim=3, layout="[num_tokens, num_heads, head_dim]")
        checks.contiguous(name, t)
    checks.same_device("v_b", v_b, "v_a", v_a)
    checks.same_dtype("v_b", v_b, "v_a", v_a)
    if v_b.shape != v_a.shape:
        raise ValueError(f"v_b must have v_a's shape {tuple(v_a.shape)}; got {tuple(v_b.shape)}")
    checks.nonempty("v_a", v_a, 1, "heads")
    checks.nonempty("v_a", v_a, 2, "head_dim")
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        checks.tensor(name, t, ndim=2, dtypes=(torch.float32,), layout="[num_tokens, num_heads]")
        checks.same_device(name, t, "v_a", v_a)
        checks.contiguous(name, t)
        if t.shape != v_a.shape[:2]:
            raise ValueError(f"{name} must have shape {tuple(v_a.shape[:2])} (v_a's tokens and heads); got {tuple(t.shape)}")
    return registry.dispatch("merge_attention_states", v_a, lse_a, v_b, lse_b)
