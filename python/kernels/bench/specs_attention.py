"""Benchmark specs of the paged-attention ops (docs/dev/op-semantics.md "Paged attention").

Shape strings (DESIGN.md):

- ``paged_decode_attention``: ``BATCHxCONTEXTxHEADSxKVHEADSxDIMxPAGE``: BATCH sequences, each at the
  full CONTEXT length (one new query each), HEADS query heads over KVHEADS cached heads of DIM,
  pages of PAGE tokens.
- ``paged_prefill_attention``: ``TOKENSxCONTEXTxHEADSxKVHEADSxDIM``, pages of ``PREFILL_PAGE`` (16)
  tokens. TOKENS new queries in all; each sequence has CONTEXT tokens after this step (a cached
  prefix of CONTEXT - its new tokens). Variant ``raggedN``: N sequences of TOKENS / N new tokens
  each (all of the same lengths); without it, one sequence.
- ``store_kv_cache``: ``TOKENSxKVHEADSxDIM`` (pages of 16 tokens).
- ``rotary_embedding_and_store_kv_``: ``TOKENSxHIDDEN``, RoPE's shapes; K / V into pages of 16
  tokens. Its ``unfused`` peer is ``rotary_embedding_`` then ``store_kv_cache``.
- ``merge_attention_states``: ``TOKENSxHEADSxDIM``.
- ``paged_decode_attention_with_rope_``: ``paged_decode_attention``'s shapes; q, k, v of the new
  tokens are views of one fused qkv row per sequence, variant ``neox``. Its ``unfused`` peer is
  ``rotary_embedding_and_store_kv_`` then ``paged_decode_attention``.

Variants of the two attention ops are ``+``-joined parts, e.g. ``ragged8+window4096+softcap50``:
``raggedN`` (prefill), ``noncausal`` (prefill), ``windowW`` (sliding window), ``softcapC``; ``""`` is
plain causal attention.

Inputs: the KV cache holds exactly the pages the sequences use, handed out by a random permutation
(the page table is shuffled, as in a cache that has served many requests); every sequence is at
its full length; values are standard normal.
"""

from __future__ import annotations

import math
import re

import torch

from .. import composite
from .. import reference as _reference
from ..ops import attention as _attention
from ..ops import attention_rope as _attention_rope
from ..ops import rope as _rope
from .specs import OpSpec, ShapeError, _rope_cache, dtype_size, rope_bytes, rope_heads, rope_qkv, rope_validate

PREFILL_PAGE = 16
STORE_PAGE = 16
HEAD_DIMS = (64, 128, 256)
MAX_PAGE = 256
DEFAULT_CACHE_LIMIT_BYTES = 40 * 10**9  # default decode shapes whose K + V cache exceed this are left out
SINGLE_SET_OVER_CACHE = 8.0  # one input set above 8x L2 / LLC: timed without rotation


def _randn(shape, dtype, device, gen) -> torch.Tensor:
    # Directly in the target dtype: a float32 staging tensor of a 17 GB bf16 cache would not fit.
    return torch.empty(shape, dtype=dtype, device=device).normal_(generator=gen)


def _shuffled_page_table(rows: int, pages_per_row: int, device, gen) -> torch.Tensor:
    perm = torch.randperm(rows * pages_per_row, device=device, generator=gen)
    return perm.to(torch.int32).view(rows, pages_per_row).contiguous()


# ---------------------------------------------------------------------------------------------
# Variants


_PART = re.compile(r"^(ragged)(\d+)$|^(window)(\d+)$|^(softcap)(\d+(?:\.\d+)?)$|^(noncausal)$")


def parse_attention_variant(text: str, op: str, allow_ragged: bool) -> dict:
    """``{"ragged": N, "causal": bool, "window": int | None, "soft_cap": float | None}``."""
    found = {"ragged": 1, "causal": True, "window": None, "soft_cap": None}
    seen = set()
    for part in filter(None, text.strip().lower().split("+")):
        m = _PART.match(part)
        kind = next((g for g in (m.group(1), m.group(3), m.group(5), m.group(7)) if g), None) if m else None
        if kind is None or kind in seen or (kind in ("ragged", "noncausal") and not allow_ragged):
            parts = "raggedN, noncausal, windowW, softcapC" if allow_ragged else "windowW, softcapC"
            raise ShapeError(f"bad variant {text!r} for {op}: '+'-joined parts among {parts} (e.g. window4096), or ''")
        seen.add(kind)
        if kind == "ragged":
            found["ragged"] = int(m.group(2))
        elif kind == "window":
            found["window"] = int(m.group(4))
        elif kind == "softcap":
            found["soft_cap"] = float(m.group(6))
        else:
            found["causal"] = False
        if found["ragged"] < 1 or (found["window"] is not None and found["window"] < 1) or found["soft_cap"] == 0:
            raise ShapeError(f"bad variant {text!r} for {op}: ragged, window and softcap must be positive")
    return found


def format_attention_variant(v: dict) -> str:
    parts = []
    if v["ragged"] > 1:
        parts.append(f"ragged{v['ragged']}")
    if not v["causal"]:
        parts.append("noncausal")
    if v["window"] is not None:
        parts.append(f"window{v['window']}")
    if v["soft_cap"] is not None:
        parts.append(f"softcap{v['soft_cap']:g}")
    return "+".join(parts)


def _canonical(op: str, allow_ragged: bool):
    return lambda text: format_attention_variant(parse_attention_variant(text, op, allow_ragged))


def _check_heads(op: str, text: str, heads: int, kv_heads: int, head_dim: int) -> None:
    if heads % kv_heads:
        raise ShapeError(f"bad shape {text!r} for {op}: HEADS ({heads}) must be a multiple of KVHEADS ({kv_heads})")
    if head_dim not in HEAD_DIMS:
        raise ShapeError(f"bad shape {text!r} for {op}: DIM must be one of {HEAD_DIMS}; got {head_dim}")


# ---------------------------------------------------------------------------------------------
# paged_decode_attention: BATCHxCONTEXTxHEADSxKVHEADSxDIMxPAGE


def _decode_validate(text, dims):
    batch, context, heads, kv_heads, head_dim, page = dims
    _check_heads("paged_decode_attention", text, heads, kv_heads, head_dim)
    if page > MAX_PAGE:
        raise ShapeError(f"bad shape {text!r} for paged_decode_attention: PAGE must be in [1, {MAX_PAGE}]; got {page}")


def _keys_read(context: int, window: int | None) -> int:
    return context if window is None else min(context, window)


def _decode_bytes(dims, dtype, variant):
    batch, context, heads, kv_heads, head_dim, page = dims
    v = parse_attention_variant(variant, "paged_decode_attention", False)
    size = dtype_size(dtype)
    kv = 2 * batch * _keys_read(context, v["window"]) * kv_heads * head_dim * size  # K and V, each token once
    return kv + 2 * batch * heads * head_dim * size  # + q + out


def _decode_flops(dims, dtype, variant):
    batch, context, heads, kv_heads, head_dim, page = dims
    v = parse_attention_variant(variant, "paged_decode_attention", False)
    return 4 * batch * heads * _keys_read(context, v["window"]) * head_dim  # q.k and p.v, 2 flops per MAC


def _decode_inputs(dims, dtype, device, variant, gen):
    batch, context, heads, kv_heads, head_dim, page = dims
    v = parse_attention_variant(variant, "paged_decode_attention", False)
    pages_per_seq = math.ceil(context / page)
    num_pages = batch * pages_per_seq
    k_cache = _randn((num_pages, page, kv_heads, head_dim), dtype, device, gen)
    v_cache = _randn((num_pages, page, kv_heads, head_dim), dtype, device, gen)
    page_table = _shuffled_page_table(batch, pages_per_seq, device, gen)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    q = _randn((batch, heads, head_dim), dtype, device, gen)
    return (q, k_cache, v_cache, page_table, seq_lens, v["window"], v["soft_cap"])


def _decode_public(q, k_cache, v_cache, page_table, seq_lens, window, soft_cap):
    return _attention.paged_decode_attention(
        q, k_cache, v_cache, page_table, seq_lens, sliding_window=window, soft_cap=soft_cap
    )


def _decode_dispatch_args(args):
    q, k_cache, v_cache, page_table, seq_lens, window, soft_cap = args
    scale = 1.0 / math.sqrt(q.shape[-1])
    return (q, k_cache, v_cache, page_table, seq_lens, scale, -1 if window is None else window, soft_cap or 0.0)


def _decode_reference(*args):
    return _reference.paged_decode_attention(*_decode_dispatch_args(args))[0]


def decode_default_shapes(device_type: str) -> tuple[str, ...]:
    if device_type != "cuda":
        return ("1x2048x9x3x64x16", "16x2048x9x3x64x16")  # SmolLM2-135M: 9 heads over 3, head_dim 64
    shapes = []
    for page in (16, 64):
        for batch in (1, 16, 64, 128):
            for context in (1024, 4096, 32768):
                heads, kv_heads, head_dim = 32, 8, 128  # Llama-3-8B
                cache = 2 * batch * context * kv_heads * head_dim * 2  # K + V, bfloat16
                if cache <= DEFAULT_CACHE_LIMIT_BYTES:
                    shapes.append(f"{batch}x{context}x{heads}x{kv_heads}x{head_dim}x{page}")
    return tuple(shapes)


# ---------------------------------------------------------------------------------------------
# paged_prefill_attention: TOKENSxCONTEXTxHEADSxKVHEADSxDIM (pages of PREFILL_PAGE tokens)


def _prefill_validate(text, dims):
    tokens, context, heads, kv_heads, head_dim = dims
    _check_heads("paged_prefill_attention", text, heads, kv_heads, head_dim)


def _prefill_check_case(variant, dims):
    tokens, context = dims[:2]
    n = parse_attention_variant(variant, "paged_prefill_attention", True)["ragged"]
    if tokens % n:
        return f"TOKENS ({tokens}) must split evenly into the {n} sequences of variant {variant!r}"
    if tokens // n > context:
        return (
            f"each sequence's new tokens ({tokens // n}) must fit in its CONTEXT ({context}): "
            f"CONTEXT counts the new tokens too"
        )
    return None


def _prefill_geometry(dims, variant):
    """(sequences, new tokens per sequence, parsed variant)."""
    v = parse_attention_variant(variant, "paged_prefill_attention", True)
    return v["ragged"], dims[0] // v["ragged"], v


def _visible_keys(new: int, context: int, causal: bool, window: int | None) -> tuple[int, int]:
    """(sum over one sequence's queries of the keys each attends, distinct keys read)."""
    positions = torch.arange(context - new, context, dtype=torch.int64)
    hi = positions + 1 if causal else torch.full_like(positions, context)
    lo = (positions - window + 1).clamp_min(0) if window is not None else torch.zeros_like(positions)
    return int((hi - lo).sum()), int(hi.max() - lo.min()) if new else 0


def _prefill_bytes(dims, dtype, variant):
    tokens, context, heads, kv_heads, head_dim = dims
    seqs, new, v = _prefill_geometry(dims, variant)
    _, keys = _visible_keys(new, context, v["causal"], v["window"])
    size = dtype_size(dtype)
    return 2 * tokens * heads * head_dim * size + 2 * seqs * keys * kv_heads * head_dim * size  # q, out; K, V once


def _prefill_flops(dims, dtype, variant):
    tokens, context, heads, kv_heads, head_dim = dims
    seqs, new, v = _prefill_geometry(dims, variant)
    pairs, _ = _visible_keys(new, context, v["causal"], v["window"])  # causal: prefix*n + n(n+1)/2
    return 4 * seqs * pairs * heads * head_dim


def _prefill_inputs(dims, dtype, device, variant, gen):
    tokens, context, heads, kv_heads, head_dim = dims
    seqs, new, v = _prefill_geometry(dims, variant)
    pages_per_seq = math.ceil(context / PREFILL_PAGE)
    k_cache = _randn((seqs * pages_per_seq, PREFILL_PAGE, kv_heads, head_dim), dtype, device, gen)
    v_cache = _randn((seqs * pages_per_seq, PREFILL_PAGE, kv_heads, head_dim), dtype, device, gen)
    page_table = _shuffled_page_table(seqs, pages_per_seq, device, gen)
    qo_indptr = torch.arange(0, tokens + 1, new, dtype=torch.int32, device=device)
    kv_lens = torch.full((seqs,), context, dtype=torch.int32, device=device)
    q = _randn((tokens, heads, head_dim), dtype, device, gen)
    return (q, k_cache, v_cache, page_table, qo_indptr, kv_lens, v["causal"], v["window"], v["soft_cap"])


def _prefill_public(q, k_cache, v_cache, page_table, qo_indptr, kv_lens, causal, window, soft_cap):
    return _attention.paged_prefill_attention(
        q, k_cache, v_cache, page_table, qo_indptr, kv_lens, causal, sliding_window=window, soft_cap=soft_cap
    )


def _prefill_dispatch_args(args):
    q, k_cache, v_cache, page_table, qo_indptr, kv_lens, causal, window, soft_cap = args
    scale = 1.0 / math.sqrt(q.shape[-1])
    window = -1 if window is None else window
    return (q, k_cache, v_cache, page_table, qo_indptr, kv_lens, scale, causal, window, soft_cap or 0.0)


def _prefill_reference(*args):
    return _reference.paged_prefill_attention(*_prefill_dispatch_args(args))[0]


# ---------------------------------------------------------------------------------------------
# Contiguous layouts of the same data, for the SDPA peers (built outside timing)


def contiguous_kv(cache: torch.Tensor, page_table: torch.Tensor, length: int) -> torch.Tensor:
    """``[rows, num_kv_heads, length, head_dim]``: each row's first ``length`` tokens, contiguous."""
    rows, pages = page_table.shape
    page = cache.shape[1]
    used = math.ceil(length / page)
    gathered = cache[page_table[:, :used].long()]  # [rows, used, page, Hkv, D]
    tokens = gathered.flatten(1, 2)[:, :length]  # [rows, length, Hkv, D]
    out = tokens.transpose(1, 2).contiguous()
    del gathered, tokens
    return out


# ---------------------------------------------------------------------------------------------
# store_kv_cache: TOKENSxKVHEADSxDIM


def _store_validate(text, dims):
    if dims[2] not in HEAD_DIMS:
        raise ShapeError(f"bad shape {text!r} for store_kv_cache: DIM must be one of {HEAD_DIMS}; got {dims[2]}")


def _store_inputs(dims, dtype, device, variant, gen):
    tokens, kv_heads, head_dim = dims
    k = _randn((tokens, kv_heads, head_dim), dtype, device, gen)
    v = _randn((tokens, kv_heads, head_dim), dtype, device, gen)
    return (k, v, *_paged_destination(tokens, kv_heads, head_dim, dtype, device, gen))


def _paged_destination(tokens, kv_heads, head_dim, dtype, device, gen):
    """k_cache, v_cache and the slots of ``tokens`` new tokens: they fill shuffled pages in order
    (a prefill into a cache that has served requests)."""
    num_pages = math.ceil(tokens / STORE_PAGE)
    k_cache = _randn((num_pages, STORE_PAGE, kv_heads, head_dim), dtype, device, gen)
    v_cache = _randn((num_pages, STORE_PAGE, kv_heads, head_dim), dtype, device, gen)
    pages = torch.randperm(num_pages, device=device, generator=gen)
    t = torch.arange(tokens, device=device)
    slot_mapping = (pages[t // STORE_PAGE] * STORE_PAGE + t % STORE_PAGE).to(torch.int64)
    return k_cache, v_cache, slot_mapping


def _store_bytes(dims, dtype):
    tokens, kv_heads, head_dim = dims
    # read k and v, write them into the caches, read the int64 slots
    return 4 * tokens * kv_heads * head_dim * dtype_size(dtype) + 8 * tokens


def store_kv_cache_composite(k, v, k_cache, v_cache, slot_mapping):
    """What model code writes without a kernel: ``index_put_`` into the flattened caches.

    It takes slot -1 (padding) as the last slot, as Python indexing does; the bench's inputs have
    no padding. No boolean mask: it would sync the host and break CUDA-graph capture.
    """
    k_cache.view(-1, k_cache.shape[2], k_cache.shape[3])[slot_mapping] = k
    v_cache.view(-1, v_cache.shape[2], v_cache.shape[3])[slot_mapping] = v


# ---------------------------------------------------------------------------------------------
# rotary_embedding_and_store_kv_: TOKENSxHIDDEN (RoPE's shapes), K / V into pages of STORE_PAGE


def _rope_store_inputs(dims, dtype, device, variant, gen):
    positions, q, k, v, cache = rope_qkv(dims, dtype, device, gen)
    k_cache, v_cache, slots = _paged_destination(dims[0], k.shape[1], k.shape[2], dtype, device, gen)
    return (positions, q, k, v, cache, k_cache, v_cache, slots, variant == "neox")


def _rope_store_bytes(dims, dtype):
    tokens, hidden = dims
    _, num_kv_heads, head_dim = rope_heads(hidden)
    # RoPE's traffic, then read v and write k and v rows into the caches, read the int64 slots
    return rope_bytes(dims, dtype) + 3 * tokens * num_kv_heads * head_dim * dtype_size(dtype) + 8 * tokens


def rope_then_store(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, is_neox):
    """The two public ops in turn: what the fused op replaces."""
    _rope.rotary_embedding_(positions, q, k, cos_sin_cache, is_neox)
    _attention.store_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def rope_then_store_composite(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, is_neox):
    """Model code without kernels: the torch RoPE composite, then ``index_put_`` into the caches."""
    composite.rope.rotary_embedding_(positions, q, k, cos_sin_cache, is_neox)
    store_kv_cache_composite(k, v, k_cache, v_cache, slot_mapping)


# ---------------------------------------------------------------------------------------------
# paged_decode_attention_with_rope_: paged_decode_attention's shapes, the new tokens from a fused qkv


def _decode_rope_inputs(dims, dtype, device, variant, gen):
    batch, context, heads, kv_heads, head_dim, page = dims
    q, k_cache, v_cache, page_table, seq_lens, _, _ = _decode_inputs(dims, dtype, device, "", gen)
    qkv = _randn((batch, (heads + 2 * kv_heads) * head_dim), dtype, device, gen)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=1)
    q, k, v = (t.view(batch, -1, head_dim) for t in (q, k, v))
    last = seq_lens.long() - 1
    slots = page_table.long()[:, -1] * page + last % page  # every sequence fills its pages
    return (last, q, k, v, _rope_cache(context, head_dim, dtype, device), k_cache, v_cache, slots, page_table,
            seq_lens, variant == "neox")


def _decode_rope_bytes(dims, dtype, variant):
    batch, context, heads, kv_heads, head_dim, page = dims
    # the decode's traffic, plus the new K / V rows read from qkv and written into the cache
    return _decode_bytes(dims, dtype, "") + 4 * batch * kv_heads * head_dim * dtype_size(dtype)


def _decode_rope_public(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slots, page_table, seq_lens, is_neox):
    return _attention_rope.paged_decode_attention_with_rope_(
        positions, q, k, v, cos_sin_cache, k_cache, v_cache, slots, page_table, seq_lens, is_neox=is_neox
    )


def _decode_rope_dispatch_args(args):
    *head, is_neox = args
    scale = 1.0 / math.sqrt(args[1].shape[-1])
    return (*head, scale, -1, 0.0, is_neox)


def _decode_rope_reference(*args):
    return _reference.paged_decode_attention_with_rope_(*_decode_rope_dispatch_args(args))[0]


def rope_store_then_decode(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slots, page_table, seq_lens, is_neox):
    """The two public ops in turn: what the fused op replaces (they rotate q and k in place)."""
    _rope.rotary_embedding_and_store_kv_(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slots, is_neox)
    return _attention.paged_decode_attention(q, k_cache, v_cache, page_table, seq_lens)


# ---------------------------------------------------------------------------------------------
# merge_attention_states: TOKENSxHEADSxDIM


def _merge_inputs(dims, dtype, device, variant, gen):
    tokens, heads, head_dim = dims
    v_a = _randn((tokens, heads, head_dim), dtype, device, gen)
    v_b = _randn((tokens, heads, head_dim), dtype, device, gen)
    # log-sum-exps of a few thousand scores: around log(L), a spread of a few units
    lse_a = _randn((tokens, heads), torch.float32, device, gen) * 2 + 7
    lse_b = _randn((tokens, heads), torch.float32, device, gen) * 2 + 7
    return (v_a, lse_a, v_b, lse_b)


def _merge_bytes(dims, dtype):
    tokens, heads, head_dim = dims
    # read v_a, v_b, write v; read lse_a, lse_b, write lse (float32)
    return 3 * tokens * heads * head_dim * dtype_size(dtype) + 3 * tokens * heads * 4


def merge_attention_states_composite(v_a, lse_a, v_b, lse_b):
    """The logaddexp formula in torch ops (float32 math, one rounding)."""
    lse = torch.logaddexp(lse_a, lse_b)
    w_a = torch.exp(lse_a - lse).nan_to_num(0.0).unsqueeze(-1)
    w_b = torch.exp(lse_b - lse).nan_to_num(0.0).unsqueeze(-1)
    return (v_a.float() * w_a + v_b.float() * w_b).to(v_a.dtype), lse


# ---------------------------------------------------------------------------------------------
# The table

_ATTENTION_PEERS = {"cuda": ("sdpa_cudnn", "sdpa_flash", "triton"), "cpu": ("sdpa",)}
_TORCH_PEERS = {"cuda": ("torch_eager", "torch_compile"), "cpu": ("torch_eager", "torch_compile")}

ATTENTION_SPECS: dict[str, OpSpec] = {
    "paged_decode_attention": OpSpec(
        name="paged_decode_attention",
        summary="one query per sequence over its paged KV cache (GQA)",
        layout="BATCHxCONTEXTxHEADSxKVHEADSxDIMxPAGE",
        layout_doc=(
            "q [BATCH, HEADS, DIM]; every sequence at CONTEXT tokens; caches [pages, PAGE, KVHEADS, DIM] "
            "with shuffled pages"
        ),
        variants=("",),
        default_shapes={"cuda": decode_default_shapes("cuda"), "cpu": decode_default_shapes("cpu")},
        inplace=False,
        public=_decode_public,
        composite=None,
        reference=_decode_reference,
        _bytes=_decode_bytes,
        _inputs=_decode_inputs,
        _outputs=lambda args, result: [result],
        _validate=_decode_validate,
        ceiling="read_gbps",
        _flops=_decode_flops,
        peers=_ATTENTION_PEERS,
        _parse_variant=_canonical("paged_decode_attention", False),
        _dispatch_args=_decode_dispatch_args,
        single_set_over_cache=SINGLE_SET_OVER_CACHE,
    ),
    "paged_decode_attention_with_rope_": OpSpec(
        name="paged_decode_attention_with_rope_",
        summary="RoPE and the KV store of each sequence's new token, then its decode attention",
        layout="BATCHxCONTEXTxHEADSxKVHEADSxDIMxPAGE",
        layout_doc=(
            "paged_decode_attention's shapes; q, k, v [BATCH, heads, DIM] are views of a fused qkv row per "
            "sequence; the new token's K / V go to its slot (the last of CONTEXT)"
        ),
        variants=("neox",),
        default_shapes={
            "cuda": ("64x192x32x8x128x16", "64x1024x32x8x128x16", "1x32768x32x8x128x16"),
            "cpu": ("1x2048x9x3x64x16",),
        },
        inplace=True,
        public=_decode_rope_public,
        composite=None,
        reference=_decode_rope_reference,
        _bytes=_decode_rope_bytes,
        _inputs=_decode_rope_inputs,
        # the output, and the caches it writes (restored before each timed callable)
        _outputs=lambda args, result: ([] if result is None else [result]) + [args[5], args[6]],
        _validate=_decode_validate,
        ceiling="read_gbps",
        _flops=lambda dims, dtype, variant: _decode_flops(dims, dtype, ""),
        peers={"cuda": ("unfused",), "cpu": ("unfused",)},
        _dispatch_args=_decode_rope_dispatch_args,
        single_set_over_cache=SINGLE_SET_OVER_CACHE,
        unfused=rope_store_then_decode,
    ),
    "paged_prefill_attention": OpSpec(
        name="paged_prefill_attention",
        summary="causal attention of new tokens over their cached prefix and each other (ragged batch)",
        layout="TOKENSxCONTEXTxHEADSxKVHEADSxDIM",
        layout_doc=(
            f"q [TOKENS, HEADS, DIM]; each sequence has CONTEXT tokens including its new ones; pages of "
            f"{PREFILL_PAGE}; variant raggedN: N sequences of TOKENS/N new tokens"
        ),
        variants=("", "ragged8"),
        default_shapes={},
        inplace=False,
        public=_prefill_public,
        composite=None,
        reference=_prefill_reference,
        _bytes=_prefill_bytes,
        _inputs=_prefill_inputs,
        _outputs=lambda args, result: [result],
        _validate=_prefill_validate,
        ceiling="bf16_tflops",
        _flops=_prefill_flops,
        peers=_ATTENTION_PEERS,
        _parse_variant=_canonical("paged_prefill_attention", True),
        _check_case=_prefill_check_case,
        default_cases={
            # one 8192-token prompt; 8 sequences of 1024 new tokens over 3072-token cached prefixes
            "cuda": (("", "8192x8192x32x8x128"), ("ragged8", "8192x4096x32x8x128")),
            "cpu": (("", "512x512x9x3x64"), ("ragged4", "512x1024x9x3x64")),
        },
        _dispatch_args=_prefill_dispatch_args,
        single_set_over_cache=SINGLE_SET_OVER_CACHE,
    ),
    "store_kv_cache": OpSpec(
        name="store_kv_cache",
        summary="write new tokens' K and V into the paged cache (in place)",
        layout="TOKENSxKVHEADSxDIM",
        layout_doc=f"k, v [TOKENS, KVHEADS, DIM] into shuffled pages of {STORE_PAGE} tokens",
        variants=("",),
        default_shapes={"cuda": ("128x8x128", "8192x8x128", "65536x8x128"), "cpu": ("16x3x64", "2048x3x64")},
        inplace=True,
        public=_attention.store_kv_cache,
        composite=store_kv_cache_composite,
        reference=_reference.store_kv_cache,
        _bytes=_store_bytes,
        _inputs=_store_inputs,
        _outputs=lambda args, result: [args[2], args[3]],
        _validate=_store_validate,
        peers=_TORCH_PEERS,
    ),
    "rotary_embedding_and_store_kv_": OpSpec(
        name="rotary_embedding_and_store_kv_",
        summary="RoPE on q and k in place, then k and v into the paged cache",
        layout="TOKENSxHIDDEN",
        layout_doc=(
            "rotary_embedding_'s shapes (HIDDEN = num_heads * head_dim of q, Llama-3-8B's heads); q, k, v "
            f"are views of a fused qkv tensor; K / V go into shuffled pages of {STORE_PAGE} tokens"
        ),
        variants=("neox",),
        default_shapes={"cuda": ("1x4096", "64x4096", "2048x4096", "16384x4096"), "cpu": ("1x4096", "512x4096")},
        inplace=True,
        public=_rope.rotary_embedding_and_store_kv_,
        composite=rope_then_store_composite,
        reference=_reference.rotary_embedding_and_store_kv_,
        _bytes=_rope_store_bytes,
        _inputs=_rope_store_inputs,
        _outputs=lambda args, result: [args[1], args[2], args[5], args[6]],
        _validate=lambda text, dims: rope_validate(text, dims, "rotary_embedding_and_store_kv_"),
        peers={"cuda": ("unfused", "torch_eager"), "cpu": ("unfused", "torch_eager")},
        unfused=rope_then_store,
    ),
    "merge_attention_states": OpSpec(
        name="merge_attention_states",
        summary="merge two partial attention results by their log-sum-exps",
        layout="TOKENSxHEADSxDIM",
        layout_doc="v_a, v_b [TOKENS, HEADS, DIM]; lse_a, lse_b [TOKENS, HEADS] float32",
        variants=("",),
        default_shapes={"cuda": ("128x32x128", "8192x32x128", "65536x32x128"), "cpu": ("16x9x64", "2048x9x64")},
        inplace=False,
        public=_attention.merge_attention_states,
        composite=merge_attention_states_composite,
        reference=_reference.merge_attention_states,
        _bytes=_merge_bytes,
        _inputs=_merge_inputs,
        _outputs=lambda args, result: [result[0], result[1]],
        peers=_TORCH_PEERS,
    ),
}
