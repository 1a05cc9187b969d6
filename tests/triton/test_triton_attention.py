"""The Triton paged-attention kernels against the float32 references, through the public functions.

Under the Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors) or on a CUDA GPU. Caches are
poisoned: every slot that no sequence's tokens occupy (unused pages, the tail of each last page)
holds NaN, page tables hold out-of-range junk past each sequence's pages, and outputs and workspaces
are allocated full of NaN, so a read of a wrong slot or an unwritten element fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.triton.device import DEVICE  # noqa: E402  (skips this module when Triton cannot run)

import kernels  # noqa: E402
from kernels import reference, registry  # noqa: E402

NAN = float("nan")
# fp32 on a GPU: tl.dot runs with input_precision="ieee" for fp32, but exp/log differ from torch's.
NORM_TOL = {torch.float32: 1e-5 if DEVICE == "cpu" else 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
LSE_TOL = 1e-4

# The interpreter evaluates log(0) / exp(inf - inf) in numpy for empty rows and masked lanes.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    from kernels.triton import _util

    def poisoned(shape, like, dtype=None):
        return torch.full(shape, NAN, dtype=like.dtype if dtype is None else dtype, device=like.device)

    monkeypatch.setattr(_util, "new_empty", poisoned)


def triton_impl(op: str):
    return next(i for i in registry.implementations(op) if i.backend == "triton").fn


def randn(*shape, dtype) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float32, device=DEVICE).to(dtype)


def assert_close(out: torch.Tensor, ref: torch.Tensor, what: str = "out", tol: float | None = None) -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != {ref.dtype}"
    if out.numel() == 0:
        return
    o, r = out.double().cpu(), ref.double().cpu()
    assert not o.isnan().any(), f"{what}: {int(o.isnan().sum())} NaN elements (unwritten, or read a poisoned slot)"
    rel = ((o - r).norm() / r.norm().clamp_min(1e-30)).item()
    tol = NORM_TOL[out.dtype] if tol is None else tol
    assert rel <= tol, f"{what}: relative norm error {rel:.3e} > {tol:.0e}"


def assert_lse_close(lse: torch.Tensor, ref: torch.Tensor, what: str = "lse") -> None:
    assert lse.dtype == torch.float32 and lse.shape == ref.shape, f"{what}: {lse.dtype} {tuple(lse.shape)}"
    l, r = lse.double().cpu(), ref.double().cpu()
    assert not l.isnan().any(), f"{what}: NaN"
    assert torch.equal(l.isinf(), r.isinf()) and torch.equal(l[l.isinf()], r[r.isinf()]), f"{what}: infinities differ"
    fin = ~r.isinf()
    err = ((l - r).abs() / (1 + r.abs()))[fin]
    assert err.numel() == 0 or err.max().item() <= LSE_TOL, f"{what}: error {err.max().item():.3e}"


class Paged:
    """A poisoned paged KV cache holding ``lengths`` tokens per sequence, pages shuffled and shared."""

    def __init__(self, lengths, page_size, kv_heads, head_dim, dtype, spare=3, share=True):
        self.lengths, self.page_size = list(lengths), page_size
        counts = [math.ceil(n / page_size) for n in lengths]
        num_pages = sum(counts) + spare
        max_pages = max(counts) + 2
        perm = torch.randperm(num_pages).tolist()
        # Junk past each sequence's pages: indices out of range, never to be read.
        table = torch.randint(num_pages, num_pages + 1000, (len(lengths), max_pages), dtype=torch.int32)
        table[:, -1] = -3
        taken = 0
        for i, c in enumerate(counts):
            table[i, :c] = torch.tensor(perm[taken : taken + c], dtype=torch.int32)
            taken += c
        if share:
            # Prefix sharing: sequences whose first page is full share sequence 0's first page (which
            # then holds the same tokens for both); their own first page stays unused.
            for i in range(1, len(lengths)):
                if lengths[0] >= page_size and lengths[i] >= page_size:
                    table[i, 0] = table[0, 0]
        shape = (num_pages, page_size, kv_heads, head_dim)
        self.k_cache, self.v_cache = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)
        covered = torch.zeros(num_pages * page_size, dtype=torch.bool)
        for i, n in enumerate(lengths):
            t = torch.arange(n)
            covered[table[i, t // page_size].long() * page_size + t % page_size] = True
        covered = covered.to(DEVICE)
        for cache in (self.k_cache, self.v_cache):
            cache.view(-1, kv_heads, head_dim)[~covered] = NAN
        self.page_table = table.to(DEVICE)
        self.num_pages = num_pages

    def lens(self, values=None):
        return torch.tensor(self.lengths if values is None else values, dtype=torch.int32, device=DEVICE)


def lengths_for(page_size: int) -> list[int]:
    return sorted({1, max(1, page_size - 1), page_size, page_size + 1, 3 * page_size + 2, 40})


# ------------------------------------------------------------------------------------------ decode


def run_decode(paged, q, scale, window=None, soft_cap=None):
    with kernels.backend("triton"):
        out, lse = kernels.paged_decode_attention(
            q, paged.k_cache, paged.v_cache, paged.page_table, paged.lens(), scale,
            sliding_window=window, soft_cap=soft_cap, return_lse=True,
        )
    ref_out, ref_lse = reference.paged_decode_attention(
        q, paged.k_cache, paged.v_cache, paged.page_table, paged.lens(),
        1 / math.sqrt(q.shape[2]) if scale is None else scale, window or -1, soft_cap or 0.0,
    )
    return out, lse, ref_out, ref_lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [(2, 2), (8, 2)], ids=["mha", "gqa4"])
@pytest.mark.parametrize("page_size", [1, 5, 16, 256])
def test_decode(dtype, heads, page_size):
    num_heads, kv_heads = heads
    lengths = lengths_for(page_size)
    paged = Paged(lengths, page_size, kv_heads, 64, dtype)
    q = randn(len(lengths), num_heads, 64, dtype=dtype)
    out, lse, ref_out, ref_lse = run_decode(paged, q, 0.2)
    assert_close(out, ref_out)
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window, soft_cap", [(7, None), (None, 5.0), (1, 2.0), (64, 3.0)])
def test_decode_window_soft_cap(dtype, window, soft_cap):
    paged = Paged([1, 4, 7, 8, 30, 41], 3, 2, 64, dtype)
    q = 3 * randn(6, 4, 64, dtype=dtype)
    out, lse, ref_out, ref_lse = run_decode(paged, q, None, window, soft_cap)
    assert_close(out, ref_out)
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("head_dim, dtype", [(128, torch.bfloat16), (256, torch.float32)])
def test_decode_head_dims(head_dim, dtype):
    paged = Paged([17, 3, 50], 16, 1, head_dim, dtype)
    q = randn(3, 3, head_dim, dtype=dtype)  # GQA 3: a padded group
    out, lse, ref_out, ref_lse = run_decode(paged, q, 1 / math.sqrt(head_dim), 20 if dtype == torch.float32 else None)
    assert_close(out, ref_out)
    assert_lse_close(lse, ref_lse)


def test_decode_reads_q_from_a_fused_qkv_row():
    # q as the model gets it: the first heads of each [q + k + v] row, read in place.
    paged = Paged([300, 5, 129], 16, 2, 64, torch.float32)
    rows = randn(3, 8 * 64 + 2 * 2 * 64, dtype=torch.float32)
    q = rows[:, : 8 * 64].view(3, 8, 64)
    out, lse, ref_out, ref_lse = run_decode(paged, q, None)
    assert_close(out, ref_out)
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_split_kv_consistency(dtype):
    # One sequence per group: the automatic choice splits the KV; forced counts, including more
    # splits than tiles (empty splits), agree with one split and with the reference.
    paged = Paged([300, 5, 129], 16, 1, 64, dtype)
    q = randn(3, 4, 64, dtype=dtype)
    args = (q, paged.k_cache, paged.v_cache, paged.page_table, paged.lens(), 0.125, -1, 0.0)
    ref_out, ref_lse = reference.paged_decode_attention(*args)
    from kernels.triton import attention

    results = {}
    for splits in (None, 1, 3, 16):
        out, lse = attention.paged_decode_attention(*args, num_splits=splits)
        assert_close(out, ref_out, f"out, splits={splits}")
        assert_lse_close(lse, ref_lse, f"lse, splits={splits}")
        results[splits] = (out, lse)
    block_n = attention.decode_config(4, 64, q.element_size()).block_n
    auto = attention.decode_splits(3, 1, paged.page_table.shape[1] * 16, -1, block_n, attention._multiprocessors(q.device))
    assert auto > 1
    assert_close(results[16][0], results[1][0], "16 splits vs 1", tol=NORM_TOL[dtype] / 2)


def test_decode_merge_of_two_key_ranges():
    # Attention over keys [0, 32) and over [32, L), merged, equals attention over [0, L).
    dtype = torch.float32
    paged = Paged([32 + 21, 32 + 1, 40 + 32], 16, 2, 64, dtype, share=False)
    q = randn(3, 4, 64, dtype=dtype)
    head = paged.lens([32, 32, 32])
    tail_table = paged.page_table[:, 2:].contiguous()
    tail = paged.lens([n - 32 for n in paged.lengths])
    with kernels.backend("triton"):
        full_out, full_lse = kernels.paged_decode_attention(
            q, paged.k_cache, paged.v_cache, paged.page_table, paged.lens(), return_lse=True)
        a, lse_a = kernels.paged_decode_attention(
            q, paged.k_cache, paged.v_cache, paged.page_table, head, return_lse=True)
        b, lse_b = kernels.paged_decode_attention(q, paged.k_cache, paged.v_cache, tail_table, tail, return_lse=True)
        merged, merged_lse = kernels.merge_attention_states(a, lse_a, b, lse_b)
    assert_close(merged, full_out, "merged")
    assert_lse_close(merged_lse, full_lse, "merged lse")


def test_decode_without_lse_and_fp16():
    paged = Paged([9, 16], 16, 2, 64, torch.float16)
    q = randn(2, 2, 64, dtype=torch.float16)
    with kernels.backend("triton"):
        out = kernels.paged_decode_attention(q, paged.k_cache, paged.v_cache, paged.page_table, paged.lens())
    ref, _ = reference.paged_decode_attention(q, paged.k_cache, paged.v_cache, paged.page_table, paged.lens(),
                                              0.125, -1, 0.0)
    assert isinstance(out, torch.Tensor)
    assert_close(out, ref)


# ----------------------------------------------------------------------------------------- prefill

# (new tokens, kv length) per sequence: prefix 0 and > 0, one empty sequence, one spanning two
# query blocks (BLOCK_M = 64).
PREFILL_SEQS = [(1, 1), (5, 5), (3, 20), (0, 4), (70, 75)]


def run_prefill(paged, q, indptr, causal, scale, window=None, soft_cap=None):
    with kernels.backend("triton"):
        out, lse = kernels.paged_prefill_attention(
            q, paged.k_cache, paged.v_cache, paged.page_table, indptr, paged.lens(), causal, scale,
            sliding_window=window, soft_cap=soft_cap, return_lse=True,
        )
    ref_out, ref_lse = reference.paged_prefill_attention(
        q, paged.k_cache, paged.v_cache, paged.page_table, indptr, paged.lens(),
        1 / math.sqrt(q.shape[2]) if scale is None else scale, causal, window or -1, soft_cap or 0.0,
    )
    return out, lse, ref_out, ref_lse


def prefill_inputs(seqs, page_size, heads, head_dim, dtype, share=True):
    num_heads, kv_heads = heads
    paged = Paged([kv for _, kv in seqs], page_size, kv_heads, head_dim, dtype, share=share)
    counts = torch.tensor([0] + [n for n, _ in seqs])
    indptr = torch.cumsum(counts, 0).to(torch.int32).to(DEVICE)
    q = randn(int(counts.sum()), num_heads, head_dim, dtype=dtype)
    return paged, q, indptr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [(2, 2), (8, 2)], ids=["mha", "gqa4"])
@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_prefill(dtype, heads, page_size, causal):
    paged, q, indptr = prefill_inputs(PREFILL_SEQS, page_size, heads, 64, dtype)
    out, lse, ref_out, ref_lse = run_prefill(paged, q, indptr, causal, 0.15)
    assert_close(out, ref_out)
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "window, soft_cap, causal", [(6, None, True), (None, 4.0, True), (9, 2.0, False), (1, None, True)]
)
def test_prefill_window_soft_cap(dtype, window, soft_cap, causal):
    paged, q, indptr = prefill_inputs([(4, 30), (70, 70), (2, 2)], 5, (4, 1), 64, dtype)
    out, lse, ref_out, ref_lse = run_prefill(paged, q, indptr, causal, None, window, soft_cap)
    assert_close(out, ref_out)
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("head_dim, dtype", [(128, torch.bfloat16), (128, torch.float16), (256, torch.float32)])
def test_prefill_head_dims(head_dim, dtype):
    paged, q, indptr = prefill_inputs([(3, 19), (17, 17)], 16, (6, 2), head_dim, dtype)
    out, lse, ref_out, ref_lse = run_prefill(paged, q, indptr, True, None)
    assert_close(out, ref_out)
    assert_lse_close(lse, ref_lse)


def test_prefill_reads_q_from_a_fused_qkv_row():
    # q as the model gets it: the first heads of each token's [q + k + v] row, read in place.
    paged, _, indptr = prefill_inputs(PREFILL_SEQS, 16, (8, 2), 64, torch.float32)
    rows = randn(int(indptr[-1]), 8 * 64 + 2 * 2 * 64, dtype=torch.float32)
    q = rows[:, : 8 * 64].view(-1, 8, 64)
    out, lse, ref_out, ref_lse = run_prefill(paged, q, indptr, True, None)
    assert_close(out, ref_out)
    assert_lse_close(lse, ref_lse)


def test_prefill_of_one_token_equals_decode():
    paged, q, indptr = prefill_inputs([(1, 9), (1, 33), (1, 1)], 16, (4, 2), 64, torch.float32)
    with kernels.backend("triton"):
        p_out, p_lse = kernels.paged_prefill_attention(
            q, paged.k_cache, paged.v_cache, paged.page_table, indptr, paged.lens(), return_lse=True)
        d_out, d_lse = kernels.paged_decode_attention(
            q, paged.k_cache, paged.v_cache, paged.page_table, paged.lens(), return_lse=True)
    assert_close(p_out, d_out, "prefill vs decode")
    assert_lse_close(p_lse, d_lse, "prefill vs decode lse")


def test_prefill_merge_prefix_and_new_tokens():
    # Non-causal attention over a cached prefix merged with causal attention over the new tokens
    # equals causal attention over both (prefix of 16 = one page).
    dtype = torch.float32
    paged, q, indptr = prefill_inputs([(5, 21), (9, 25)], 16, (2, 2), 64, dtype, share=False)
    prefix = paged.lens([16, 16])
    new_table = paged.page_table[:, 1:].contiguous()
    new = paged.lens([5, 9])
    with kernels.backend("triton"):
        full, full_lse = kernels.paged_prefill_attention(
            q, paged.k_cache, paged.v_cache, paged.page_table, indptr, paged.lens(), return_lse=True)
        # The prefix part: every new token sits past the prefix and attends all of it.
        a, lse_a = _prefix_part(q, paged, indptr, prefix)
        b, lse_b = kernels.paged_prefill_attention(
            q, paged.k_cache, paged.v_cache, new_table, indptr, new, True, return_lse=True)
        merged, merged_lse = kernels.merge_attention_states(a, lse_a, b, lse_b)
    assert_close(merged, full, "merged")
    assert_lse_close(merged_lse, full_lse, "merged lse")


def _prefix_part(q, paged, indptr, prefix):
    # kv_lens must cover the query count, so attend the prefix one query at a time (decode-style).
    outs, lses = [], []
    bounds = indptr.tolist()
    for i in range(len(bounds) - 1):
        for t in range(bounds[i], bounds[i + 1]):
            o, s = kernels.paged_decode_attention(
                q[t : t + 1].contiguous(), paged.k_cache, paged.v_cache, paged.page_table[i : i + 1].contiguous(),
                prefix[i : i + 1].contiguous(), return_lse=True)
            outs.append(o)
            lses.append(s)
    return torch.cat(outs), torch.cat(lses)


# ------------------------------------------------------------------------------ bad indices on GPU


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bad_pages_and_lengths_give_nan(dtype):
    # The public functions raise on CPU index tensors; the GPU contract (NaN, no out-of-bounds read)
    # is the backend's, so call it directly.
    lengths = [20, 20, 20, 20, 20]
    paged = Paged(lengths, 16, 2, 64, dtype, share=False)
    table = paged.page_table.clone()
    table[1, 1] = paged.num_pages  # past the end
    table[2, 0] = -1
    lens = paged.lens([20, 20, 20, 0, 16 * table.shape[1] + 1])
    q = randn(5, 4, 64, dtype=dtype)
    args = (q, paged.k_cache, paged.v_cache, table, lens, 0.125, -1, 0.0)
    out, lse = triton_impl("paged_decode_attention")(*args)
    ref_out, ref_lse = reference.paged_decode_attention(q[:1], paged.k_cache, paged.v_cache, table[:1], lens[:1],
                                                        0.125, -1, 0.0)
    assert_close(out[:1], ref_out)
    assert_lse_close(lse[:1], ref_lse)
    assert out[1:].isnan().all() and lse[1:].isnan().all()

    # Prefill: the same, plus a kv_len below the query count.
    indptr = torch.tensor([0, 2, 4, 6, 8, 10, 12], dtype=torch.int32, device=DEVICE)
    table = torch.cat((table, paged.page_table[:1]))
    lens = torch.cat((lens, paged.lens([1])))
    qp = randn(12, 4, 64, dtype=dtype)
    out, lse = triton_impl("paged_prefill_attention")(
        qp, paged.k_cache, paged.v_cache, table, indptr, lens, 0.125, True, -1, 0.0)
    ref_out, ref_lse = reference.paged_prefill_attention(
        qp[:2], paged.k_cache, paged.v_cache, table[:1], indptr[:2], lens[:1], 0.125, True, -1, 0.0)
    assert_close(out[:2], ref_out)
    assert_lse_close(lse[:2], ref_lse)
    assert out[2:].isnan().all() and lse[2:].isnan().all()


# ------------------------------------------------------------------------------------------- store


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page_size", [1, 16])
def test_store_kv_cache(dtype, page_size):
    tokens, kv_heads, head_dim, num_pages = 9, 2, 64, 5 if page_size > 1 else 12
    # k and v: views of a fused qkv row (token stride wider than the row), the gaps NaN.
    width = 4 * kv_heads * head_dim + 8
    qkv = torch.full((tokens, width), NAN, dtype=dtype, device=DEVICE)
    qkv[:, : 3 * kv_heads * head_dim] = randn(tokens, 3 * kv_heads * head_dim, dtype=dtype)
    k = qkv[:, kv_heads * head_dim : 2 * kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, 2 * kv_heads * head_dim : 3 * kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    slots = torch.randperm(num_pages * page_size)[:tokens]
    slots[[2, 5]] = -1
    slot_mapping = slots.to(DEVICE)
    k_cache = randn(num_pages, page_size, kv_heads, head_dim, dtype=dtype)
    v_cache = randn(num_pages, page_size, kv_heads, head_dim, dtype=dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.store_kv_cache(k, v, k_ref, v_ref, slot_mapping)
    with kernels.backend("triton"):
        assert kernels.store_kv_cache(k, v, k_cache, v_cache, slot_mapping) is None
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_store_kv_cache_out_of_range_slots_skip():
    k = randn(4, 1, 64, dtype=torch.bfloat16)
    v = randn(4, 1, 64, dtype=torch.bfloat16)
    k_cache = randn(2, 3, 1, 64, dtype=torch.bfloat16)
    v_cache = randn(2, 3, 1, 64, dtype=torch.bfloat16)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    slot_mapping = torch.tensor([6, -2, 4, 1 << 40], device=DEVICE)
    triton_impl("store_kv_cache")(k, v, k_cache, v_cache, slot_mapping)
    before_k.view(6, 1, 64)[4] = k[2]
    before_v.view(6, 1, 64)[4] = v[2]
    assert torch.equal(k_cache, before_k) and torch.equal(v_cache, before_v)


# ------------------------------------------------------------------------------------------- merge


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 100])
def test_merge_attention_states(dtype, head_dim):
    tokens, heads = 7, 3
    v_a, v_b = randn(tokens, heads, head_dim, dtype=dtype), randn(tokens, heads, head_dim, dtype=dtype)
    lse_a = 3 * torch.randn(tokens, heads, device=DEVICE)
    lse_b = 3 * torch.randn(tokens, heads, device=DEVICE)
    lse_a[0, 0] = float("-inf")  # a empty
    lse_b[1, 1] = float("-inf")  # b empty
    lse_a[2, 2] = lse_b[2, 2] = float("-inf")  # both empty: v 0, lse -inf
    with kernels.backend("triton"):
        v, lse = kernels.merge_attention_states(v_a, lse_a, v_b, lse_b)
    ref_v, ref_lse = reference.merge_attention_states(v_a, lse_a, v_b, lse_b)
    assert_close(v, ref_v, tol=1e-5 if dtype == torch.float32 else 5e-3)
    assert_lse_close(lse, ref_lse)
    assert (v[2, 2] == 0).all() and lse[2, 2] == float("-inf")
    assert torch.equal(v[0, 0], v_b[0, 0]) and torch.equal(v[1, 1], v_a[1, 1])


def test_empty_inputs():
    paged = Paged([3], 4, 1, 64, torch.float32)
    q = randn(0, 2, 64, dtype=torch.float32)
    indptr = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    with kernels.backend("triton"):
        out, lse = kernels.paged_prefill_attention(
            q, paged.k_cache, paged.v_cache, paged.page_table, indptr, paged.lens(), return_lse=True)
        assert out.shape == (0, 2, 64) and lse.shape == (0, 2)
        v, lse = kernels.merge_attention_states(q, lse, q, lse)
        assert v.shape == (0, 2, 64)
