import pytest
import torch

import kernels
from kernels.serve.memory import KVPool, OutOfPagesError, PageAllocator
from kernels.serve.memory.kv_pool import CPU_DEFAULT_TOKENS


def test_allocator_hands_out_each_page_once_and_takes_them_back():
    alloc = PageAllocator(10)
    a = alloc.alloc(4)
    b = alloc.alloc(6)
    assert sorted(a + b) == list(range(10)) and alloc.num_free == 0
    with pytest.raises(OutOfPagesError):
        alloc.alloc(1)
    alloc.free(a)
    assert alloc.num_free == 4
    assert sorted(alloc.alloc(4)) == sorted(a)
    assert alloc.alloc(0) == []


def test_allocator_refuses_a_request_it_cannot_meet_without_taking_any():
    alloc = PageAllocator(5)
    alloc.alloc(3)
    with pytest.raises(OutOfPagesError, match="asked for 3 pages, 2 free"):
        alloc.alloc(3)
    assert alloc.num_free == 2


def test_allocator_rejects_double_free_and_unknown_pages_without_changing_anything():
    alloc = PageAllocator(4)
    pages = alloc.alloc(3)
    alloc.free(pages[:1])
    with pytest.raises(ValueError, match="double free"):
        alloc.free(pages[1:] + pages[:1])  # the last one is free already
    with pytest.raises(ValueError, match="double free"):
        alloc.free([pages[1], pages[1]])
    with pytest.raises(ValueError, match="does not exist"):
        alloc.free([4])
    assert alloc.num_free == 2  # none of the bad calls freed anything
    alloc.free(pages[1:])
    assert alloc.num_free == 4


@pytest.mark.parametrize("num_pages", [0, -1, 2.0, True])
def test_allocator_rejects_bad_sizes(num_pages):
    with pytest.raises(ValueError, match="num_pages"):
        PageAllocator(num_pages)


def test_pool_has_one_k_and_v_per_layer_in_the_attention_layout():
    pool = KVPool(num_layers=3, num_kv_heads=2, head_dim=64, page_size=16, num_pages=7, dtype=torch.float32, device="cpu")
    assert len(pool.kv_caches) == 3
    for k, v in pool.kv_caches:
        assert k.shape == v.shape == (7, 16, 2, 64) and k.dtype == torch.float32
        assert k.data_ptr() != v.data_ptr()
    assert pool.num_pages == pool.num_free_pages == 7 and pool.max_tokens == 112
    # The layout is the one the attention ops write: a token stored at page p, offset o lands there.
    k, v = pool.kv_caches[1]
    new = torch.randn(2, 2, 64)
    kernels.store_kv_cache(new, -new, k, v, torch.tensor([3 * 16 + 5, 6 * 16 + 15]))
    torch.testing.assert_close(k[3, 5], new[0])
    torch.testing.assert_close(v[6, 15], -new[1])


def test_pool_size_on_cpu_comes_from_max_total_tokens():
    args = (4, 2, 64, 16, torch.float32, "cpu")
    assert KVPool.num_pages_for(*args, max_total_tokens=1000) == 63  # rounded up to whole pages
    assert KVPool.num_pages_for(*args) == CPU_DEFAULT_TOKENS // 16
    with pytest.raises(ValueError, match="max_total_tokens"):
        KVPool.num_pages_for(*args, max_total_tokens=0)
    with pytest.raises(ValueError, match="memory_fraction"):
        KVPool.num_pages_for(*args, memory_fraction=1.5)
    assert KVPool.bytes_per_page(4, 2, 64, 16, torch.bfloat16) == 2 * 4 * 16 * 2 * 64 * 2


@pytest.mark.gpu
def test_pool_size_on_cuda_comes_from_free_memory():
    args = (32, 8, 128, 16, torch.bfloat16, "cuda")
    free, _ = torch.cuda.mem_get_info()
    pages = KVPool.num_pages_for(*args, memory_fraction=0.5)
    per_page = KVPool.bytes_per_page(*args[:5])
    assert pages == int(free * 0.5) // per_page
    assert KVPool.num_pages_for(*args, memory_fraction=0.5, max_total_tokens=160) == 10
