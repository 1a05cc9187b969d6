import torch

from .attention import paged_decode_attention
from .rope import rotary_embedding_and_store_kv_


def new_token_slots(slot_mapping, page_table, seq_lens, page_size: int):
    """``(slots, bad)``: ``slot_mapping`` with its bad entries (non-negative, yet not the slot of the
    sequence's token ``seq_lens - 1``) set to -1, and the mask of them; torch ops only, no sync."""
    last = (seq_lens.long() - 1).clamp(0, page_table.shape[1] * page_size - 1)
    page = page_table.long().gather(1, (last // page_size).unsqueeze(1)).squeeze(1)
    bad = (slot_mapping >= 0) & (slot_mapping != page * page_size + last % page_size)
    return torch.where(bad, -1, slot_mapping), bad


def two_steps(rope_store, decode, positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping,
              page_table, seq_lens, scale, window, soft_cap, is_neox):
    """The op as its two steps (``rope_store``, ``decode``: implementations of
    ``rotary_embedding_and_store_kv_`` and ``paged_decode_attention``) on copies of q and k, a
    bad slot's sequence stored nowhere and NaN."""
    slots, bad = new_token_slots(slot_mapping, page_table, seq_lens, k_cache.shape[1])
    q, k = q.clone(), k.clone()
    rope_store(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slots, is_neox)
    out, lse = decode(q, k_cache, v_cache, page_table, seq_lens, scale, window, soft_cap)
    return out.masked_fill(bad[:, None, None], float("nan")), lse.masked_fill(bad[:, None], float("nan"))


def paged_decode_attention_with_rope_(*args):
    return two_steps(rotary_embedding_and_store_kv_, paged_decode_attention, *args)
