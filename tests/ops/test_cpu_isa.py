"""Every CPU ISA variant of the native library (the op takes the best one the CPU has, capped by
KERNELS_CPU_ISA, read at each call) against the reference, on a small grid per variant."""

import pytest
import torch

import kernels
from kernels import platform, reference
from tests.helpers import DTYPES, assert_close
from tests.ops.test_rope import cos_sin_cache


def _isas():
    have = set(platform.cpu_isa())
    isas = ["scalar"]
    if {"avx2", "fma", "f16c"} <= have:
        isas.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl"} <= have:
        isas.append("avx512")
    return isas


@pytest.fixture(params=_isas())
def isa(request, monkeypatch):
    monkeypatch.setenv("KERNELS_CPU_ISA", request.param)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 64), (7, 4099), (33, 200), (5, 8192)])
def test_norms_and_activations(isa, dtype, tokens, hidden):
    x = torch.randn(tokens, hidden, dtype=dtype)
    w = torch.randn(hidden, dtype=dtype)
    with kernels.backend("native"):
        assert_close(kernels.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6), dtype)
        assert_close(kernels.silu_and_mul(x[:, : hidden // 2 * 2].contiguous()), reference.silu_and_mul(x[:, : hidden // 2 * 2]), dtype)
        for approximate in ("none", "tanh"):
            got = kernels.gelu_and_mul(x[:, : hidden // 2 * 2].contiguous(), approximate)
            assert_close(got, reference.gelu_and_mul(x[:, : hidden // 2 * 2], approximate), dtype)
        res = torch.randn_like(x)
        ref_x, ref_res = x.clone(), res.clone()
        reference.fused_add_rms_norm_(ref_x, ref_res, w, 1e-6)
        kernels.fused_add_rms_norm_(x, res, w, 1e-6)
        assert_close(res, ref_res, dtype, "residual")
        assert_close(x, ref_x, dtype, "x")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("heads", [(4, 2, 128, 128), (3, 1, 80, 32)])
def test_rope(isa, dtype, is_neox, heads):
    hq, hk, d, r = heads
    qkv = torch.randn(9, (hq + 2 * hk) * d, dtype=dtype)
    q = qkv[:, : hq * d].view(9, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(9, hk, d)
    cache = cos_sin_cache(64, r, torch.float32, "cpu")
    positions = torch.randint(0, 64, (9,))
    ref_q, ref_k = q.clone(), k.clone()
    reference.rotary_embedding_(positions, ref_q, ref_k, cache, is_neox)
    with kernels.backend("native"):
        kernels.rotary_embedding_(positions, q, k, cache, is_neox)
    assert_close(q, ref_q, dtype, "q")
    assert_close(k, ref_k, dtype, "k")


def test_unknown_isa_name_is_an_error(monkeypatch):
    monkeypatch.setenv("KERNELS_CPU_ISA", "avx9000")
    with kernels.backend("native"), pytest.raises(RuntimeError, match="KERNELS_CPU_ISA"):
        kernels.rms_norm(torch.randn(2, 64), torch.randn(64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sym", "zp", "min"])
@pytest.mark.parametrize("m,n,k,group", [(1, 72, 96, 32), (3, 64, 576, 64), (5, 130, 256, 128)])
def test_w4a16_gemm(isa, dtype, mode, m, n, k, group):
    from tests.ops.test_quant import random_weight

    w = random_weight(n, k, group, mode)
    a = torch.randn(m, k, dtype=dtype)
    with kernels.backend("native"):
        got = kernels.w4a16_gemm(a, w.qweight, w.scales, zero_points=w.zero_points, mins=w.mins, group_size=group)
    want = reference.w4a16_gemm(a, w.qweight, w.scales, w.zero_points, w.mins, group)
    assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k,group", [(1, 72, 96, 32), (2, 64, 576, 64), (5, 130, 256, 128)])
def test_w8a16_gemm(isa, dtype, m, n, k, group):
    from tests.ops.test_quant_int8 import random_weight

    w = random_weight(n, k, group)
    a = torch.randn(m, k, dtype=dtype)
    with kernels.backend("native"):
        got = kernels.w8a16_gemm(a, w.qweight, w.scales, group_size=group)
    assert_close(got, reference.w8a16_gemm(a, w.qweight, w.scales, group), dtype)
