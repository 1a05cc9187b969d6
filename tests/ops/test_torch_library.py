"""The op contract's torch.library side: opcheck on every native op, and torch.compile over them."""

import pytest
import torch

import kernels
from kernels.native import library
from tests.helpers import DEVICES, assert_close


def test_native_library_is_built_and_loaded():
    # Without the library every native test below would be vacuous: fail loudly instead.
    assert library.load() is None, library.load()
    assert library.has_kernel("rms_norm", "CPU")


def _samples(device, dtype):
    t, h = 5, 96
    x = torch.randn(t, h, dtype=dtype, device=device)
    w = torch.randn(h, dtype=dtype, device=device)
    qkv = torch.randn(t, (4 + 2 * 2) * 64, dtype=dtype, device=device)
    q = qkv[:, : 4 * 64].view(t, 4, 64)
    k = qkv[:, 4 * 64 : 6 * 64].view(t, 2, 64)
    cache = torch.randn(32, 64, dtype=torch.float32, device=device)
    positions = torch.randint(0, 32, (t,), device=device)
    ops = torch.ops.kernels
    attention = dtype in (torch.float16, torch.bfloat16) or device == "cpu"  # fp32 attention is CPU-only
    k_cache = torch.randn(6, 16, 2, 64, dtype=dtype, device=device)
    v_cache = torch.randn(6, 16, 2, 64, dtype=dtype, device=device)
    table = torch.tensor([[3, 0], [5, 1]], dtype=torch.int32, device=device)
    lens = torch.tensor([20, 9], dtype=torch.int32, device=device)
    indptr = torch.tensor([0, 3, 5], dtype=torch.int32, device=device)
    qa = torch.randn(2, 4, 64, dtype=dtype, device=device)
    lse = torch.randn(2, 4, device=device)
    attention_samples = [
        (ops.store_kv_cache, (k_cache[0, :3].clone(), v_cache[0, :3].clone(), k_cache.clone(), v_cache.clone(),
                              torch.tensor([17, -1, 40], device=device))),
        (ops.paged_decode_attention, (qa, k_cache, v_cache, table, lens, 0.125, -1, 0.0)),
        (ops.paged_decode_attention, (qa, k_cache, v_cache, table, lens, 0.125, 8, 30.0)),
        (ops.merge_attention_states, (qa, lse, qa * 2, lse - 1)),
    ]
    q5 = torch.randn(5, 4, 64, dtype=dtype, device=device)
    attention_samples.append((ops.paged_prefill_attention, (q5, k_cache, v_cache, table, indptr, lens, 0.125, True, -1, 0.0)))
    return (attention_samples if attention else []) + [
        (ops.rms_norm, (x, w, 1e-6)),
        (ops.rms_norm, (torch.randn(0, h, dtype=dtype, device=device), w, 1e-6)),
        (ops.fused_add_rms_norm_, (x.clone(), x.clone() * 2, w, 1e-6)),
        (ops.rotary_embedding_, (positions, q, k, cache, True)),
        (ops.rotary_embedding_, (positions, q, k, cache, False)),
        (ops.silu_and_mul, (x,)),
        (ops.gelu_and_mul, (x, False)),
        (ops.gelu_and_mul, (x, True)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    for op, args in _samples(device, dtype):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_of_a_decoder_step(device):
    torch._dynamo.reset()

    def step(h, residual, w_norm, positions, qkv, cache, gate_up):
        kernels.fused_add_rms_norm_(h, residual, w_norm, 1e-6)
        q = qkv[:, :256].view(-1, 4, 64)
        k = qkv[:, 256:384].view(-1, 2, 64)
        kernels.rotary_embedding_(positions, q, k, cache, True)
        return kernels.rms_norm(h, w_norm, 1e-6) + kernels.silu_and_mul(gate_up)[:, :128], q.sum()

    t = 6
    args = (
        torch.randn(t, 128, device=device),
        torch.randn(t, 128, device=device),
        torch.randn(128, device=device),
        torch.randint(0, 32, (t,), device=device),
        torch.randn(t, 512, device=device),
        torch.randn(32, 64, device=device),
        torch.randn(t, 512, device=device),
    )
    eager_args = [a.clone() for a in args]
    expected = step(*eager_args)
    compiled = torch.compile(step, fullgraph=True)
    got = compiled(*args)
    for g, e in zip(got, expected):
        assert_close(g, e, torch.float32)
    for g, e in zip(args, eager_args):
        assert_close(g, e, torch.float32, "mutated input")
