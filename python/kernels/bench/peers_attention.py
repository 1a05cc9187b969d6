"""Peers of the paged-attention ops: torch's SDPA on contiguous copies of the data, and our Triton backend.

- ``sdpa`` (CPU): ``torch.nn.functional.scaled_dot_product_attention`` with torch's own choice of
  kernel;
- ``sdpa_cudnn``, ``sdpa_flash`` (GPU): the same under ``sdpa_kernel(SDPBackend.CUDNN_ATTENTION)`` /
  ``(SDPBackend.FLASH_ATTENTION)``, so that each row names the kernel it timed;
- ``triton``: ``kernels.<op>`` under ``kernels.backend("triton")``; one of our rows too, so the
  runner times it once and shows it as a peer of the other rows.

The SDPA peers get the same values laid out as SDPA wants them, built outside timing: decode, query
``[B, H, 1, D]`` over K/V ``[B, Hkv, L, D]``; prefill, ``[N, H, n, D]`` over ``[N, Hkv, L, D]`` (the
ragged batch of the bench has sequences of equal lengths, so it is a batch without padding).
GQA goes through ``enable_gqa=True``; a backend that rejects it gets K/V expanded to H heads (still
outside timing) and a note says so, since it then reads group-times more K/V bytes than ours.
Causal prefill with a cached prefix needs the causal mask aligned to the bottom right:
``torch.nn.attention.bias.causal_lower_right``, which SDPA runs with its flash kernel (CPU: as a
materialised mask); cuDNN gets only the square case (``is_causal=True``). Soft-capping and sliding
windows have no SDPA equivalent in these kernels: those variants have no SDPA peer.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch

from .. import registry
from .peers import Peer, PeerUnavailable
from .specs import OpSpec
from .specs_attention import contiguous_kv, parse_attention_variant

EXPAND_LIMIT_BYTES = 16 << 30  # K/V expanded to all query heads: leave the peer out above this


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION}.get(name)


def _context(name: str) -> Callable[[], contextlib.AbstractContextManager]:
    backend = _sdpa_backend(name)
    if backend is None:
        return contextlib.nullcontext
    from torch.nn.attention import sdpa_kernel

    return lambda: sdpa_kernel(backend)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _probe(call: Callable[[], object], context) -> str | None:
    """None when ``call`` runs under ``context``, else why not (the error and SDPA's first warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with context():
                call()
            return None
        except Exception as e:  # RuntimeError "No available kernel", NotImplementedError, ...
            why = _first_line(e)
    reasons = [str(w.message).splitlines()[0] for w in caught if "kernel not used because" in str(w.message)]
    return why + (f" ({reasons[0]})" if reasons else "")


def _mask_kind(name: str, new: int, context: int, causal: bool) -> str:
    """How the causal structure is handed to SDPA: "none", "square" (is_causal) or "lower_right"."""
    if not causal:
        return "none"
    if new == context:
        return "square"
    if name == "sdpa_cudnn":
        raise PeerUnavailable(
            "SDPA's cuDNN path takes only a square causal mask (is_causal aligns it top-left); a cached "
            "prefix needs it aligned bottom-right"
        )
    return "lower_right"


def _sdpa_call(mask: str, new: int, context: int, gqa: bool):
    import torch.nn.functional as F

    if mask == "lower_right":
        from torch.nn.attention.bias import causal_lower_right

        bias = causal_lower_right(new, context)

        def call(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)

    else:
        is_causal = mask == "square"

        def call(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=gqa)

    return call


def _sdpa(name: str, spec: OpSpec, variant: str, device: torch.device, args: tuple, notes: list[str]) -> Peer:
    if name == "sdpa" and device.type == "cuda":
        raise PeerUnavailable("on GPU the SDPA peers are sdpa_cudnn and sdpa_flash (one backend each)")
    if name != "sdpa" and device.type != "cuda":
        raise PeerUnavailable(f"{name} is a GPU kernel")
    decode = spec.name == "paged_decode_attention"
    v = parse_attention_variant(variant, spec.name, not decode)
    if v["soft_cap"] is not None:
        raise PeerUnavailable("SDPA has no soft-capping of scores")
    if v["window"] is not None:
        raise PeerUnavailable("a sliding window needs an explicit mask, which SDPA's fused kernels do not take")
    q, k_cache = args[0], args[1]
    heads, kv_heads, head_dim, dtype = q.shape[1], k_cache.shape[2], q.shape[2], q.dtype
    group = heads // kv_heads
    if decode:
        seqs, new, context = q.shape[0], 1, int(args[4][0])
    else:
        seqs = args[3].shape[0]
        new, context = q.shape[0] // seqs, int(args[5][0])
    mask = "none" if decode else _mask_kind(name, new, context, v["causal"])
    context_fn = _context(name)

    # Probe with small tensors of the same heads, dtype and mask kind: with GQA, else expanded.
    pq, pk = (1, 64) if decode else ((16, 64) if mask == "lower_right" else (64, 64))
    small_q = torch.randn(1, heads, pq, head_dim, device=device).to(dtype)
    small_kv = torch.randn(1, kv_heads, pk, head_dim, device=device).to(dtype)
    why = _probe(lambda: _sdpa_call(mask, pq, pk, True)(small_q, small_kv, small_kv), context_fn)
    gqa = why is None
    if not gqa and group > 1:
        wide = small_kv.repeat_interleave(group, dim=1)
        why_expanded = _probe(lambda: _sdpa_call(mask, pq, pk, False)(small_q, wide, wide), context_fn)
        if why_expanded is not None:
            raise PeerUnavailable(why_expanded)
        expanded = 2 * seqs * heads * context * head_dim * q.element_size()
        if expanded > EXPAND_LIMIT_BYTES:
            raise PeerUnavailable(
                f"it rejects enable_gqa ({why}) and K/V expanded to {heads} heads would take {expanded / 1e9:.0f} GB"
            )
        notes.append(
            f"peer {name} for {spec.name}: it rejects enable_gqa ({why}); K/V are expanded to all {heads} query "
            f"heads outside timing, so it reads {group}x the K/V bytes of ours"
        )
    elif not gqa:
        raise PeerUnavailable(why)
    call = _sdpa_call(mask, new, context, gqa)

    def prepare(a: tuple) -> tuple:
        q, k_cache, v_cache, page_table = a[:4]
        k = contiguous_kv(k_cache, page_table, context)
        val = contiguous_kv(v_cache, page_table, context)
        if not gqa:
            k, val = k.repeat_interleave(group, dim=1), val.repeat_interleave(group, dim=1)
        if decode:
            sq = q.unsqueeze(2)  # [B, H, 1, D]
        else:
            sq = q.view(seqs, new, heads, head_dim).transpose(1, 2).contiguous()  # [N, H, n, D]
        return (sq, k, val)

    def outputs(a: tuple, out) -> list[torch.Tensor]:
        if decode:
            return [out.squeeze(2)]
        return [out.transpose(1, 2).reshape(seqs * new, heads, head_dim)]

    return Peer(name, call, prepare=prepare, outputs=outputs, context=context_fn)


def _triton(spec: OpSpec, device: torch.device, args: tuple) -> Peer:
    if device.type == "cpu":
        raise PeerUnavailable("Triton runs on CPU only in its interpreter, which is not worth timing")
    try:
        with registry.backend("triton"):
            registry.select(spec.name, *spec.dispatch_args(args))
    except registry.BackendUnavailableError as e:
        raise PeerUnavailable(str(e)) from None
    return Peer("triton", spec.public, outputs=spec.outputs, context=lambda: registry.backend("triton"))


def make(name: str, spec: OpSpec, variant: str, device: torch.device, args: tuple | None, notes: list[str]) -> Peer:
    if args is None:
        raise PeerUnavailable("no input set to look at")
    if name == "triton":
        return _triton(spec, device, args)
    if name in ("sdpa", "sdpa_cudnn", "sdpa_flash"):
        if spec.name not in ("paged_decode_attention", "paged_prefill_attention"):
            raise PeerUnavailable(f"SDPA computes attention, not {spec.name}")
        return _sdpa(name, spec, variant, device, args, notes)
    raise PeerUnavailable(f"unknown peer {name!r}")
