"""Paged attention kernels: ``store_kv_cache``, ``paged_decode_attention`` (split-KV flash decoding),
``paged_prefill_attention`` (flash-attention-2 over a ragged batch) and ``merge_attention_states``.

Cache layout ``[num_pages, page_size, num_kv_heads, head_dim]``: token slot ``s`` of a sequence is
row ``page * page_size + s % page_size`` of the cache viewed as ``[slots, num_kv_heads, head_dim]``,
with ``page = page_table[seq, s // page_size]``. Every KV tile computes each token's page and row,
so a tile may cross page boundaries and any page size works.

Decode: grid (batch, kv_heads, splits). A program takes all query heads of one KV group (padded to
16 rows for ``tl.dot``) over one chunk of the sequence's attended keys; the chunks split each
sequence's own range evenly, so the grid depends only on shapes (CUDA graphs) and every split has
work whatever the sequence's length. Partial out/lse go to a float32 workspace, and a second kernel
merges the splits. Prefill: grid (query blocks, heads); a device-side torch precompute (no host
sync) maps each query block to its sequence, with ``cdiv(total_q, BLOCK_M) + batch`` blocks, an upper
bound; the surplus programs exit without work. KV tiles entirely outside the causal / window range
of a query block are skipped.

Bad inputs on a GPU (no host sync): a length outside its bounds, or a page index outside
``[0, num_pages)`` among the pages a sequence's length reaches, turns that sequence's output and
lse into NaN; loads are masked, so nothing outside the cache is read.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import _util

# Decode: programs a device should get (about two per SM) before the KV is split further.
PROGRAMS_PER_SM = 2
MAX_SPLITS = 16
# Multiprocessor count assumed for the interpreter (CPU tensors): small, so tests still split.
CPU_SMS = 4
# Page-table entries checked per step of the bounds pre-check.
BLOCK_P = 128
# Rows of a decode program's query tile: tl.dot needs at least 16.
MIN_BLOCK_H = 16
MERGE_MAX_BLOCK = 1024


# ------------------------------------------------------------------------------------ configs


class DecodeConfig(NamedTuple):
    block_h: int
    block_n: int
    num_warps: int


def decode_config(group: int, head_dim: int, elem_bytes: int = 2) -> DecodeConfig:
    block_h = max(MIN_BLOCK_H, _util.next_power_of_2(group))
    # K and V tiles of 16 KiB each (8K elements of 16 bits); AMD has 64 KiB of LDS.
    block_n = max(16, min(128, 16384 // (head_dim * elem_bytes)))
    return DecodeConfig(block_h, block_n, 4 if block_h * head_dim <= 4096 else 8)


class PrefillConfig(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int


def prefill_config(head_dim: int, elem_bytes: int = 2) -> PrefillConfig:
    # float32 (a CPU dtype, allowed on GPUs too) halves the KV tile: AMD has 64 KiB of LDS.
    block_n = 64 if head_dim <= 128 else 32
    if elem_bytes > 2:
        block_n //= 2
    return PrefillConfig(64, block_n, 4 if head_dim <= 128 else 8)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cpu":
        return CPU_SMS
    props = torch.get_device_module(device.type).get_device_properties(device)
    for name in ("multi_processor_count", "gpu_subslice_count", "max_compute_units"):
        count = getattr(props, name, None)
        if count:
            return int(count)
    return 64


def decode_splits(batch: int, kv_heads: int, max_context: int, window: int, block_n: int, sms: int) -> int:
    """Splits of each sequence's keys: enough programs for the device, at least one tile per split.

    Only shapes decide (the lengths live on the device): ``max_context`` is the page table's capacity.
    """
    context = max_context if window < 1 else min(max_context, window)
    wanted = triton.cdiv(PROGRAMS_PER_SM * sms, max(1, batch * kv_heads))
    return max(1, min(MAX_SPLITS, wanted, triton.cdiv(context, block_n)))


# ------------------------------------------------------------------------------------ helpers


@triton.jit
def _tanh(x):
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


def f32_dot(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether tl.dot runs on float32 operands in IEEE precision: for float32 inputs (not TF32), and
    under the interpreter (CPU tensors) for bfloat16, whose dot the interpreter gets wrong (it
    multiplies the raw 16-bit patterns); the upcast is exact, so results match the GPU's bf16 MMA."""
    return dtype == torch.float32 or (device.type == "cpu" and dtype == torch.bfloat16)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _scores(q, k, scale, soft_cap, SOFT_CAP: tl.constexpr, IEEE: tl.constexpr):
    s = _dot(q, tl.trans(k), IEEE) * scale
    if SOFT_CAP:
        s = soft_cap * _tanh(s / soft_cap)
    return s


@triton.jit
def _normalize(acc, m, l, invalid):
    """The online softmax's result: out = acc / l and lse = m + log(l) (-inf for rows that attended
    nothing), NaN for rows of bad input."""
    has = l > 0
    out = acc / tl.where(has, l, 1.0)[:, None]
    lse = tl.where(has, m + tl.log(tl.where(has, l, 1.0)), float("-inf"))
    return tl.where(invalid, float("nan"), out), tl.where(invalid, float("nan"), lse)


@triton.jit
def _bad_pages(pt_row, p_lo, p_hi, num_pages, BLOCK_P: tl.constexpr):
    """1 if any page-table entry in [p_lo, p_hi) lies outside [0, num_pages), else 0."""
    bad = tl.zeros([BLOCK_P], dtype=tl.int32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        page = tl.load(pt_row + p, mask=p < p_hi, other=0)
        bad = bad | ((page < 0) | (page >= num_pages)).to(tl.int32)
    return tl.max(bad, axis=0)


@triton.jit
def _kv_rows(pt_row, n, n_ok, page_size, num_pages):
    """Cache rows of tokens n (int64) and which of them may be read."""
    page = tl.load(pt_row + n // page_size, mask=n_ok, other=0)
    ok = n_ok & (page >= 0) & (page < num_pages)
    return page.to(tl.int64) * page_size + n % page_size, ok


@triton.jit
def _online_softmax(s, v, m, l, acc, IEEE: tl.constexpr):
    """One tile of the online softmax: s [M, N] scores (-inf where masked), v [N, D]."""
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing yet
    alpha = tl.exp(m - m_use)
    p = tl.exp(s - m_use[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return m_new, l, acc


# ------------------------------------------------------------------------------------ store


@triton.jit
def store_kv_cache_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, n_tokens, k_stride, v_stride, row, n_slots,
    BLOCK: tl.constexpr, ROWS: tl.constexpr,
):
    tokens = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)[None, :]
    t_ok = tokens < n_tokens
    slot = tl.load(slot_ptr + tokens, mask=t_ok, other=-1)
    ok = ((slot >= 0) & (slot < n_slots))[:, None] & (cols < row)
    tokens = tokens.to(tl.int64)[:, None]
    dst = slot[:, None] * row + cols
    k = tl.load(k_ptr + tokens * k_stride + cols, mask=ok)
    v = tl.load(v_ptr + tokens * v_stride + cols, mask=ok)
    tl.store(kc_ptr + dst, k, mask=ok)
    tl.store(vc_ptr + dst, v, mask=ok)


def store_kv_cache(k, v, k_cache, v_cache, slot_mapping) -> None:
    n_tokens = k.shape[0]
    if n_tokens == 0:
        return
    row = k_cache.shape[2] * k_cache.shape[3]
    block = min(_util.next_power_of_2(row), 4096)
    rows = _util.rows_per_program(block)
    grid = (triton.cdiv(n_tokens, rows), triton.cdiv(row, block))
    with _util.device_guard(k):
        store_kv_cache_kernel[grid](
            k, v, k_cache, v_cache, slot_mapping, n_tokens, k.stride(0), v.stride(0), row,
            k_cache.shape[0] * k_cache.shape[1],
            BLOCK=block, ROWS=rows, num_warps=_util.num_warps(rows * block, 8),
        )


# ------------------------------------------------------------------------------------ decode


@triton.jit
def paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, pt_ptr, lens_ptr, ws_out_ptr, ws_lse_ptr,
    scale, soft_cap, window, q_stride, num_heads, kv_heads, num_pages, page_size, max_pages, num_splits,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    SOFT_CAP: tl.constexpr, IEEE: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(lens_ptr + b)
    len_ok = (seq_len >= 1) & (seq_len <= max_pages * page_size)
    length = tl.where(len_ok, seq_len, 0)
    pt_row = pt_ptr + b.to(tl.int64) * max_pages

    # This split's share of the page-table entries the length reaches, checked before any read.
    used = tl.cdiv(length, page_size)
    per_pages = tl.cdiv(used, num_splits)
    p_lo = split * per_pages
    bad = _bad_pages(pt_row, p_lo, tl.minimum(used, p_lo + per_pages), num_pages, BLOCK_P)

    # This split's share of the attended keys [lo, length).
    lo = tl.where(window > 0, tl.maximum(length - window, 0), 0)
    per = tl.cdiv(length - lo, num_splits)
    start = lo + split * per
    end = tl.minimum(start + per, length)
    end = tl.where(bad > 0, start, end)

    h = tl.arange(0, BLOCK_H)
    h_ok = h < GROUP
    heads = kvh * GROUP + h
    d = tl.arange(0, HEAD_DIM)
    q_at = b.to(tl.int64) * q_stride + heads * HEAD_DIM
    q = tl.load(q_ptr + q_at[:, None] + d[None, :], mask=h_ok[:, None], other=0.0)

    row_stride = kv_heads * HEAD_DIM
    k_base = k_ptr + kvh * HEAD_DIM
    v_base = v_ptr + kvh * HEAD_DIM
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        rows, ok = _kv_rows(pt_row, n, n < end, page_size, num_pages)
        offs = rows[:, None] * row_stride + d[None, :]
        k = tl.load(k_base + offs, mask=ok[:, None], other=0.0)
        s = _scores(q, k, scale, soft_cap, SOFT_CAP, IEEE)
        s = tl.where(ok[None, :], s, float("-inf"))
        v = tl.load(v_base + offs, mask=ok[:, None], other=0.0)
        m, l, acc = _online_softmax(s, v, m, l, acc, IEEE)

    out, lse = _normalize(acc, m, l, (bad > 0) | ~len_ok)
    ws = (b * num_heads + heads).to(tl.int64) * num_splits + split
    tl.store(ws_out_ptr + ws[:, None] * HEAD_DIM + d[None, :], out, mask=h_ok[:, None])
    tl.store(ws_lse_ptr + ws, lse, mask=h_ok)


@triton.jit
def merge_splits_kernel(
    ws_out_ptr, ws_lse_ptr, out_ptr, lse_ptr, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # (sequence, head)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    d = tl.arange(0, HEAD_DIM)
    lse_s = tl.load(ws_lse_ptr + row * num_splits + s, mask=s_ok, other=float("-inf"))
    bad = tl.max((lse_s != lse_s).to(tl.int32), axis=0)
    m = tl.max(tl.where(lse_s != lse_s, float("-inf"), lse_s), axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.where(s_ok, tl.exp(lse_s - m), 0.0)
    total = tl.sum(w, axis=0)
    o = tl.load(ws_out_ptr + (row * num_splits + s)[:, None] * HEAD_DIM + d[None, :], mask=s_ok[:, None], other=0.0)
    out = tl.sum(w[:, None] * o, axis=0) / tl.where(total > 0, total, 1.0)
    lse = tl.where(total > 0, m + tl.log(tl.where(total > 0, total, 1.0)), float("-inf"))
    out = tl.where(bad > 0, float("nan"), out)
    lse = tl.where(bad > 0, float("nan"), lse)
    tl.store(out_ptr + row * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty))
    tl.store(lse_ptr + row, lse)


def paged_decode_attention(q, k_cache, v_cache, page_table, seq_lens, scale, window, soft_cap, num_splits=None):
    batch, num_heads, head_dim = q.shape
    num_pages, page_size, kv_heads, _ = k_cache.shape
    out = _util.new_empty((batch, num_heads, head_dim), q)
    lse = _util.new_empty((batch, num_heads), q, torch.float32)
    if batch == 0:
        return out, lse
    group = num_heads // kv_heads
    cfg = decode_config(group, head_dim, q.element_size())
    max_pages = page_table.shape[1]
    if num_splits is None:
        num_splits = decode_splits(batch, kv_heads, max_pages * page_size, window, cfg.block_n,
                                   _multiprocessors(q.device))
    ws_out = _util.new_empty((batch, num_heads, num_splits, head_dim), q, torch.float32)
    ws_lse = _util.new_empty((batch, num_heads, num_splits), q, torch.float32)
    with _util.device_guard(q):
        paged_decode_kernel[(batch, kv_heads, num_splits)](
            q, k_cache, v_cache, page_table, seq_lens, ws_out, ws_lse,
            float(scale), float(soft_cap), int(window), q.stride(0), num_heads, kv_heads, num_pages, page_size,
            max_pages, num_splits,
            GROUP=group, HEAD_DIM=head_dim, BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n,
            SOFT_CAP=soft_cap > 0, IEEE=f32_dot(q.dtype, q.device), BLOCK_P=BLOCK_P, num_warps=cfg.num_warps,
        )
        merge_splits_kernel[(batch * num_heads,)](
            ws_out, ws_lse, out, lse, num_splits,
            HEAD_DIM=head_dim, BLOCK_S=_util.next_power_of_2(num_splits),
            num_warps=_util.num_warps(_util.next_power_of_2(num_splits) * head_dim, 4),
        )
    return out, lse


# ------------------------------------------------------------------------------------ prefill


@triton.jit
def paged_prefill_kernel(
    q_ptr, k_ptr, v_ptr, pt_ptr, indptr_ptr, lens_ptr, block_seq_ptr, block_idx_ptr, out_ptr, lse_ptr,
    scale, soft_cap, window, q_stride, batch, total_q, num_heads, group, kv_heads, num_pages, page_size, max_pages,
    CAUSAL: tl.constexpr, SOFT_CAP: tl.constexpr, IEEE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    g = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.load(block_seq_ptr + g)
    seq_ok = seq < batch  # surplus programs (the grid is an upper bound) do nothing
    seq = tl.where(seq_ok, seq, 0)
    blk = tl.load(block_idx_ptr + g)
    q_start = tl.load(indptr_ptr + seq)
    q_end = tl.load(indptr_ptr + seq + 1)
    n_q = tl.where(seq_ok, q_end - q_start, 0)
    kv_len = tl.load(lens_ptr + seq)
    len_ok = (kv_len >= tl.maximum(n_q, 1)) & (kv_len <= max_pages * page_size)
    length = tl.where(len_ok & seq_ok, kv_len, 0)
    pt_row = pt_ptr + seq.to(tl.int64) * max_pages
    bad = _bad_pages(pt_row, 0, tl.cdiv(length, page_size), num_pages, BLOCK_P)

    j = blk * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the sequence
    rows = q_start + j
    row_ok = (j < n_q) & (rows >= 0) & (rows < total_q)
    pos = length - n_q + j
    first = length - n_q + blk * BLOCK_M
    last = tl.minimum(first + BLOCK_M, length) - 1
    lo = tl.where(window > 0, tl.maximum(first - window + 1, 0), 0)
    hi = length
    if CAUSAL:
        hi = tl.minimum(last + 1, length)
    hi = tl.where(bad > 0, lo, hi)

    d = tl.arange(0, HEAD_DIM)
    q_at = rows.to(tl.int64) * q_stride + head * HEAD_DIM  # q's tokens may be strided (a fused qkv)
    q = tl.load(q_ptr + q_at[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
    q_rows = rows.to(tl.int64) * num_heads + head
    kvh = head // group
    row_stride = kv_heads * HEAD_DIM
    k_base = k_ptr + kvh * HEAD_DIM
    v_base = v_ptr + kvh * HEAD_DIM
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        kv_rows, ok = _kv_rows(pt_row, n, n < hi, page_size, num_pages)
        offs = kv_rows[:, None] * row_stride + d[None, :]
        k = tl.load(k_base + offs, mask=ok[:, None], other=0.0)
        s = _scores(q, k, scale, soft_cap, SOFT_CAP, IEEE)
        allowed = ok[None, :] & row_ok[:, None]
        if CAUSAL:
            allowed = allowed & (n[None, :] <= pos[:, None])
        allowed = allowed & ((window <= 0) | (n[None, :] > pos[:, None] - window))
        s = tl.where(allowed, s, float("-inf"))
        v = tl.load(v_base + offs, mask=ok[:, None], other=0.0)
        m, l, acc = _online_softmax(s, v, m, l, acc, IEEE)

    out, lse = _normalize(acc, m, l, (bad > 0) | ~len_ok)
    tl.store(out_ptr + q_rows[:, None] * HEAD_DIM + d[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_ptr + q_rows, lse, mask=row_ok)


def prefill_blocks(qo_indptr: torch.Tensor, total_q: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence, block within it) of each program's query block, computed on the device.

    ``cdiv(total_q, block_m) + batch`` programs bound the blocks (each sequence leaves at most one
    partial block); the surplus get sequence ``batch``.
    """
    batch = qo_indptr.shape[0] - 1
    n_blocks = triton.cdiv(total_q, block_m) + batch
    counts = (qo_indptr[1:] - qo_indptr[:-1]).clamp_min(0).long()
    ends = torch.cumsum((counts + block_m - 1) // block_m, 0)
    g = torch.arange(n_blocks, device=qo_indptr.device)
    seq = torch.searchsorted(ends, g, right=True)
    starts = torch.cat((ends.new_zeros(1), ends))
    idx = g - starts[seq.clamp_max(batch)]
    return seq.to(torch.int32), idx.to(torch.int32)


def paged_prefill_attention(q, k_cache, v_cache, page_table, qo_indptr, kv_lens, scale, causal, window, soft_cap):
    total_q, num_heads, head_dim = q.shape
    num_pages, page_size, kv_heads, _ = k_cache.shape
    out = _util.new_empty((total_q, num_heads, head_dim), q)
    lse = _util.new_empty((total_q, num_heads), q, torch.float32)
    batch = kv_lens.shape[0]
    if total_q == 0 or batch == 0:
        return out, lse
    cfg = prefill_config(head_dim, q.element_size())
    block_seq, block_idx = prefill_blocks(qo_indptr, total_q, cfg.block_m)
    with _util.device_guard(q):
        paged_prefill_kernel[(block_seq.shape[0], num_heads)](
            q, k_cache, v_cache, page_table, qo_indptr, kv_lens, block_seq, block_idx, out, lse,
            float(scale), float(soft_cap), int(window), q.stride(0), batch, total_q, num_heads, num_heads // kv_heads,
            kv_heads, num_pages, page_size, page_table.shape[1],
            CAUSAL=bool(causal), SOFT_CAP=soft_cap > 0, IEEE=f32_dot(q.dtype, q.device), HEAD_DIM=head_dim,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_P=BLOCK_P, num_warps=cfg.num_warps,
        )
    return out, lse


# ------------------------------------------------------------------------------------ merge


@triton.jit
def merge_attention_states_kernel(
    va_ptr, lsea_ptr, vb_ptr, lseb_ptr, v_ptr, lse_ptr, n_rows, head_dim,
    BLOCK: tl.constexpr, ROWS: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    r_ok = rows < n_rows
    a = tl.load(lsea_ptr + rows, mask=r_ok, other=float("-inf"))
    b = tl.load(lseb_ptr + rows, mask=r_ok, other=float("-inf"))
    m = tl.maximum(a, b)
    m = tl.where(m == float("-inf"), 0.0, m)  # both parts empty: weights 0, lse -inf
    wa = tl.exp(a - m)
    wb = tl.exp(b - m)
    total = wa + wb
    lse = m + tl.log(total)
    inv = 1.0 / tl.where(total > 0, total, 1.0)
    wa = wa * inv
    wb = wb * inv
    nan = (a != a) | (b != b)  # an invalid part (NaN lse) spoils the merge
    wa = tl.where(nan, float("nan"), wa)
    lse = tl.where(nan, float("nan"), lse)
    tl.store(lse_ptr + rows, lse, mask=r_ok)
    wa = wa[:, None]
    wb = wb[:, None]
    offset = rows.to(tl.int64)[:, None] * head_dim
    for c0 in range(0, head_dim, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)[None, :]
        mask = r_ok[:, None] & (cols < head_dim)
        va = tl.load(va_ptr + offset + cols, mask=mask, other=0.0).to(tl.float32)
        vb = tl.load(vb_ptr + offset + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(v_ptr + offset + cols, (va * wa + vb * wb).to(v_ptr.dtype.element_ty), mask=mask)


def merge_attention_states(v_a, lse_a, v_b, lse_b):
    tokens, heads, head_dim = v_a.shape
    v = _util.new_empty((tokens, heads, head_dim), v_a)
    lse = _util.new_empty((tokens, heads), v_a, torch.float32)
    n_rows = tokens * heads
    if n_rows == 0:
        return v, lse
    block = min(_util.next_power_of_2(head_dim), MERGE_MAX_BLOCK)
    rows = _util.rows_per_program(block)
    with _util.device_guard(v_a):
        merge_attention_states_kernel[(triton.cdiv(n_rows, rows),)](
            v_a, lse_a, v_b, lse_b, v, lse, n_rows, head_dim,
            BLOCK=block, ROWS=rows, num_warps=_util.num_warps(rows * block, 8),
        )
    return v, lse


# ------------------------------------------------------------------------------------ AOT


def aot_cases():
    """(label, kernel, args, constexprs, num_warps) for the ahead-of-time compile check (see aot.py)."""
    for dtype in ("fp16", "bf16"):
        ptr = f"*{dtype}"
        yield (
            f"store_kv_cache[{dtype} kv_heads=8 head_dim=128]", store_kv_cache_kernel,
            {"k_ptr": ptr, "v_ptr": ptr, "kc_ptr": ptr, "vc_ptr": ptr, "slot_ptr": "*i64", "n_tokens": 1000,
             "k_stride": 48 * 128, "v_stride": 48 * 128, "row": 1024, "n_slots": 1 << 20},
            {"BLOCK": 1024, "ROWS": _util.rows_per_program(1024)}, _util.num_warps(2048, 8),
        )
    # (dtype, heads, kv_heads, head_dim, soft_cap)
    for n, (dtype, hq, hk, head_dim, cap) in enumerate((
        ("bf16", 32, 8, 128, False), ("fp16", 32, 32, 128, False), ("bf16", 16, 2, 256, True),
        ("fp16", 8, 1, 64, True), ("bf16", 64, 4, 64, False), ("fp32", 8, 2, 128, False), ("fp32", 4, 4, 256, True),
    )):
        ptr = f"*{dtype}"
        group = hq // hk
        elem_bytes = 4 if dtype == "fp32" else 2
        page_size = (16, 1, 5, 256, 32, 16, 16)[n]
        cfg = decode_config(group, head_dim, elem_bytes)
        yield (
            f"paged_decode[{dtype} heads={hq}/{hk} head_dim={head_dim} page_size={page_size} soft_cap={cap}]",
            paged_decode_kernel,
            {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "pt_ptr": "*i32", "lens_ptr": "*i32",
             "ws_out_ptr": "*fp32", "ws_lse_ptr": "*fp32", "scale": "fp32", "soft_cap": "fp32", "window": "i32",
             "q_stride": "i32", "num_heads": hq, "kv_heads": hk, "num_pages": 4099, "page_size": page_size, "max_pages": 257,
             "num_splits": 3},
            {"GROUP": group, "HEAD_DIM": head_dim, "BLOCK_H": cfg.block_h, "BLOCK_N": cfg.block_n,
             "SOFT_CAP": cap, "IEEE": dtype == "fp32", "BLOCK_P": BLOCK_P},
            cfg.num_warps,
        )
        pcfg = prefill_config(head_dim, elem_bytes)
        for causal in (True, False) if n == 0 else (True,):
            yield (
                f"paged_prefill[{dtype} heads={hq}/{hk} head_dim={head_dim} page_size={page_size} causal={causal} "
                f"soft_cap={cap}]",
                paged_prefill_kernel,
                {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "pt_ptr": "*i32", "indptr_ptr": "*i32",
                 "lens_ptr": "*i32", "block_seq_ptr": "*i32", "block_idx_ptr": "*i32", "out_ptr": ptr,
                 "lse_ptr": "*fp32", "scale": "fp32", "soft_cap": "fp32", "window": "i32", "q_stride": "i32",
                 "batch": 7, "total_q": 3001, "num_heads": hq, "group": group, "kv_heads": hk, "num_pages": 4099,
                 "page_size": page_size, "max_pages": 257},
                {"CAUSAL": causal, "SOFT_CAP": cap, "IEEE": dtype == "fp32", "HEAD_DIM": head_dim,
                 "BLOCK_M": pcfg.block_m, "BLOCK_N": pcfg.block_n, "BLOCK_P": BLOCK_P},
                pcfg.num_warps,
            )
    for dtype, head_dim in (("bf16", 128), ("fp16", 256), ("fp32", 64)):
        yield (
            f"merge_splits[{dtype} head_dim={head_dim}]", merge_splits_kernel,
            {"ws_out_ptr": "*fp32", "ws_lse_ptr": "*fp32", "out_ptr": f"*{dtype}", "lse_ptr": "*fp32",
             "num_splits": 5},
            {"HEAD_DIM": head_dim, "BLOCK_S": 16}, _util.num_warps(16 * head_dim, 4),
        )
        block = min(_util.next_power_of_2(head_dim), MERGE_MAX_BLOCK)
        rows = _util.rows_per_program(block)
        yield (
            f"merge_attention_states[{dtype} head_dim={head_dim}]", merge_attention_states_kernel,
            {"va_ptr": f"*{dtype}", "lsea_ptr": "*fp32", "vb_ptr": f"*{dtype}", "lseb_ptr": "*fp32",
             "v_ptr": f"*{dtype}", "lse_ptr": "*fp32", "n_rows": 4096, "head_dim": head_dim},
            {"BLOCK": block, "ROWS": rows}, _util.num_warps(rows * block, 8),
        )
