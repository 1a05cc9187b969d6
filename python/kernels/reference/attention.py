import math

import torch


def _gather(cache: torch.Tensor, pages: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` tokens of one sequence, [length, num_kv_heads, head_dim], float32."""
    page_size = cache.shape[1]
    used = pages[: math.ceil(length / page_size)].long()
    return cache[used].flatten(0, 1)[:length].float()


def _attend(q, keys, values, q_positions, scale, causal, window, soft_cap):
    """q [n, H, D] float32 at absolute q_positions [n]; keys/values [L, Hk, D] at positions 0..L-1."""
    group = q.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(group, dim=1)
    values = values.repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q, keys) * scale
    if soft_cap > 0:
        scores = soft_cap * torch.tanh(scores / soft_cap)
    key_positions = torch.arange(keys.shape[0], device=q.device)
    allowed = torch.ones(q.shape[0], keys.shape[0], dtype=torch.bool, device=q.device)
    if causal:
        allowed &= key_positions[None, :] <= q_positions[:, None]
    if window > 0:
        allowed &= key_positions[None, :] > q_positions[:, None] - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [H, n]
    out = torch.einsum("hnl,lhd->nhd", torch.softmax(scores, dim=-1), values)
    return out, lse.t()


def paged_decode_attention(q, k_cache, v_cache, page_table, seq_lens, scale, window, soft_cap):
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    for i, length in enumerate(seq_lens.tolist()):
        keys = _gather(k_cache, page_table[i], length)
        values = _gather(v_cache, page_table[i], length)
        position = torch.tensor([length - 1], device=q.device)
        o, s = _attend(q[i : i + 1].float(), keys, values, position, scale, True, window, soft_cap)
        out[i], lse[i] = o[0], s[0]
    return out.to(q.dtype), lse


def paged_prefill_attention(q, k_cache, v_cache, page_table, qo_indptr, kv_lens, scale, causal, window, soft_cap):
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    bounds = qo_indptr.tolist()
    for i, length in enumerate(kv_lens.tolist()):
        start, end = bounds[i], bounds[i + 1]
        if start == end:
            continue
        keys = _gather(k_cache, page_table[i], length)
        values = _gather(v_cache, page_table[i], length)
        positions = torch.arange(length - (end - start), length, device=q.device)
        out[start:end], lse[start:end] = _attend(q[start:end].float(), keys, values, positions, scale, causal, window, soft_cap)
    return out.to(q.dtype), lse


def merge_attention_states(v_a, lse_a, v_b, lse_b):
    lse = torch.logaddexp(lse_a, lse_b)
    # An empty part has lse -inf; exp(-inf - lse) is 0 unless both are empty.
    w_a = torch.exp(lse_a - lse).nan_to_num(0.0).unsqueeze(-1)
    w_b = torch.exp(lse_b - lse).nan_to_num(0.0).unsqueeze(-1)
    return (v_a.float() * w_a + v_b.float() * w_b).to(v_a.dtype), lse


def store_kv_cache(k, v, k_cache, v_cache, slot_mapping):
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    page_size = k_cache.shape[1]
    pages, offsets = slots // page_size, slots % page_size
    k_cache[pages, offsets] = k[keep]
    v_cache[pages, offsets] = v[keep]
