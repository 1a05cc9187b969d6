"""W4A16 GEMM: ``a [M, K] @ W.T`` with ``W [N, K]`` unpacked from our int32 nibbles in registers.

A program computes a BLOCK_M x BLOCK_N tile of the output. It walks K in steps of BLOCK_K (the
group size up to 128, so a step lies in one group): loads the ``a`` tile and the packed words of
the weight tile along their rows (coalesced), splits each word into its 8 nibbles, applies the
group's scale and zero point or min in float32, rounds the weight to ``a``'s dtype and
accumulates ``a_tile @ w_tile`` in float32 (float32 inputs: IEEE float32 products, no TF32).
Launch parameters depend on the group size and on whether M is a decode batch (<= 16), so a
serving loop compiles the kernel at most twice per (dtype, mode, group size).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import _util

SYMMETRIC, ZERO_POINTS, MINS = 0, 1, 2
# Two tile shapes: decode (a few tokens: narrow tiles, many programs, to stream the weight from
# every SM) and everything else, so a serving loop compiles twice at most. Measured on the H100
# at N = K = 8192, group 128 (see benchmarks/NOTES.md).
SMALL_M = 16


class Config(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int


def config(m: int, group_size: int) -> Config:
    block_k = min(group_size, 128)
    if m <= SMALL_M:
        return Config(SMALL_M, 16, block_k, 2)
    return Config(64, 32, block_k, 4)


@triton.jit
def w4a16_gemm_kernel(
    a_ptr, qw_ptr, scales_ptr, extra_ptr, out_ptr, M, N, K,
    GROUP: tl.constexpr, MODE: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < N
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    words_per_row = K // 8
    groups = K // GROUP
    # Words are loaded along their own rows (BLOCK_K // 8 consecutive words of each weight row:
    # coalesced), and each is split into its 8 nibbles by a third axis folded back into K.
    kw = tl.arange(0, BLOCK_K // 8)
    shifts = tl.arange(0, 8) * 4
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        # K is a multiple of the group size, itself a multiple of BLOCK_K: no mask along K.
        k = k0 + ks
        a = tl.load(a_ptr + rows64[:, None] * K + k[None, :], mask=row_ok[:, None], other=0.0)
        words = tl.load(qw_ptr + cols64[:, None] * words_per_row + (k0 // 8 + kw)[None, :], mask=col_ok[:, None],
                        other=0)  # [BLOCK_N, BLOCK_K // 8]
        q = (words[:, :, None] >> shifts[None, None, :]) & 0xF
        q = tl.reshape(q, (BLOCK_N, BLOCK_K)).to(tl.float32)  # k = word * 8 + nibble
        g = cols64 * groups + k0 // GROUP
        s = tl.load(scales_ptr + g, mask=col_ok, other=0.0).to(tl.float32)[:, None]
        if MODE == 1:  # ZERO_POINTS
            z = tl.load(extra_ptr + g, mask=col_ok, other=0).to(tl.float32)[:, None]
            w = (q - z) * s
        elif MODE == 2:  # MINS
            m = tl.load(extra_ptr + g, mask=col_ok, other=0.0).to(tl.float32)[:, None]
            w = q * s + m
        else:
            w = (q - 8.0) * s
        w = tl.trans(w.to(a_ptr.dtype.element_ty))  # [BLOCK_K, BLOCK_N]
        if IEEE:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    out = out_ptr + rows64[:, None] * N + cols64[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def ieee_dot(a: torch.Tensor) -> bool:
    """Whether the dot runs on float32 operands in IEEE precision: for float32 ``a`` (not TF32), and
    under the interpreter (CPU tensors) for bfloat16, whose dot the interpreter gets wrong (it
    multiplies the raw 16-bit patterns); the upcast is exact, so results match the GPU's bf16 MMA."""
    return a.dtype == torch.float32 or (a.device.type == "cpu" and a.dtype == torch.bfloat16)


def w4a16_gemm(a, qweight, scales, zero_points, mins, group_size):
    m, k = a.shape
    n = qweight.shape[0]
    out = _util.new_empty((m, n), a)
    if m == 0:
        return out
    if zero_points is not None:
        mode, extra = ZERO_POINTS, zero_points
    elif mins is not None:
        mode, extra = MINS, mins
    else:
        mode, extra = SYMMETRIC, scales  # not read
    cfg = config(m, group_size)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n))
    with _util.device_guard(a):
        w4a16_gemm_kernel[grid](
            a, qweight, scales, extra, out, m, n, k,
            GROUP=group_size, MODE=mode, IEEE=ieee_dot(a), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps,
        )  # fmt: skip
    return out


def aot_cases():
    """(label, kernel, args, constexprs, num_warps) for the ahead-of-time compile check (see aot.py)."""
    names = {SYMMETRIC: "sym", ZERO_POINTS: "zp", MINS: "min"}
    extra = {SYMMETRIC: "*fp16", ZERO_POINTS: "*u8", MINS: "*fp16"}
    cases = [("bf16", mode, 128, m) for mode in names for m in (1, 4096)] + [("fp32", MINS, 32, 1), ("fp16", SYMMETRIC, 64, 64)]
    for dtype, mode, group, m in cases:
        cfg = config(m, group)
        const = {"GROUP": group, "MODE": mode, "IEEE": dtype == "fp32", "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
        args = {
            "a_ptr": f"*{dtype}", "qw_ptr": "*i32", "scales_ptr": "*fp16", "extra_ptr": extra[mode],
            "out_ptr": f"*{dtype}", "M": m, "N": 4096, "K": 4096,
        }  # fmt: skip
        label = f"w4a16_gemm[{dtype} {names[mode]} group={group} block_m={cfg.block_m}]"
        yield label, w4a16_gemm_kernel, args, const, cfg.num_warps
