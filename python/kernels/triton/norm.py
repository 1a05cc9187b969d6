"""RMS normalisation kernels: ``rms_norm`` and ``fused_add_rms_norm_``.

A program normalises ROWS rows held whole in registers (one read, one write per element); rows
longer than SINGLE_PASS_MAX are streamed in BLOCK-wide chunks instead (sum of squares first, then
normalise), which reads the row twice but keeps register use bounded.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import _util

SINGLE_PASS_MAX = 16384
LOOP_BLOCK = 4096


class Config(NamedTuple):
    block: int
    rows: int
    loop: bool
    num_warps: int


def config(hidden: int) -> Config:
    block = _util.next_power_of_2(hidden)
    if block > SINGLE_PASS_MAX:
        return Config(LOOP_BLOCK, 1, True, _util.MAX_WARPS)
    rows = _util.rows_per_program(block)
    return Config(block, rows, False, _util.num_warps(rows * block))


@triton.jit
def rms_norm_kernel(
    x_ptr, w_ptr, out_ptr, n_rows, hidden, x_row_stride, eps,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, LOOP: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = (rows < n_rows)[:, None]
    rows = rows.to(tl.int64)[:, None]
    x_row = x_ptr + rows * x_row_stride
    out_row = out_ptr + rows * hidden
    cols = tl.arange(0, BLOCK)[None, :]
    if LOOP:
        acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        for start in range(0, hidden, BLOCK):
            mask = row_ok & (start + cols < hidden)
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            acc += x * x
        rstd = tl.math.rsqrt(tl.sum(acc, axis=1) / hidden + eps)[:, None]
        for start in range(0, hidden, BLOCK):
            col_ok = start + cols < hidden
            mask = row_ok & col_ok
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + start + cols, mask=col_ok, other=0.0).to(tl.float32)
            tl.store(out_row + start + cols, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        col_ok = cols < hidden
        mask = row_ok & col_ok
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / hidden + eps)[:, None]
        tl.store(out_row + cols, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fused_add_rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, n_rows, hidden, eps,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, LOOP: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = (rows < n_rows)[:, None]
    offset = rows.to(tl.int64)[:, None] * hidden
    x_row = x_ptr + offset
    res_row = res_ptr + offset
    cols = tl.arange(0, BLOCK)[None, :]
    if LOOP:
        # The residual is overwritten by the rounded sum, so the sum of squares pass only reads.
        acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        for start in range(0, hidden, BLOCK):
            mask = row_ok & (start + cols < hidden)
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            r = tl.load(res_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            s = x + r
            acc += s * s
        rstd = tl.math.rsqrt(tl.sum(acc, axis=1) / hidden + eps)[:, None]
        for start in range(0, hidden, BLOCK):
            col_ok = start + cols < hidden
            mask = row_ok & col_ok
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            r = tl.load(res_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + start + cols, mask=col_ok, other=0.0).to(tl.float32)
            s = x + r
            tl.store(res_row + start + cols, s.to(res_ptr.dtype.element_ty), mask=mask)
            tl.store(x_row + start + cols, (s * rstd * w).to(x_ptr.dtype.element_ty), mask=mask)
    else:
        col_ok = cols < hidden
        mask = row_ok & col_ok
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(res_row + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        s = x + r
        rstd = tl.math.rsqrt(tl.sum(s * s, axis=1) / hidden + eps)[:, None]
        tl.store(res_row + cols, s.to(res_ptr.dtype.element_ty), mask=mask)
        tl.store(x_row + cols, (s * rstd * w).to(x_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    n_rows, hidden = x.shape
    out = _util.new_empty((n_rows, hidden), x)
    if n_rows == 0:
        return out
    cfg = config(hidden)
    with _util.device_guard(x):
        rms_norm_kernel[(triton.cdiv(n_rows, cfg.rows),)](
            x, weight, out, n_rows, hidden, x.stride(0), eps,
            BLOCK=cfg.block, ROWS=cfg.rows, LOOP=cfg.loop, num_warps=cfg.num_warps,
        )
    return out


def fused_add_rms_norm_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    n_rows, hidden = x.shape
    if n_rows == 0:
        return
    cfg = config(hidden)
    with _util.device_guard(x):
        fused_add_rms_norm_kernel[(triton.cdiv(n_rows, cfg.rows),)](
            x, residual, weight, n_rows, hidden, eps,
            BLOCK=cfg.block, ROWS=cfg.rows, LOOP=cfg.loop, num_warps=cfg.num_warps,
        )


def aot_cases():
    """(label, kernel, args, constexprs, num_warps) for the ahead-of-time compile check (see aot.py)."""
    for dtype in ("fp16", "bf16", "fp32"):
        ptr = f"*{dtype}"
        for hidden in (4096, 100, 16384, 32768):
            cfg = config(hidden)
            const = {"BLOCK": cfg.block, "ROWS": cfg.rows, "LOOP": cfg.loop}
            shape = f"{dtype} hidden={hidden} block={cfg.block} rows={cfg.rows} loop={cfg.loop}"
            yield (
                f"rms_norm[{shape}]", rms_norm_kernel,
                {"x_ptr": ptr, "w_ptr": ptr, "out_ptr": ptr, "n_rows": 1000, "hidden": hidden,
                 "x_row_stride": 3 * hidden, "eps": "fp32"},
                const, cfg.num_warps,
            )
            yield (
                f"fused_add_rms_norm[{shape}]", fused_add_rms_norm_kernel,
                {"x_ptr": ptr, "res_ptr": ptr, "w_ptr": ptr, "n_rows": 1000, "hidden": hidden, "eps": "fp32"},
                const, cfg.num_warps,
            )
