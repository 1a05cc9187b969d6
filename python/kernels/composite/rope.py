import torch

from ..reference.attention import store_kv_cache


def rotary_embedding_(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> None:
    rotary_dim = cos_sin_cache.shape[1]
    half = rotary_dim // 2
    cos_sin = cos_sin_cache.index_select(0, positions).unsqueeze(1)
    cos, sin = cos_sin[..., :half].to(q.dtype), cos_sin[..., half:].to(q.dtype)
    for t in (q, k):
        rot = t[..., :rotary_dim]
        if is_neox:
            x1, x2 = rot[..., :half], rot[..., half:]
            rot.copy_(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1))
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            rot.copy_(torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2))


def rotary_embedding_and_store_kv_(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, is_neox) -> None:
    rotary_embedding_(positions, q, k, cos_sin_cache, is_neox)
    store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
