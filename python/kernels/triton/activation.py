"""Gated activation kernels: ``silu_and_mul`` and ``gelu_and_mul`` (erf or tanh GELU).

A program covers ROWS rows by BLOCK columns of the output: it reads the gate and up halves once
and writes the product once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import _util

MAX_BLOCK = 2048
SILU, GELU_ERF, GELU_TANH = 0, 1, 2
_GELU = {"none": GELU_ERF, "tanh": GELU_TANH}


class Config(NamedTuple):
    block: int
    rows: int
    num_warps: int


def config(d: int) -> Config:
    block = min(_util.next_power_of_2(d), MAX_BLOCK)
    rows = _util.rows_per_program(block)
    return Config(block, rows, _util.num_warps(rows * block))


@triton.jit
def gated_activation_kernel(x_ptr, out_ptr, n_rows, d, ACT: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None] & (cols < d)[None, :]
    rows = rows.to(tl.int64)[:, None]
    cols = cols[None, :]
    gate_ptr = x_ptr + rows * (2 * d) + cols
    g = tl.load(gate_ptr, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptr + d, mask=mask, other=0.0).to(tl.float32)
    if ACT == 0:  # SILU
        a = g * tl.sigmoid(g)
    elif ACT == 1:  # GELU_ERF
        a = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    else:  # GELU_TANH: 0.5 * (1 + tanh(z)) == sigmoid(2z), z = sqrt(2/pi) * (g + 0.044715 g^3)
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        a = g * tl.sigmoid(2.0 * z)
    tl.store(out_ptr + rows * d + cols, (a * up).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, act: int) -> torch.Tensor:
    n_rows, d = x.shape[0], x.shape[1] // 2
    out = _util.new_empty((n_rows, d), x)
    if n_rows == 0:
        return out
    cfg = config(d)
    grid = (triton.cdiv(n_rows, cfg.rows), triton.cdiv(d, cfg.block))
    with _util.device_guard(x):
        gated_activation_kernel[grid](
            x, out, n_rows, d, ACT=act, BLOCK=cfg.block, ROWS=cfg.rows, num_warps=cfg.num_warps,
        )
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _launch(x, SILU)


def gelu_and_mul(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _launch(x, _GELU[approximate])


def aot_cases():
    """(label, kernel, args, constexprs, num_warps) for the ahead-of-time compile check (see aot.py)."""
    names = {SILU: "silu", GELU_ERF: "gelu_erf", GELU_TANH: "gelu_tanh"}
    cases = [(dtype, act, d) for dtype in ("fp16", "bf16") for act in names for d in (14336, 100)]
    cases.append(("fp32", GELU_ERF, 4096))
    for dtype, act, d in cases:
        cfg = config(d)
        const = {"ACT": act, "BLOCK": cfg.block, "ROWS": cfg.rows}
        args = {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "n_rows": 1000, "d": d}
        label = f"{names[act]}_and_mul[{dtype} d={d} block={cfg.block} rows={cfg.rows}]"
        yield label, gated_activation_kernel, args, const, cfg.num_warps
