import math

import pytest
import torch

import kernels
from kernels import reference
from tests.helpers import assert_close
from tests.ops.test_attention import make_page_table
from tests.ops.test_rope import cos_sin_cache

# (lengths, page_size, heads, kv_heads, head_dim, rotary_dim)
CASES = [
    ([1], 16, 8, 8, 64, 64),
    ([15, 16, 17], 16, 9, 3, 64, 64),
    ([1, 63, 64, 65, 300], 64, 32, 8, 128, 128),
    ([7, 1, 9], 1, 4, 1, 64, 32),
    ([1000, 5, 77], 16, 12, 3, 128, 64),
    ([33, 260], 256, 8, 1, 256, 256),  # head_dim 256: the two ops in turn on CUDA too
    ([40, 2], 16, 4, 2, 128, 96),  # partial rotary
    ([9, 30], 16, 4, 2, 64, 34),  # neox 34 (pairs split across words): the two ops; GPT-J 34 runs in the kernel
]
GPU_CASES = [
    ([20000], 16, 32, 8, 128, 128),  # one long sequence: KV splits, the new token in the last one
    ([4096] * 3 + [1, 17], 16, 32, 8, 128, 128),
    ([129 + i for i in range(64)], 16, 32, 8, 128, 128),  # the engine's decode batch
    ([500, 3], 16, 64, 4, 64, 64),  # a group of 16 query heads: two CTAs per KV head
]


def _case(lengths, page_size, heads, kv_heads, head_dim, rotary_dim, dtype, device, cache_dtype=torch.float32):
    """One new token per sequence as a fused qkv row gives it, and the slots of those tokens."""
    num_pages = sum(math.ceil(n / page_size) for n in lengths) + 2
    page_table = make_page_table(lengths, page_size, num_pages, device, share=False)
    k_cache = torch.randn(num_pages, page_size, kv_heads, head_dim, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    batch = len(lengths)
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * head_dim, dtype=dtype, device=device)
    q = qkv[:, : heads * head_dim].view(batch, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(batch, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim :].view(batch, kv_heads, head_dim)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    last = seq_lens.long() - 1
    slots = page_table.long().gather(1, (last // page_size)[:, None])[:, 0] * page_size + last % page_size
    positions = last + 3  # positions need not equal the cache index
    cache = cos_sin_cache(max(lengths) + 8, rotary_dim, cache_dtype, device)
    return [positions, q, k, v, cache, k_cache, v_cache, slots, page_table, seq_lens]


def _check(args, backend, dtype, is_neox=True, **options):
    """The op on ``backend`` against the float32 reference on copies of the caches: out, lse, the
    caches, and q / k left as they were."""
    ref_args = [a.clone() for a in args]
    before = [args[1].clone(), args[2].clone()]
    scale = 1 / math.sqrt(args[1].shape[2])
    window = options.get("sliding_window") or -1
    soft_cap = options.get("soft_cap") or 0.0
    ref_out, ref_lse = reference.paged_decode_attention_with_rope_(*ref_args, scale, window, soft_cap, is_neox)
    with kernels.backend(backend):
        out, lse = kernels.paged_decode_attention_with_rope_(*args, is_neox=is_neox, return_lse=True, **options)
    assert torch.equal(args[1], before[0]) and torch.equal(args[2], before[1]), "q or k was written"
    assert_close(out, ref_out, dtype, "out")
    assert torch.allclose(lse, ref_lse, atol=2e-3, rtol=1e-3), "lse"
    assert_close(args[5], ref_args[5], dtype, "k_cache")
    assert torch.equal(args[6], ref_args[6]), "v_cache"
    return out, lse


def _backends(device):
    # Native: CUDA's one kernel, the CPU's two kernels in one call; the torch backend runs the two
    # ops in turn anywhere.
    return ["native", "torch"]


def _devices():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"L{'-'.join(map(str, c[0]))}_p{c[1]}_h{c[2]}x{c[3]}_d{c[4]}_r{c[5]}")
@pytest.mark.parametrize("is_neox", [True, False])
def test_matches_reference(device, case, is_neox):
    dtypes = [torch.float32, torch.bfloat16] if device == "cpu" else [torch.bfloat16, torch.float16]
    for dtype in dtypes:
        for backend in _backends(device):
            if backend == "native" and device == "cuda" and (case[4] == 256 or (is_neox and case[5] % 4)):
                with pytest.raises(kernels.BackendUnavailableError):
                    _check(_case(*case, dtype, device), backend, dtype, is_neox)
                continue
            _check(_case(*case, dtype, device), backend, dtype, is_neox)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"b{len(c[0])}_max{max(c[0])}_h{c[2]}x{c[3]}_d{c[4]}")
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("is_neox", [True, False])
def test_many_tiles_and_splits_on_gpu(case, cache_dtype, is_neox):
    _check(_case(*case, torch.bfloat16, "cuda", cache_dtype), "native", torch.bfloat16, is_neox)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("options", [{"sliding_window": 30}, {"soft_cap": 20.0}])
def test_window_and_soft_cap(device, options):
    dtype = torch.bfloat16
    for backend in _backends(device):
        _check(_case([100, 31, 2], 16, 8, 2, 128, 128, dtype, device), backend, dtype, **options)


@pytest.mark.parametrize("device", _devices())
def test_negative_slot_stores_nothing_and_bad_slot_gives_nan(device):
    dtype = torch.bfloat16
    for backend in _backends(device):
        args = _case([50, 17, 3], 16, 8, 2, 64, 64, dtype, device)
        args[7][0] = -1  # padding: nothing stored, the cache read as it is
        args[7][1] += 1  # not the slot of sequence 1's new token
        k_before, v_before = args[5].clone(), args[6].clone()
        with kernels.backend(backend):
            out, lse = kernels.paged_decode_attention_with_rope_(*args, return_lse=True)
        assert torch.isnan(out[1]).all() and torch.isnan(lse[1]).all(), backend
        assert not torch.isnan(out[[0, 2]]).any(), backend
        stored = (args[5] != k_before).any(-1).any(-1).nonzero().tolist()
        last = args[9].long() - 1
        page_of_seq2 = int(args[8][2, int(last[2]) // 16])
        assert stored == [[page_of_seq2, int(last[2]) % 16]], (backend, stored)
        assert (args[6] != v_before).any(-1).any(-1).nonzero().tolist() == stored, backend


@pytest.mark.gpu
def test_in_a_cuda_graph():
    dtype = torch.bfloat16
    args = _case([129 + 3 * i for i in range(16)], 16, 32, 8, 128, 128, dtype, "cuda")
    ref_args = [a.clone() for a in args]
    ref_out, _ = reference.paged_decode_attention_with_rope_(*ref_args, 1 / math.sqrt(128), -1, 0.0, True)
    kernels.paged_decode_attention_with_rope_(*[a.clone() for a in args])  # warm-up: lazy set-up is not captured
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.paged_decode_attention_with_rope_(*args)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, ref_out, dtype, "out")
    assert_close(args[5], ref_args[5], dtype, "k_cache")


def test_bad_input_raises_naming_the_argument():
    args = _case([5, 9], 16, 4, 2, 64, 64, torch.float32, "cpu")
    bad = {
        "positions": (0, args[0].int(), TypeError),
        "slot_mapping": (7, args[7][:1], ValueError),
        "seq_lens": (9, args[9].long(), TypeError),
        "v": (3, args[3][:, :1], ValueError),
        "cos_sin_cache": (4, args[4][:, :63], ValueError),
    }
    for name, (index, value, error) in bad.items():
        call = list(args)
        call[index] = value
        with pytest.raises(error, match=name):
            kernels.paged_decode_attention_with_rope_(*call)
