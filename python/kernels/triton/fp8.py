"""FP8 (e4m3) quantisation and the scaled FP8 GEMM.

Quantisation. Scales follow the reference exactly: ``max(amax, 1e-10) / 448`` and ``x / scale``
are IEEE divisions (``tl.div_rn``; Triton's ``/`` is approximate on CUDA). The quotient is then
rounded to the e4m3 grid in float32 by the kernel itself (nearest, ties to even, saturated to
±448), so the final cast only ever converts representable values: the codes do not depend on how
a target converts float32 to e4m3 (hardware ``cvt`` on sm_89+, software elsewhere, and the Triton
interpreter, which rounds ties away from zero, does not saturate and flushes subnormals).

- ``token`` and ``group128``: a program quantises ROWS rows of one group (the whole row for
  ``token``, streamed twice when it is too long for registers; 128 columns for ``group128``).
- ``tensor``: dynamic scales need the amax of all of ``x`` first. A fixed number of programs
  stride over ``x`` and write one partial amax each; the quantising pass (same programs) reduces
  the partials itself, so there are two launches, no atomics and no zero-filled workspace.

GEMM. ``out = (a @ b.T) * scale_a * scale_b (+ bias)`` over BLOCK_M x BLOCK_N tiles in grouped
order (GROUP_M row tiles share each column tile while it is in L2). Per-tensor and per-token x
per-channel scales are one path (a [1] scale is read with stride 0), applied once after the K
loop; blockwise scales are applied per 128-wide K step: the step's dot in float32 times
``scale_a[m, kb]`` and ``scale_b[n // 128, kb]``, then accumulated.

Triton has no e4m3fn type on NVIDIA GPUs below sm_89, so there the backend declines both ops
(``fp8_supports`` in ``__init__``). Elsewhere without FP8 dots (XPU; AMD before gfx950, whose CDNA3
has the FNUZ variant and where Triton 3.9 only emulates e4m3fn dots) the operands are upcast to
float16 in the kernel before ``tl.dot``: exact (every e4m3 value is a float16), only slower. A
float32 output takes that upcast everywhere, with each K step's dot added on the CUDA cores (see
``dot_mode``). Both dot paths compile for hip:gfx942 in the AOT check; ROCm is compile-checked
only (``emulated``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..reference.fp8 import AMAX_FLOOR, BLOCK, FP8, FP8_MAX
from . import _util

_FP8_MAX = tl.constexpr(FP8_MAX)
_AMAX_FLOOR = tl.constexpr(AMAX_FLOOR)
_BLOCK = tl.constexpr(BLOCK)


# ----------------------------------------------------------------------------------- quantise


@triton.jit
def _round_to_e4m3(y):
    """``y`` (float32) rounded to the nearest e4m3 value (ties to even), saturated to ±448.

    In the binade [2^e, 2^(e+1)) e4m3 values are multiples of 2^(e-3) (of 2^-9 below the normal
    range, e < -6). Adding c = 2^(e+20) moves the value to where float32's own spacing is 2^(e-3),
    so the float32 addition rounds it exactly as wanted (ties to even); subtracting c is exact.
    """
    a = tl.minimum(tl.abs(y), _FP8_MAX)
    biased_exp = tl.maximum(a.to(tl.int32, bitcast=True) >> 23, 127 - 6)
    c = ((biased_exp + 20) << 23).to(tl.float32, bitcast=True)
    r = (a + c) - c
    # y's sign bit onto r (not -r: Triton negates as 0 - r, which turns -0.0 into +0.0)
    sign = (y.to(tl.int32, bitcast=True) >> 31) << 31
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr, M, K, group, s_stride_m, s_stride_g,
    BLOCK_K: tl.constexpr, ROWS: tl.constexpr, LOOP: tl.constexpr,
):  # fmt: skip
    """ROWS rows x group ``program_id(1)`` (columns [g * group, (g + 1) * group) within K)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    g = tl.program_id(1)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    start = g * group
    end = tl.minimum(start + group, K)
    cols = tl.arange(0, BLOCK_K)
    x_row = x_ptr + rows64[:, None] * K
    q_row = q_ptr + rows64[:, None] * K
    if LOOP:  # a row too long for registers: amax first, then quantise, reading it twice
        amax = tl.zeros([ROWS], dtype=tl.float32)
        for k0 in range(start, end, BLOCK_K):
            k = k0 + cols
            mask = row_ok[:, None] & (k < end)[None, :]
            x = tl.load(x_row + k[None, :], mask=mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
        scale = tl.div_rn(tl.maximum(amax, _AMAX_FLOOR), _FP8_MAX)
        for k0 in range(start, end, BLOCK_K):
            k = k0 + cols
            mask = row_ok[:, None] & (k < end)[None, :]
            x = tl.load(x_row + k[None, :], mask=mask, other=0.0).to(tl.float32)
            q = _round_to_e4m3(tl.div_rn(x, scale[:, None]))
            tl.store(q_row + k[None, :], q.to(q_ptr.dtype.element_ty), mask=mask)
    else:
        k = start + cols
        mask = row_ok[:, None] & (k < end)[None, :]
        x = tl.load(x_row + k[None, :], mask=mask, other=0.0).to(tl.float32)
        scale = tl.div_rn(tl.maximum(tl.max(tl.abs(x), axis=1), _AMAX_FLOOR), _FP8_MAX)
        q = _round_to_e4m3(tl.div_rn(x, scale[:, None]))
        tl.store(q_row + k[None, :], q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + rows64 * s_stride_m + g * s_stride_g, scale, mask=row_ok)


@triton.jit
def amax_kernel(x_ptr, partial_ptr, N, BLOCK_SIZE: tl.constexpr):
    """Program p: the amax of blocks p, p + P, p + 2P, ... of the flat ``x`` into ``partial[p]``."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_SIZE)
    acc = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
    for start in range(pid.to(tl.int64) * BLOCK_SIZE, N, tl.num_programs(0) * BLOCK_SIZE):
        i = start + offs
        acc = tl.maximum(acc, tl.abs(tl.load(x_ptr + i, mask=i < N, other=0.0).to(tl.float32)))
    tl.store(partial_ptr + pid, tl.max(acc, axis=0))


@triton.jit
def quantize_tensor_kernel(
    x_ptr, q_ptr, scale_ptr, partial_ptr, num_partials, N,
    DYNAMIC: tl.constexpr, BLOCK_SIZE: tl.constexpr, PARTIALS: tl.constexpr,
):  # fmt: skip
    """One scale for all of ``x``: read (static) or from the partial amaxes (dynamic, then written
    by program 0). Programs stride over the flat ``x`` as in ``amax_kernel``."""
    pid = tl.program_id(0)
    if DYNAMIC:
        p = tl.arange(0, PARTIALS)
        amax = tl.max(tl.load(partial_ptr + p, mask=p < num_partials, other=0.0), axis=0)
        scale = tl.div_rn(tl.maximum(amax, _AMAX_FLOOR), _FP8_MAX)
        if pid == 0:
            tl.store(scale_ptr, scale)
    else:
        scale = tl.load(scale_ptr)
    offs = tl.arange(0, BLOCK_SIZE)
    for start in range(pid.to(tl.int64) * BLOCK_SIZE, N, tl.num_programs(0) * BLOCK_SIZE):
        i = start + offs
        x = tl.load(x_ptr + i, mask=i < N, other=0.0).to(tl.float32)
        tl.store(q_ptr + i, _round_to_e4m3(tl.div_rn(x, scale)).to(q_ptr.dtype.element_ty), mask=i < N)


# Row kernels: a whole row in registers up to this length (as rms_norm), else streamed.
ROW_MAX = 16384
ROW_LOOP_BLOCK = 4096
# Per-tensor: elements per program and step; at most this many programs (and partial amaxes).
TENSOR_BLOCK = 4096
MAX_PARTIALS = 1024


class RowConfig(NamedTuple):
    block_k: int
    rows: int
    loop: bool
    num_warps: int


def row_config(k: int, granularity: str) -> RowConfig:
    if granularity == "group128":
        block = BLOCK
    else:
        block = _util.next_power_of_2(k)
        if block > ROW_MAX:
            return RowConfig(ROW_LOOP_BLOCK, 1, True, _util.MAX_WARPS)
    rows = _util.rows_per_program(block)
    return RowConfig(block, rows, False, _util.num_warps(rows * block))


def quantize_fp8(x, granularity, scale, column_major_scales):
    m, k = x.shape
    q = _util.new_empty((m, k), x, FP8)
    if granularity == "tensor":
        return q, _quantize_tensor(x, q, scale)
    kb = triton.cdiv(k, BLOCK)
    if granularity == "token":
        s = _util.new_empty((m,), x, torch.float32)
        group, groups, s_strides = k, 1, (1, 0)
    elif column_major_scales:
        s = _util.new_empty((kb, m), x, torch.float32).T
        group, groups, s_strides = BLOCK, kb, s.stride()
    else:
        s = _util.new_empty((m, kb), x, torch.float32)
        group, groups, s_strides = BLOCK, kb, s.stride()
    if m == 0:
        return q, s
    cfg = row_config(k, granularity)
    with _util.device_guard(x):
        quantize_rows_kernel[(triton.cdiv(m, cfg.rows), groups)](
            x, q, s, m, k, group, *s_strides,
            BLOCK_K=cfg.block_k, ROWS=cfg.rows, LOOP=cfg.loop, num_warps=cfg.num_warps,
        )  # fmt: skip
    return q, s


def _quantize_tensor(x, q, scale):
    n = x.numel()
    warps = _util.num_warps(TENSOR_BLOCK)
    programs = max(1, min(triton.cdiv(n, TENSOR_BLOCK), MAX_PARTIALS))
    with _util.device_guard(x):
        if scale is not None:
            if n:
                quantize_tensor_kernel[(programs,)](
                    x, q, scale, scale, 1, n, DYNAMIC=False, BLOCK_SIZE=TENSOR_BLOCK, PARTIALS=1, num_warps=warps
                )
            return scale
        # Zero tokens still launch one program of each: the scale is then the floor's.
        out = _util.new_empty((1,), x, torch.float32)
        partials = _util.new_empty((programs,), x, torch.float32)
        amax_kernel[(programs,)](x, partials, n, BLOCK_SIZE=TENSOR_BLOCK, num_warps=warps)
        quantize_tensor_kernel[(programs,)](
            x, q, out, partials, programs, n, DYNAMIC=True, BLOCK_SIZE=TENSOR_BLOCK, PARTIALS=MAX_PARTIALS, num_warps=warps
        )
    return out


# --------------------------------------------------------------------------------------- GEMM


@triton.jit
def fp8_gemm_kernel(
    a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, out_ptr, M, N, K,
    sa_stride_m, sa_stride_k, sb_stride_n, sb_stride_k,
    BLOCKWISE: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, FP32_ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # Grouped order: consecutive programs walk GROUP_M row tiles down one column tile, so a tile
    # of b is read from DRAM once per group rather than once per row tile.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows and columns past the edge load a valid (wrapped) row instead of being masked; their
    # results are not stored. Only K is masked.
    rows_in = (rows % M).to(tl.int64)
    cols_in = (cols % N).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows_in[:, None] * K + ks[None, :]  # [BLOCK_M, BLOCK_K]
    b_ptrs = b_ptr + cols_in[None, :] * K + ks[:, None]  # [BLOCK_K, BLOCK_N], K-major as b is stored
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks < K - k0
        a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float16)
            b = b.to(tl.float16)
        if BLOCKWISE:  # BLOCK_K divides 128: the step lies in one K block
            kb = k0 // _BLOCK
            sa = tl.load(sa_ptr + rows_in * sa_stride_m + kb * sa_stride_k)
            sb = tl.load(sb_ptr + (cols_in // _BLOCK) * sb_stride_n + kb * sb_stride_k)
            acc += tl.dot(a, b) * sa[:, None] * sb[None, :]
        elif FP32_ACC:
            acc += tl.dot(a, b)
        else:
            # Hopper's FP8 MMA sums into a narrower accumulator than float32, and Triton's default
            # on sm_90 chains the whole K loop there (at K = 18432, bf16 outputs off by over 1%).
            # Promoting into the float32 acc once per K step (DeepSeek-V3's 128) keeps it below
            # 1e-3, for 1.3x the time at the same tiles (H100 8192^3: 880 against 1139 TFLOP/s).
            acc = tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if not BLOCKWISE:  # [1] scales come with stride 0
        sa = tl.load(sa_ptr + rows_in * sa_stride_m)
        sb = tl.load(sb_ptr + cols_in * sb_stride_n)
        acc = acc * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols_in).to(tl.float32)[None, :]
    out = out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rows < M)[:, None] & (cols < N)[None, :])


class GemmConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


# Three tile shapes by M, so a serving loop compiles at most three variants per (scales, dtype):
# decode (narrow tiles, many programs streaming b from every SM), small batches, and large M.
# Picked from a sweep on the H100 (128 x 256 tiles are faster without the promotion to float32
# but spill with it; 6 stages gave M = 64 x 7168 x 18432 its best).
DECODE_M = 16
SMALL_M = 64


def gemm_config(m: int, platform: str) -> GemmConfig:
    if platform == "rocm":  # 64 KiB of LDS per workgroup on CDNA3: BLOCK_K 64 keeps two stages in it
        if m <= DECODE_M:
            return GemmConfig(16, 64, 64, 1, 4, 2)
        if m <= SMALL_M:
            return GemmConfig(64, 64, 64, 8, 4, 2)
        return GemmConfig(128, 128, 64, 8, 4, 2)
    if m <= DECODE_M:
        return GemmConfig(16, 64, 128, 1, 4, 4)
    if m <= SMALL_M:
        return GemmConfig(64, 64, 128, 8, 4, 6)
    return GemmConfig(128, 128, 128, 8, 8, 4)


def native_fp8_dot(t: torch.Tensor) -> bool:
    """Whether ``tl.dot`` takes e4m3fn operands on ``t``'s device (else the kernel upcasts).

    CUDA: always, since the backend declines below sm_89 (see ``__init__``)."""
    if t.device.type == "xpu":
        return False
    if t.device.type == "cuda" and torch.version.hip:
        arch = torch.cuda.get_device_properties(t.device).gcnArchName.split(":")[0]
        return arch in ("gfx950", "gfx1200", "gfx1201")
    return True  # CUDA sm_89+, and the interpreter (which computes FP8 dots in float16 itself)


def dot_mode(a: torch.Tensor, out_dtype: torch.dtype) -> tuple[bool, bool]:
    """(upcast to float16, add each K step's dot in float32) for the kernel.

    A float32 output promises float32 accuracy, which no tensor-core accumulation chain keeps on
    the H100 (FP8 operands: 5e-5 relative; float16 operands chained over K = 7168: a few elements
    off by 1e-5): it takes float16 operands and adds every K step's dot on the CUDA cores."""
    fp32_acc = out_dtype == torch.float32
    return fp32_acc or not native_fp8_dot(a), fp32_acc


def fp8_gemm(a, b, scale_a, scale_b, out_dtype, bias, use_fast_accum):
    m, k = a.shape
    n = b.shape[0]
    out = _util.new_empty((m, n), a, out_dtype)
    if m == 0:
        return out
    blockwise = scale_a.dim() == 2
    if blockwise:
        sa_strides, sb_strides = scale_a.stride(), scale_b.stride()
    else:  # [1] (per tensor) or one per row / column
        sa_strides = (0 if scale_a.numel() == 1 else 1, 0)
        sb_strides = (0 if scale_b.numel() == 1 else 1, 0)
    cfg = gemm_config(m, "rocm" if torch.version.hip and a.is_cuda else a.device.type)
    upcast, fp32_acc = dot_mode(a, out_dtype)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    with _util.device_guard(a):
        fp8_gemm_kernel[grid](
            a, b, scale_a, scale_b, bias if bias is not None else out, out, m, n, k, *sa_strides, *sb_strides,
            BLOCKWISE=blockwise, HAS_BIAS=bias is not None, UPCAST=upcast, FP32_ACC=fp32_acc,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return out


def aot_cases():
    """(label, kernel, args, constexprs, num_warps) for the ahead-of-time compile check (see aot.py)."""
    for dtype, granularity, k in (("bf16", "token", 7168), ("fp16", "token", 32768), ("fp32", "group128", 7168)):
        cfg = row_config(k, granularity)
        group = k if granularity == "token" else BLOCK
        yield (
            f"quantize_fp8_rows[{dtype} {granularity} K={k} loop={cfg.loop}]", quantize_rows_kernel,
            {"x_ptr": f"*{dtype}", "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", "M": 4096, "K": k, "group": group,
             "s_stride_m": 1, "s_stride_g": 4096},
            {"BLOCK_K": cfg.block_k, "ROWS": cfg.rows, "LOOP": cfg.loop}, cfg.num_warps,
        )  # fmt: skip
    warps = _util.num_warps(TENSOR_BLOCK)
    yield (
        "quantize_fp8_amax[bf16]", amax_kernel, {"x_ptr": "*bf16", "partial_ptr": "*fp32", "N": 1 << 24},
        {"BLOCK_SIZE": TENSOR_BLOCK}, warps,
    )  # fmt: skip
    for dynamic in (True, False):
        yield (
            f"quantize_fp8_tensor[bf16 dynamic={dynamic}]", quantize_tensor_kernel,
            {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32", "partial_ptr": "*fp32",
             "num_partials": MAX_PARTIALS, "N": 1 << 24},
            {"DYNAMIC": dynamic, "BLOCK_SIZE": TENSOR_BLOCK, "PARTIALS": MAX_PARTIALS if dynamic else 1}, warps,
        )  # fmt: skip
    # The tiles each platform's wrapper picks: native FP8 dots as on sm_89+ (and gfx950), the
    # float16 upcast as on gfx942 and for float32 outputs.
    cases = [("cuda", 1, False, "bf16"), ("cuda", 64, True, "bf16"), ("cuda", 4096, False, "bf16"),
             ("cuda", 4096, True, "bf16"), ("cuda", 4096, False, "fp32")]
    cases += [("rocm", 1, False, "bf16"), ("rocm", 4096, True, "bf16"), ("rocm", 4096, True, "fp32")]
    for platform, m, blockwise, out in cases:
        cfg = gemm_config(m, platform)
        fp32_acc = out == "fp32"
        upcast = fp32_acc or platform == "rocm"
        tiles = f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k}"
        label = f"fp8_gemm[{'block' if blockwise else 'token'} {out} {platform} tiles {tiles}{' upcast' if upcast else ''}]"
        args = {
            "a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "sa_ptr": "*fp32", "sb_ptr": "*fp32", "bias_ptr": f"*{out}",
            "out_ptr": f"*{out}", "M": m, "N": 7168, "K": 18432,
            "sa_stride_m": 1, "sa_stride_k": m if blockwise else 0, "sb_stride_n": 144 if blockwise else 1,
            "sb_stride_k": 1 if blockwise else 0,
        }  # fmt: skip
        const = {"BLOCKWISE": blockwise, "HAS_BIAS": True, "UPCAST": upcast, "FP32_ACC": fp32_acc, "BLOCK_M": cfg.block_m,
                 "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m}  # fmt: skip
        yield label, fp8_gemm_kernel, args, const, cfg.num_warps
