"""Paged attention: store, decode, ragged prefill, merge, against the float32 reference."""

import math

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import reference
from tests.helpers import assert_close, device_backend_params

# Half-precision attention rounds q, K, V and the output: the norm-level tolerance is what holds.
ATTN_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _dtypes_for(device, backend="native"):
    """CPU runs all three; the CUDA kernels are bf16 / fp16 only (float32 goes to Triton, IEEE dots)."""
    if device == "cpu":
        return ATTN_DTYPES
    return [torch.bfloat16, torch.float16] + ([torch.float32] if backend == "triton" else [])


def make_cache(num_pages, page_size, kv_heads, head_dim, dtype, device):
    k = torch.randn(num_pages, page_size, kv_heads, head_dim, dtype=dtype, device=device)
    v = torch.randn(num_pages, page_size, kv_heads, head_dim, dtype=dtype, device=device)
    return k, v


def make_page_table(lengths, page_size, num_pages, device, share=True):
    """Shuffled pages; with ``share``, every sequence's first page is one shared prefix page."""
    max_pages = max(math.ceil(n / page_size) for n in lengths)
    order = torch.randperm(num_pages)
    table = torch.zeros(len(lengths), max_pages, dtype=torch.int32)
    next_free = 1 if share else 0
    for i, n in enumerate(lengths):
        for p in range(math.ceil(n / page_size)):
            if share and p == 0:
                table[i, p] = order[0]
            else:
                table[i, p] = order[next_free]
                next_free += 1
    assert next_free <= num_pages
    return table.to(device)


def _pages_needed(lengths, page_size):
    return sum(math.ceil(n / page_size) for n in lengths) + 1


DECODE_CASES = [
    # (lengths, page_size, heads, kv_heads, head_dim)
    ([1], 16, 8, 8, 64),
    ([15, 16, 17], 16, 8, 2, 64),
    ([1, 63, 64, 65, 300], 64, 32, 8, 128),
    ([7, 1, 9], 1, 4, 1, 64),
    ([33, 260], 256, 8, 1, 256),
    ([1000, 5, 77], 16, 12, 3, 128),
]


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"L{'-'.join(map(str, c[0]))}_p{c[1]}_h{c[2]}x{c[3]}_d{c[4]}")
@pytest.mark.parametrize("dtype_index", [0, 1, 2])
def test_decode(device, backend, case, dtype_index):
    dtypes = _dtypes_for(device, backend)
    if dtype_index >= len(dtypes):
        pytest.skip("the CUDA attention kernels are bf16 / fp16 only (float32 goes to Triton)")
    dtype = dtypes[dtype_index]
    lengths, page_size, heads, kv_heads, head_dim = case
    k_cache, v_cache = make_cache(_pages_needed(lengths, page_size), page_size, kv_heads, head_dim, dtype, device)
    table = make_page_table(lengths, page_size, k_cache.shape[0], device)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    q = torch.randn(len(lengths), heads, head_dim, dtype=dtype, device=device)
    ref_out, ref_lse = reference.paged_decode_attention(q, k_cache, v_cache, table, seq_lens, head_dim**-0.5, -1, 0.0)
    with kernels.backend(backend):
        out, lse = kernels.paged_decode_attention(q, k_cache, v_cache, table, seq_lens, return_lse=True)
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, torch.float32 if dtype == torch.float32 else torch.bfloat16, "lse")


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("window,soft_cap", [(8, None), (None, 5.0), (40, 30.0)])
def test_decode_window_and_soft_cap(device, backend, window, soft_cap):
    dtype = _dtypes_for(device)[0]
    lengths, page_size = [5, 8, 9, 100], 16
    k_cache, v_cache = make_cache(_pages_needed(lengths, page_size), page_size, 2, 64, dtype, device)
    table = make_page_table(lengths, page_size, k_cache.shape[0], device)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    q = torch.randn(4, 8, 64, dtype=dtype, device=device) * 4
    scale = 0.2
    ref_out, ref_lse = reference.paged_decode_attention(q, k_cache, v_cache, table, seq_lens, scale, window or -1, soft_cap or 0.0)
    with kernels.backend(backend):
        out, lse = kernels.paged_decode_attention(
            q, k_cache, v_cache, table, seq_lens, scale, sliding_window=window, soft_cap=soft_cap, return_lse=True
        )
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, torch.float32 if dtype == torch.float32 else torch.bfloat16, "lse")


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("pad", [2 * 64 + 2 * 64, 4])
def test_decode_reads_q_from_a_fused_qkv_row(device, backend, pad):
    # q as the model gets it: the first heads of a [batch, q + k + v] row (pad 256, read in place),
    # or rows 4 elements longer than q (not 16-byte aligned: the CUDA binding copies them).
    dtype = _dtypes_for(device, backend)[0]
    lengths, page_size, heads, kv_heads, head_dim = [3, 40, 17], 16, 8, 2, 64
    k_cache, v_cache = make_cache(_pages_needed(lengths, page_size), page_size, kv_heads, head_dim, dtype, device)
    table = make_page_table(lengths, page_size, k_cache.shape[0], device)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    rows = torch.randn(len(lengths), heads * head_dim + pad, dtype=dtype, device=device)
    q = rows[:, : heads * head_dim].view(len(lengths), heads, head_dim)
    assert not q.is_contiguous()
    ref_out, ref_lse = reference.paged_decode_attention(q, k_cache, v_cache, table, seq_lens, head_dim**-0.5, -1, 0.0)
    with kernels.backend(backend):
        out, lse = kernels.paged_decode_attention(q, k_cache, v_cache, table, seq_lens, return_lse=True)
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, torch.float32 if dtype == torch.float32 else torch.bfloat16, "lse")


PREFILL_CASES = [
    # (new tokens per sequence, prefix per sequence, page_size, heads, kv_heads, head_dim)
    ([5], [0], 16, 4, 4, 64),
    ([17, 1, 40], [0, 15, 33], 16, 8, 2, 64),
    ([64, 3], [64, 200], 64, 8, 1, 128),
    ([9, 0, 4], [3, 7, 0], 1, 4, 2, 64),
    ([130], [70], 256, 4, 1, 256),
]


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize(
    "case", PREFILL_CASES, ids=lambda c: f"n{'-'.join(map(str, c[0]))}_pre{'-'.join(map(str, c[1]))}_p{c[2]}_d{c[5]}"
)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype_index", [0, 1])
def test_prefill(device, backend, case, causal, dtype_index):
    dtype = _dtypes_for(device)[dtype_index]
    new, prefix, page_size, heads, kv_heads, head_dim = case
    kv_lens_list = [n + p for n, p in zip(new, prefix)]
    lengths = [max(n, 1) for n in kv_lens_list]
    k_cache, v_cache = make_cache(_pages_needed(lengths, page_size), page_size, kv_heads, head_dim, dtype, device)
    table = make_page_table(lengths, page_size, k_cache.shape[0], device, share=False)
    qo_indptr = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32, device=device)
    kv_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    q = torch.randn(sum(new), heads, head_dim, dtype=dtype, device=device)
    scale = head_dim**-0.5
    ref_out, ref_lse = reference.paged_prefill_attention(q, k_cache, v_cache, table, qo_indptr, kv_lens, scale, causal, -1, 0.0)
    with kernels.backend(backend):
        out, lse = kernels.paged_prefill_attention(q, k_cache, v_cache, table, qo_indptr, kv_lens, causal, return_lse=True)
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, torch.float32 if dtype == torch.float32 else torch.bfloat16, "lse")


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("pad", [2 * 64 + 2 * 64, 4])
def test_prefill_reads_q_from_a_fused_qkv_row(device, backend, pad):
    # q as the model gets it: the first heads of each [tokens, q + k + v] row (read in place), or
    # rows 4 elements longer than q (not 16-byte aligned: the CUDA binding copies them).
    dtype = _dtypes_for(device, backend)[0]
    new, prefix, page_size, heads, kv_heads, head_dim = [17, 1, 40], [0, 15, 33], 16, 8, 2, 64
    lengths = [n + p for n, p in zip(new, prefix)]
    k_cache, v_cache = make_cache(_pages_needed(lengths, page_size), page_size, kv_heads, head_dim, dtype, device)
    table = make_page_table(lengths, page_size, k_cache.shape[0], device, share=False)
    qo_indptr = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32, device=device)
    kv_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    rows = torch.randn(sum(new), heads * head_dim + pad, dtype=dtype, device=device)
    q = rows[:, : heads * head_dim].view(sum(new), heads, head_dim)
    assert not q.is_contiguous()
    args = (q, k_cache, v_cache, table, qo_indptr, kv_lens)
    ref_out, ref_lse = reference.paged_prefill_attention(*args, head_dim**-0.5, True, -1, 0.0)
    with kernels.backend(backend):
        out, lse = kernels.paged_prefill_attention(*args, return_lse=True)
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, torch.float32 if dtype == torch.float32 else torch.bfloat16, "lse")


GPU_PREFILL_CASES = [
    # Several query tiles per sequence, long prefixes, ragged: (new, prefix, page, heads, kv_heads, dim)
    ([300, 129, 1], [0, 1000, 77], 16, 8, 2, 128),
    ([257, 64], [0, 3], 64, 4, 4, 64),
    ([100, 70], [500, 0], 16, 4, 2, 256),
    # Groups of 7 and 3 query heads (tile rows of the wgmma kernel split a token's heads across
    # tiles), decode rows mixed with prefills as a serving step has them.
    ([1, 150, 1, 33], [129, 60, 300, 0], 16, 28, 4, 128),
    ([1, 70, 2], [40, 0, 90], 16, 9, 3, 64),
]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "backend,cuda_isa",
    # native twice on a Hopper GPU: its wgmma kernel (head_dim 64 / 128), then the mma.sync one
    # the op uses elsewhere (KERNELS_CUDA_ISA=sm80)
    [("native", ""), ("native", "sm80"), ("triton", "")],
)
@pytest.mark.parametrize("case", GPU_PREFILL_CASES, ids=lambda c: f"n{'-'.join(map(str, c[0]))}_d{c[5]}")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window,soft_cap", [(-1, 0.0), (100, 30.0)])
def test_prefill_many_tiles_on_gpu(monkeypatch, backend, cuda_isa, case, causal, window, soft_cap):
    monkeypatch.setenv("KERNELS_CUDA_ISA", cuda_isa)
    new, prefix, page_size, heads, kv_heads, head_dim = case
    lengths = [n + p for n, p in zip(new, prefix)]
    k_cache, v_cache = make_cache(_pages_needed(lengths, page_size), page_size, kv_heads, head_dim, torch.bfloat16, "cuda")
    table = make_page_table(lengths, page_size, k_cache.shape[0], "cuda", share=False)
    qo_indptr = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    kv_lens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    # q as a strided view of fused qkv rows (the model's), read in place.
    q = torch.randn(sum(new), (heads + 2 * kv_heads) * head_dim, dtype=torch.bfloat16, device="cuda")
    q = q[:, : heads * head_dim].view(sum(new), heads, head_dim)
    args = (q, k_cache, v_cache, table, qo_indptr, kv_lens)
    ref_out, ref_lse = reference.paged_prefill_attention(*args, head_dim**-0.5, causal, window, soft_cap)
    with kernels.backend(backend):
        out, lse = kernels.paged_prefill_attention(
            *args, causal, sliding_window=None if window < 0 else window, soft_cap=soft_cap or None, return_lse=True
        )
    assert_close(out, ref_out, torch.bfloat16)
    assert_close(lse, ref_lse, torch.bfloat16, "lse")


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_prefill_window_and_soft_cap(device, backend):
    dtype = _dtypes_for(device)[0]
    new, prefix, page_size = [20, 6], [10, 40], 16
    lengths = [n + p for n, p in zip(new, prefix)]
    k_cache, v_cache = make_cache(_pages_needed(lengths, page_size), page_size, 2, 64, dtype, device)
    table = make_page_table(lengths, page_size, k_cache.shape[0], device, share=False)
    qo_indptr = torch.tensor([0, 20, 26], dtype=torch.int32, device=device)
    kv_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    q = torch.randn(26, 4, 64, dtype=dtype, device=device) * 3
    ref_out, ref_lse = reference.paged_prefill_attention(q, k_cache, v_cache, table, qo_indptr, kv_lens, 0.125, True, 12, 20.0)
    with kernels.backend(backend):
        out, lse = kernels.paged_prefill_attention(
            q, k_cache, v_cache, table, qo_indptr, kv_lens, True, 0.125, sliding_window=12, soft_cap=20.0, return_lse=True
        )
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, torch.float32 if dtype == torch.float32 else torch.bfloat16, "lse")


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_store_kv_cache(device, backend):
    dtype = _dtypes_for(device)[-1]
    k_cache, v_cache = make_cache(6, 16, 2, 128, dtype, device)
    qkv = torch.randn(5, (8 + 2 * 2) * 128, dtype=dtype, device=device)
    k = qkv[:, 8 * 128 : 10 * 128].view(5, 2, 128)
    v = qkv[:, 10 * 128 :].view(5, 2, 128)
    slots = torch.tensor([17, -1, 0, 95, 40], device=device)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    reference.store_kv_cache(k, v, ref_k, ref_v, slots)
    with kernels.backend(backend):
        kernels.store_kv_cache(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_split_kv_merge_equals_whole(device, backend):
    """Attention over a prefix and over the rest, merged, is attention over everything."""
    dtype = _dtypes_for(device)[0]
    page_size, length, split = 16, 90, 37
    k_cache, v_cache = make_cache(8, page_size, 2, 64, dtype, device)
    table = make_page_table([length], page_size, 8, device, share=False)
    q = torch.randn(1, 8, 64, dtype=dtype, device=device)
    with kernels.backend(backend):
        whole, whole_lse = kernels.paged_decode_attention(
            q, k_cache, v_cache, table, torch.tensor([length], dtype=torch.int32, device=device), return_lse=True
        )
        # The last `length - split` keys via a window on a decode query; the first `split` keys via
        # a non-causal prefill of the same query over a sequence cut at `split`.
        tail, tail_lse = kernels.paged_decode_attention(
            q, k_cache, v_cache, table, torch.tensor([length], dtype=torch.int32, device=device),
            sliding_window=length - split, return_lse=True,
        )
        head, head_lse = kernels.paged_prefill_attention(
            q, k_cache, v_cache, table, torch.tensor([0, 1], dtype=torch.int32, device=device),
            torch.tensor([split], dtype=torch.int32, device=device), False, return_lse=True,
        )
        merged, merged_lse = kernels.merge_attention_states(head, head_lse, tail, tail_lse)
    assert_close(merged, whole, dtype)
    assert_close(merged_lse, whole_lse, torch.float32 if dtype == torch.float32 else torch.bfloat16, "lse")


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_merge_attention_states(device, backend):
    dtype = _dtypes_for(device)[-1]
    v_a = torch.randn(7, 4, 128, dtype=dtype, device=device)
    v_b = torch.randn(7, 4, 128, dtype=dtype, device=device)
    lse_a = torch.randn(7, 4, device=device) * 3
    lse_b = torch.randn(7, 4, device=device) * 3
    lse_a[0, 0] = float("-inf")  # an empty part
    lse_a[1, 1] = lse_b[1, 1] = float("-inf")  # both empty: zeros, -inf
    ref_v, ref_lse = reference.merge_attention_states(v_a, lse_a, v_b, lse_b)
    with kernels.backend(backend):
        v, lse = kernels.merge_attention_states(v_a, lse_a, v_b, lse_b)
    assert torch.isneginf(lse[1, 1]) and torch.all(v[1, 1] == 0)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert_close(v, ref_v, dtype)
    assert_close(lse[finite], ref_lse[finite], torch.float32, "lse")


def test_reference_matches_sdpa_on_contiguous_data():
    """The reference itself, checked against torch's SDPA (causal, GQA) in float64."""
    heads, kv_heads, d, n = 8, 2, 64, 40
    page_size = 8
    k_cache, v_cache = make_cache(6, page_size, kv_heads, d, torch.float64, "cpu")
    table = torch.arange(5, dtype=torch.int32)[None]
    q = torch.randn(n, heads, d, dtype=torch.float64)
    qo = torch.tensor([0, n], dtype=torch.int32)
    out, _ = reference.paged_prefill_attention(q, k_cache, v_cache, table, qo, torch.tensor([n], dtype=torch.int32), 0.125, True, -1, 0.0)
    keys = k_cache[:5].flatten(0, 1)[:n].transpose(0, 1)[None]
    values = v_cache[:5].flatten(0, 1)[:n].transpose(0, 1)[None]
    expected = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys, values, is_causal=True, scale=0.125, enable_gqa=True)
    # The reference computes in float32: compare at float32 precision.
    torch.testing.assert_close(out.double(), expected[0].transpose(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_bad_page_index_on_gpu_gives_nan_not_a_read(backend):
    k_cache, v_cache = make_cache(4, 16, 1, 64, torch.bfloat16, "cuda")
    table = torch.tensor([[0, 1], [2, 1000]], dtype=torch.int32, device="cuda")
    seq_lens = torch.tensor([20, 20], dtype=torch.int32, device="cuda")
    q = torch.randn(2, 2, 64, dtype=torch.bfloat16, device="cuda")
    with kernels.backend(backend):
        out, lse = kernels.paged_decode_attention(q, k_cache, v_cache, table, seq_lens, return_lse=True)
    torch.cuda.synchronize()
    assert not torch.isnan(out[0]).any() and torch.isnan(out[1]).all() and torch.isnan(lse[1]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_bad_page_index_in_prefill_on_gpu_gives_nan_not_a_read(backend):
    k_cache, v_cache = make_cache(4, 16, 1, 64, torch.bfloat16, "cuda")
    table = torch.tensor([[0, 1], [2, 1000]], dtype=torch.int32, device="cuda")
    qo_indptr = torch.tensor([0, 5, 8], dtype=torch.int32, device="cuda")
    kv_lens = torch.tensor([20, 20], dtype=torch.int32, device="cuda")
    q = torch.randn(8, 2, 64, dtype=torch.bfloat16, device="cuda")
    with kernels.backend(backend):
        out, lse = kernels.paged_prefill_attention(q, k_cache, v_cache, table, qo_indptr, kv_lens, return_lse=True)
    torch.cuda.synchronize()
    assert not torch.isnan(out[:5]).any() and torch.isnan(out[5:]).all() and torch.isnan(lse[5:]).all()


@pytest.mark.gpu
def test_unknown_cuda_isa_raises(monkeypatch):
    k_cache, v_cache = make_cache(2, 16, 1, 64, torch.bfloat16, "cuda")
    table = torch.tensor([[0, 1]], dtype=torch.int32, device="cuda")
    qo_indptr = torch.tensor([0, 4], dtype=torch.int32, device="cuda")
    kv_lens = torch.tensor([20], dtype=torch.int32, device="cuda")
    q = torch.randn(4, 2, 64, dtype=torch.bfloat16, device="cuda")
    monkeypatch.setenv("KERNELS_CUDA_ISA", "sm95")
    with kernels.backend("native"), pytest.raises(RuntimeError, match="KERNELS_CUDA_ISA"):
        kernels.paged_prefill_attention(q, k_cache, v_cache, table, qo_indptr, kv_lens)


def _decode_args(**overrides):
    k_cache, v_cache = make_cache(4, 16, 2, 64, torch.float32, "cpu")
    args = dict(
        q=torch.randn(2, 4, 64),
        k_cache=k_cache,
        v_cache=v_cache,
        page_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
        seq_lens=torch.tensor([20, 5], dtype=torch.int32),
    )
    args.update(overrides)
    return args


BAD_DECODE = {
    "page index out of range": (dict(page_table=torch.tensor([[0, 9], [2, 3]], dtype=torch.int32)), ValueError, "page_table"),
    "negative page index": (dict(page_table=torch.tensor([[0, 1], [-1, 3]], dtype=torch.int32)), ValueError, "page_table"),
    "seq_len beyond the table": (dict(seq_lens=torch.tensor([33, 5], dtype=torch.int32)), ValueError, "seq_lens"),
    "seq_len zero": (dict(seq_lens=torch.tensor([0, 5], dtype=torch.int32)), ValueError, "seq_lens"),
    "mismatched heads": (dict(q=torch.randn(2, 3, 64)), ValueError, "num_heads"),
    "head_dim mismatch": (dict(q=torch.randn(2, 4, 32)), ValueError, "q"),
    "page_table int64": (dict(page_table=torch.tensor([[0, 1], [2, 3]])), TypeError, "page_table"),
    "seq_lens wrong batch": (dict(seq_lens=torch.tensor([20], dtype=torch.int32)), ValueError, "seq_lens"),
    "q dtype differs": (dict(q=torch.randn(2, 4, 64, dtype=torch.bfloat16)), TypeError, "q"),
    "q heads not contiguous": (dict(q=torch.randn(2, 64, 4).transpose(1, 2)), ValueError, "q"),
    "odd head_dim cache": (
        dict(k_cache=torch.randn(4, 16, 2, 48), v_cache=torch.randn(4, 16, 2, 48), q=torch.randn(2, 4, 48)),
        ValueError,
        "head_dim",
    ),
    "v_cache shape": (dict(v_cache=torch.randn(5, 16, 2, 64)), ValueError, "v_cache"),
}


@pytest.mark.parametrize("case", list(BAD_DECODE))
def test_decode_bad_input_raises(case):
    overrides, error, name = BAD_DECODE[case]
    with pytest.raises(error, match=name):
        kernels.paged_decode_attention(**_decode_args(**overrides))


def test_decode_bad_options_raise():
    with pytest.raises(ValueError, match="sliding_window"):
        kernels.paged_decode_attention(**_decode_args(), sliding_window=0)
    with pytest.raises(ValueError, match="soft_cap"):
        kernels.paged_decode_attention(**_decode_args(), soft_cap=-1.0)
    with pytest.raises(TypeError, match="return_lse"):
        kernels.paged_decode_attention(**_decode_args(), return_lse="yes")


def test_prefill_bad_indptr_and_lengths_raise():
    k_cache, v_cache = make_cache(4, 16, 2, 64, torch.float32, "cpu")
    table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    q = torch.randn(6, 4, 64)
    good = dict(qo_indptr=torch.tensor([0, 4, 6], dtype=torch.int32), kv_lens=torch.tensor([10, 2], dtype=torch.int32))
    kernels.paged_prefill_attention(q, k_cache, v_cache, table, **good)
    for overrides, name in (
        (dict(qo_indptr=torch.tensor([0, 4, 5], dtype=torch.int32)), "qo_indptr"),
        (dict(qo_indptr=torch.tensor([0, 7, 6], dtype=torch.int32)), "qo_indptr"),
        (dict(kv_lens=torch.tensor([3, 2], dtype=torch.int32)), "kv_lens"),
        (dict(kv_lens=torch.tensor([40, 2], dtype=torch.int32)), "kv_lens"),
        (dict(qo_indptr=torch.tensor([0, 6], dtype=torch.int32)), "qo_indptr"),
    ):
        with pytest.raises(ValueError, match=name):
            kernels.paged_prefill_attention(q, k_cache, v_cache, table, **{**good, **overrides})
    # Tokens may be strided (a fused qkv); heads and dims may not.
    with pytest.raises(ValueError, match="q"):
        kernels.paged_prefill_attention(torch.randn(6, 64, 4).transpose(1, 2), k_cache, v_cache, table, **good)


def test_store_bad_slot_raises():
    k_cache, v_cache = make_cache(2, 16, 2, 64, torch.float32, "cpu")
    k = torch.randn(3, 2, 64)
    with pytest.raises(ValueError, match="slot_mapping"):
        kernels.store_kv_cache(k, k.clone(), k_cache, v_cache, torch.tensor([0, 32, 1]))
    with pytest.raises(ValueError, match="slot_mapping"):
        kernels.store_kv_cache(k, k.clone(), k_cache, v_cache, torch.tensor([0, -2, 1]))
    with pytest.raises(TypeError, match="slot_mapping"):
        kernels.store_kv_cache(k, k.clone(), k_cache, v_cache, torch.tensor([0, 1, 2], dtype=torch.int32))
