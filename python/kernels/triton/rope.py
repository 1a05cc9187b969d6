"""Rotary position embedding kernel: ``rotary_embedding_``, in place on q and k.

One program per token: it loads the token's cos/sin row once and rotates every head of q and k,
HEAD_BLOCK heads at a time. Neox pairs (i, i + R/2) come from two contiguous loads; GPT-J pairs
(2i, 2i + 1) from one contiguous load split into even and odd lanes. A position outside
[0, max_position) reads nothing from the cache and turns the token's q and k into NaN (all of
head_dim, including the dims that partial rotary leaves alone).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import _util
from .attention import store_kv_cache

# Elements of one half (x1 or x2) of a HEAD_BLOCK of heads.
HALF_ELEMENTS = 2048
MAX_WARPS = 8


class Config(NamedTuple):
    half_block: int
    head_block: int
    tail_block: int
    num_warps: int


def config(num_q_heads: int, num_k_heads: int, head_dim: int, rotary_dim: int) -> Config:
    half_block = _util.next_power_of_2(rotary_dim // 2)
    head_block = min(_util.next_power_of_2(max(num_q_heads, num_k_heads)), max(1, HALF_ELEMENTS // half_block))
    tail_block = _util.next_power_of_2(head_dim - rotary_dim) if head_dim > rotary_dim else 0
    return Config(half_block, head_block, tail_block, _util.num_warps(2 * head_block * half_block, MAX_WARPS))


@triton.jit
def _rotate_heads(
    ptr, num_heads, head_dim, rot_dim, cos, sin, nan_end,
    HALF_BLOCK: tl.constexpr, HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr, IS_NEOX: tl.constexpr,
):
    half = rot_dim // 2
    cos = cos[None, :]
    sin = sin[None, :]
    for h0 in range(0, num_heads, HEAD_BLOCK):
        heads = h0 + tl.arange(0, HEAD_BLOCK)[:, None]
        head_ok = heads < num_heads
        head = ptr + heads * head_dim
        if IS_NEOX:
            i = tl.arange(0, HALF_BLOCK)[None, :]
            mask = head_ok & (i < half)
            x1 = tl.load(head + i, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(head + half + i, mask=mask, other=0.0).to(tl.float32)
            y1 = x1 * cos - x2 * sin
            y2 = x2 * cos + x1 * sin
            tl.store(head + i, y1.to(ptr.dtype.element_ty), mask=mask)
            tl.store(head + half + i, y2.to(ptr.dtype.element_ty), mask=mask)
        else:
            # [heads, pairs, 2]: each thread holds whole pairs, so the split costs no data movement.
            j = 2 * tl.arange(0, HALF_BLOCK)[None, :, None] + tl.arange(0, 2)[None, None, :]
            mask = head_ok[:, :, None] & (j < rot_dim)
            x = tl.load(head[:, :, None] + j, mask=mask, other=0.0).to(tl.float32)
            x1, x2 = tl.split(x)
            y1 = x1 * cos - x2 * sin
            y2 = x2 * cos + x1 * sin
            tl.store(head[:, :, None] + j, tl.join(y1, y2).to(ptr.dtype.element_ty), mask=mask)
        if TAIL_BLOCK > 0:
            # The dims partial rotary passes through: written (NaN) only for an invalid position.
            d = rot_dim + tl.arange(0, TAIL_BLOCK)[None, :]
            nan = tl.full([HEAD_BLOCK, TAIL_BLOCK], float("nan"), tl.float32)
            tl.store(head + d, nan.to(ptr.dtype.element_ty), mask=head_ok & (d < nan_end))


@triton.jit
def rotary_embedding_kernel(
    pos_ptr, q_ptr, k_ptr, cache_ptr, q_token_stride, k_token_stride,
    num_q_heads, num_k_heads, head_dim, rot_dim, max_position,
    HALF_BLOCK: tl.constexpr, HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr, IS_NEOX: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token)
    valid = (pos >= 0) & (pos < max_position)
    row = cache_ptr + tl.where(valid, pos, 0) * rot_dim
    half = rot_dim // 2
    i = tl.arange(0, HALF_BLOCK)
    mask = i < tl.where(valid, half, 0)  # nothing is read for an invalid position
    cos = tl.load(row + i, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(row + half + i, mask=mask, other=0.0).to(tl.float32)
    cos = tl.where(valid, cos, float("nan"))
    sin = tl.where(valid, sin, float("nan"))
    # Partial rotary passes dims [rot_dim, head_dim) through, except for an invalid position.
    nan_end = tl.where(valid, rot_dim, head_dim)
    _rotate_heads(q_ptr + token * q_token_stride, num_q_heads, head_dim, rot_dim, cos, sin, nan_end,
                  HALF_BLOCK, HEAD_BLOCK, TAIL_BLOCK, IS_NEOX)
    _rotate_heads(k_ptr + token * k_token_stride, num_k_heads, head_dim, rot_dim, cos, sin, nan_end,
                  HALF_BLOCK, HEAD_BLOCK, TAIL_BLOCK, IS_NEOX)


def rotary_embedding_(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> None:
    num_tokens, num_q_heads, head_dim = q.shape
    if num_tokens == 0:
        return
    max_position, rotary_dim = cos_sin_cache.shape
    positions = positions.contiguous()  # the only argument whose layout the op leaves open
    cfg = config(num_q_heads, k.shape[1], head_dim, rotary_dim)
    with _util.device_guard(q):
        rotary_embedding_kernel[(num_tokens,)](
            positions, q, k, cos_sin_cache, q.stride(0), k.stride(0),
            num_q_heads, k.shape[1], head_dim, rotary_dim, max_position,
            HALF_BLOCK=cfg.half_block, HEAD_BLOCK=cfg.head_block, TAIL_BLOCK=cfg.tail_block,
            IS_NEOX=is_neox, num_warps=cfg.num_warps,
        )


def rotary_embedding_and_store_kv_(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, is_neox):
    # Two launches: the fusion is the native CUDA kernel's.
    rotary_embedding_(positions, q, k, cos_sin_cache, is_neox)
    store_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def aot_cases():
    """(label, kernel, args, constexprs, num_warps) for the ahead-of-time compile check (see aot.py)."""
    # (q heads, k heads, head_dim, rotary_dim): full, partial, non-power-of-two rotary.
    shapes = [(32, 8, 128, 128), (32, 8, 128, 64), (16, 2, 80, 80)]
    cases = [(dtype, is_neox, shape, "fp32" if n % 2 == 0 else dtype)
             for dtype in ("fp16", "bf16") for is_neox in (True, False) for n, shape in enumerate(shapes)]
    cases.append(("fp32", True, shapes[1], "fp32"))
    for dtype, is_neox, (hq, hk, head_dim, rot), cache in cases:
        cfg = config(hq, hk, head_dim, rot)
        const = {"HALF_BLOCK": cfg.half_block, "HEAD_BLOCK": cfg.head_block,
                 "TAIL_BLOCK": cfg.tail_block, "IS_NEOX": is_neox}
        label = (f"rotary_embedding[{dtype} cache={cache} neox={is_neox} heads={hq}/{hk} "
                 f"head_dim={head_dim} rotary_dim={rot}]")
        qkv_width = (hq + 2 * hk) * head_dim  # q and k are views of a fused qkv projection
        args = {
            "pos_ptr": "*i64", "q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "cache_ptr": f"*{cache}",
            "q_token_stride": qkv_width, "k_token_stride": qkv_width, "num_q_heads": hq, "num_k_heads": hk,
            "head_dim": head_dim, "rot_dim": rot, "max_position": 4096,
        }
        yield label, rotary_embedding_kernel, args, const, cfg.num_warps
