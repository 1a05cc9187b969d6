import torch

from .attention import store_kv_cache


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """x [tokens, heads, rotary_dim] float32; cos, sin [tokens, 1, rotary_dim / 2]."""
    if is_neox:
        x1, x2 = x.chunk(2, dim=-1)
    else:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    r1 = x1 * cos - x2 * sin
    r2 = x2 * cos + x1 * sin
    if is_neox:
        return torch.cat((r1, r2), dim=-1)
    return torch.stack((r1, r2), dim=-1).flatten(-2)


def rotary_embedding_(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> None:
    rotary_dim = cos_sin_cache.shape[1]
    cos, sin = cos_sin_cache[positions].float().unsqueeze(1).chunk(2, dim=-1)
    for t in (q, k):
        rotated = _rotate(t[..., :rotary_dim].float(), cos, sin, is_neox)
        t[..., :rotary_dim] = rotated.to(t.dtype)


def rotary_embedding_and_store_kv_(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, is_neox) -> None:
    rotary_embedding_(positions, q, k, cos_sin_cache, is_neox)
    store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
