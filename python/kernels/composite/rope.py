import torch


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
