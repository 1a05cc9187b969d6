import pytest
import torch

import kernels
from kernels import reference
from tests.helpers import DTYPES, assert_close, device_backend_params

# (q heads, kv heads, head_dim, rotary_dim): Llama-3-8B, SmolLM2-135M, partial rotary (GPT-J/NeoX style)
HEADS = [(32, 8, 128, 128), (9, 3, 64, 64), (4, 2, 128, 64), (2, 1, 80, 32)]


def cos_sin_cache(max_position, rotary_dim, dtype, device, base=10000.0):
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    angles = torch.arange(max_position, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype).to(device)


def _qkv(tokens, hq, hk, head_dim, dtype, device):
    """q and k as views of one fused projection output, as a model produces them."""
    qkv = torch.randn(tokens, (hq + 2 * hk) * head_dim, dtype=dtype, device=device)
    q = qkv[:, : hq * head_dim].view(tokens, hq, head_dim)
    k = qkv[:, hq * head_dim : (hq + hk) * head_dim].view(tokens, hk, head_dim)
    return qkv, q, k


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("cache_fp32", [True, False])
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: "x".join(map(str, h)))
@pytest.mark.parametrize("tokens", [0, 1, 7, 4096])
def test_rotary_embedding(device, backend, cache_fp32, is_neox, dtype, heads, tokens):
    hq, hk, head_dim, rotary_dim = heads
    max_position = 8192
    cache = cos_sin_cache(max_position, rotary_dim, torch.float32 if cache_fp32 else dtype, device)
    positions = torch.randint(0, max_position, (tokens,), device=device)
    qkv, q, k = _qkv(tokens, hq, hk, head_dim, dtype, device)
    ref_q, ref_k = q.clone(), k.clone()
    reference.rotary_embedding_(positions, ref_q, ref_k, cache, is_neox)
    v_before = qkv[:, (hq + hk) * head_dim :].clone()
    with kernels.backend(backend):
        assert kernels.rotary_embedding_(positions, q, k, cache, is_neox) is None
    assert_close(q, ref_q, dtype, "q")
    assert_close(k, ref_k, dtype, "k")
    assert torch.equal(qkv[:, (hq + hk) * head_dim :], v_before), "rotary_embedding_ wrote outside q and k"


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_contiguous_q_k(device, backend):
    q = torch.randn(5, 4, 64, device=device)
    k = torch.randn(5, 1, 64, device=device)
    cache = cos_sin_cache(16, 64, torch.float32, device)
    positions = torch.tensor([0, 15, 3, 3, 7], device=device)
    ref_q, ref_k = q.clone(), k.clone()
    reference.rotary_embedding_(positions, ref_q, ref_k, cache, True)
    with kernels.backend(backend):
        kernels.rotary_embedding_(positions, q, k, cache, True)
    assert_close(q, ref_q, torch.float32, "q")
    assert_close(k, ref_k, torch.float32, "k")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_out_of_range_position_gives_nan_on_gpu(backend):
    # A GPU kernel cannot raise without a host sync; it must not read past the cache either.
    q = torch.randn(3, 2, 64, device="cuda")
    k = torch.randn(3, 1, 64, device="cuda")
    cache = cos_sin_cache(16, 64, torch.float32, "cuda")
    positions = torch.tensor([1, 16, 2], device="cuda")
    with kernels.backend(backend):
        kernels.rotary_embedding_(positions, q, k, cache, True)
    assert torch.isnan(q[1]).all() and torch.isnan(k[1]).all()
    assert not torch.isnan(q[[0, 2]]).any() and not torch.isnan(k[[0, 2]]).any()


def _fused_case(heads, dtype, device, tokens=37, page_size=16, num_pages=8):
    """positions, q, k, v (views of one qkv row), a cos/sin cache, random paged caches and a slot
    mapping with skipped (-1) tokens."""
    hq, hk, head_dim, rotary_dim = heads
    cache = cos_sin_cache(4096, rotary_dim, torch.float32, device)
    positions = torch.randint(0, 4096, (tokens,), device=device)
    qkv, q, k = _qkv(tokens, hq, hk, head_dim, dtype, device)
    v = qkv[:, (hq + hk) * head_dim :].view(tokens, hk, head_dim)
    k_cache = torch.randn(num_pages, page_size, hk, head_dim, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    slots = torch.randperm(num_pages * page_size)[:tokens]
    slots[::5] = -1
    return positions, q, k, v, cache, k_cache, v_cache, slots.to(device)


@pytest.mark.parametrize("device,backend", [*device_backend_params(), ("cpu", "torch")])
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [h for h in HEADS if h[2] in (64, 128, 256)], ids=lambda h: "x".join(map(str, h)))
def test_rotary_embedding_and_store_kv(device, backend, is_neox, dtype, heads):
    if backend == "torch" and dtype != torch.float32:
        pytest.skip("the torch composite rotates in the half-precision dtype, as model code does")
    positions, q, k, v, cache, k_cache, v_cache, slots = _fused_case(heads, dtype, device)
    ref_q, ref_k, ref_kc, ref_vc = q.clone(), k.clone(), k_cache.clone(), v_cache.clone()
    reference.rotary_embedding_(positions, ref_q, ref_k, cache, is_neox)
    reference.store_kv_cache(ref_k, v, ref_kc, ref_vc, slots)
    with kernels.backend(backend):
        kernels.rotary_embedding_and_store_kv_(positions, q, k, v, cache, k_cache, v_cache, slots, is_neox)
    assert_close(q, ref_q, dtype, "q")
    assert_close(k, ref_k, dtype, "k")
    assert_close(k_cache, ref_kc, dtype, "k_cache")
    assert torch.equal(v_cache, ref_vc), "v_cache"


def test_rotary_embedding_and_store_kv_bad_input_raises_before_writing():
    case = _fused_case((4, 2, 64, 64), torch.float32, "cpu")
    positions, q, k, v, cache, k_cache, v_cache, slots = case
    before = [t.clone() for t in (q, k, k_cache, v_cache)]
    bad = {
        "v": (3, torch.randn(q.shape[0], 1, 64), ValueError),
        "k_cache": (5, k_cache.half(), TypeError),
        "slot_mapping": (7, slots.int(), TypeError),
    }
    for name, (index, value, error) in bad.items():
        args = list(case)
        args[index] = value
        with pytest.raises(error, match=name):
            kernels.rotary_embedding_and_store_kv_(*args)
    for t, b in zip((q, k, k_cache, v_cache), before):
        assert torch.equal(t, b)
