"""The Triton backend against the float32 references, through the public ``kernels.*`` functions.

Without a GPU the kernels run on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``,
set by tests/conftest.py before kernels is imported); on a CUDA machine without it they run on the
GPU. Outputs are poisoned with NaN and inputs are views of wider tensors with NaN in the gaps, so an
unwritten element or a read outside the view fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.triton.device import DEVICE  # noqa: E402  (skips this module when Triton cannot run)

import kernels  # noqa: E402
from kernels import reference, registry  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOKENS = [0, 1, 7, 33]
NORM_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
MANTISSA_BITS = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
# Elementwise: fp32 within 64 ulps; fp16/bf16 within 1 ulp (one rounding each side, and the
# interpreter truncates fp32 -> bf16 where torch rounds to nearest).
ULPS = {torch.float32: 64, torch.float16: 1, torch.bfloat16: 1}
NAN = float("nan")

# The interpreter evaluates sigmoid's exp(-x) in numpy, which warns when it overflows to inf (the
# result, 0 or 1, is still right).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    from kernels.triton import _util

    def poisoned(shape, like):
        return torch.full(shape, NAN, dtype=like.dtype, device=like.device)

    monkeypatch.setattr(_util, "new_empty", poisoned)


def triton_impl(op: str):
    return next(i for i in registry.implementations(op) if i.backend == "triton").fn


def assert_close(out: torch.Tensor, ref: torch.Tensor, what: str = "output") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != {ref.dtype}"
    if out.numel() == 0:
        return
    dtype = out.dtype
    o, r = out.double().cpu(), ref.double().cpu()
    assert not o.isnan().any(), f"{what}: {int(o.isnan().sum())} NaN elements (unwritten, or read a poisoned gap)"
    rel = ((o - r).norm() / r.norm().clamp_min(1e-30)).item()
    assert rel <= NORM_TOL[dtype], f"{what}: relative norm error {rel:.3e} > {NORM_TOL[dtype]:.0e}"
    _, exponent = torch.frexp(torch.maximum(o.abs(), r.abs()))
    ulp = torch.exp2((exponent - 1 - MANTISSA_BITS[dtype]).double())
    bound = torch.clamp_min(ULPS[dtype] * ulp, 1e-6 * r.abs().max().item())
    bad = (o - r).abs() > bound
    if bad.any():
        idx = tuple(i.item() for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} elements off, first at {idx}: {o[idx].item()} vs {r[idx].item()}"
        )


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), f"{what} was modified"


def randn(*shape, dtype) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float32, device=DEVICE).to(dtype)


# ---------------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", [64, 100])
def test_rms_norm(dtype, tokens, hidden):
    # x is a view of a wider tensor whose extra columns hold NaN: reading past hidden fails.
    wide = torch.full((tokens, hidden + 24), NAN, dtype=dtype, device=DEVICE)
    wide[:, :hidden] = randn(tokens, hidden, dtype=dtype)
    x = wide[:, :hidden]
    weight = randn(hidden, dtype=dtype)
    before = wide.clone()
    with kernels.backend("triton"):
        out = kernels.rms_norm(x, weight, 1e-6)
    assert out.is_contiguous()
    assert_close(out, reference.rms_norm(x, weight, 1e-6))
    assert_same_bits(wide, before, "x")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", [64, 100])
def test_fused_add_rms_norm(dtype, tokens, hidden):
    x, residual = randn(tokens, hidden, dtype=dtype), randn(tokens, hidden, dtype=dtype)
    weight = randn(hidden, dtype=dtype)
    x_ref, residual_ref = x.clone(), residual.clone()
    reference.fused_add_rms_norm_(x_ref, residual_ref, weight, 1e-5)
    with kernels.backend("triton"):
        assert kernels.fused_add_rms_norm_(x, residual, weight, 1e-5) is None
    assert_close(residual, residual_ref, "residual")
    assert_close(x, x_ref, "x")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [4099, 16500])  # one masked block; the chunked path (> 16384)
def test_norms_large_hidden(dtype, hidden):
    x, residual = randn(3, hidden, dtype=dtype), randn(3, hidden, dtype=dtype)
    weight = randn(hidden, dtype=dtype)
    with kernels.backend("triton"):
        out = kernels.rms_norm(x, weight, 1e-6)
    assert_close(out, reference.rms_norm(x, weight, 1e-6), "rms_norm")
    x_ref, residual_ref = x.clone(), residual.clone()
    reference.fused_add_rms_norm_(x_ref, residual_ref, weight, 1e-6)
    with kernels.backend("triton"):
        kernels.fused_add_rms_norm_(x, residual, weight, 1e-6)
    assert_close(residual, residual_ref, "residual")
    assert_close(x, x_ref, "x")


# -------------------------------------------------------------------------------------- activations

ACTIVATIONS = {
    "silu": (lambda x: kernels.silu_and_mul(x), reference.silu_and_mul),
    "gelu": (lambda x: kernels.gelu_and_mul(x), lambda x: reference.gelu_and_mul(x, "none")),
    "gelu_tanh": (lambda x: kernels.gelu_and_mul(x, "tanh"), lambda x: reference.gelu_and_mul(x, "tanh")),
}


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("d", [64, 100])
def test_gated_activation(act, dtype, tokens, d):
    fn, ref_fn = ACTIVATIONS[act]
    x = 3 * randn(tokens, 2 * d, dtype=dtype)
    before = x.clone()
    with kernels.backend("triton"):
        out = fn(x)
    assert_close(out, ref_fn(x))
    assert_same_bits(x, before, "x")


def test_gated_activation_wide():
    x = randn(2, 2 * 4099, dtype=torch.bfloat16)  # several column blocks, the last one masked
    with kernels.backend("triton"):
        out = kernels.silu_and_mul(x)
    assert_close(out, reference.silu_and_mul(x))


# --------------------------------------------------------------------------------------------- rope


def cos_sin_cache(max_position: int, rotary_dim: int, dtype: torch.dtype) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    angles = torch.arange(max_position, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype).to(DEVICE)


def qkv_views(tokens, q_heads, kv_heads, head_dim, dtype, pad=8):
    """q and k as views of one fused qkv row per token (plus a pad), v and pad poisoned with NaN."""
    width = (q_heads + 2 * kv_heads) * head_dim
    qkv = torch.full((tokens, width + pad), NAN, dtype=dtype, device=DEVICE)
    qkv[:, : (q_heads + kv_heads) * head_dim] = randn(tokens, (q_heads + kv_heads) * head_dim, dtype=dtype)
    q = qkv[:, : q_heads * head_dim].view(tokens, q_heads, head_dim)
    k = qkv[:, q_heads * head_dim : (q_heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    return qkv, q, k


ROPE_SHAPES = {
    # (q heads, kv heads, head_dim, rotary_dim)
    "full": (4, 2, 64, 64),
    "partial": (3, 1, 96, 32),
    "odd_half": (2, 2, 80, 40),  # rotary_dim / 2 = 20: a masked half block
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("shape", list(ROPE_SHAPES))
@pytest.mark.parametrize("cache_dtype", ["fp32", "same"])
def test_rotary_embedding(dtype, tokens, is_neox, shape, cache_dtype):
    q_heads, kv_heads, head_dim, rotary_dim = ROPE_SHAPES[shape]
    max_position = 64
    cache = cos_sin_cache(max_position, rotary_dim, torch.float32 if cache_dtype == "fp32" else dtype)
    positions = torch.randint(0, max_position, (tokens,), device=DEVICE)
    qkv, q, k = qkv_views(tokens, q_heads, kv_heads, head_dim, dtype)
    qkv_ref = qkv.clone()
    q_ref, k_ref = q.clone(), k.clone()
    reference.rotary_embedding_(positions, q_ref, k_ref, cache, is_neox)
    with kernels.backend("triton"):
        assert kernels.rotary_embedding_(positions, q, k, cache, is_neox) is None
    assert_close(q, q_ref, "q")
    assert_close(k, k_ref, "k")
    end = (q_heads + kv_heads) * head_dim
    assert_same_bits(qkv[:, end:], qkv_ref[:, end:], "v or the row pad")


@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_embedding_position_out_of_range(is_neox, dtype):
    # The public API raises on CPU positions before dispatch; the GPU contract (NaN, no
    # out-of-bounds read) is the backend's, so call it directly.
    q_heads, kv_heads, head_dim, rotary_dim = ROPE_SHAPES["partial"]
    max_position = 16
    cache = cos_sin_cache(max_position, rotary_dim, torch.float32)
    # A strided view: the positions tensor's layout is left open by the op.
    positions = torch.tensor([3, 0, -1, 0, max_position, 0, 15, 0, 1 << 40, 0], device=DEVICE)[::2]
    qkv, q, k = qkv_views(len(positions), q_heads, kv_heads, head_dim, dtype)
    qkv_ref = qkv.clone()
    good = torch.tensor([0, 3], device=DEVICE)
    q_ref, k_ref = q[good].clone(), k[good].clone()
    reference.rotary_embedding_(positions[good], q_ref, k_ref, cache, is_neox)
    triton_impl("rotary_embedding_")(positions, q, k, cache, is_neox)
    for bad in (1, 2, 4):
        assert q[bad].isnan().all() and k[bad].isnan().all(), f"token {bad}: q and k must be all NaN"
    assert_close(q[good], q_ref, "q (valid tokens)")
    assert_close(k[good], k_ref, "k (valid tokens)")
    end = (q_heads + kv_heads) * head_dim
    assert_same_bits(qkv[:, end:], qkv_ref[:, end:], "v or the row pad")


def test_zero_tokens_return_empty():
    x = torch.empty(0, 100, dtype=torch.float16, device=DEVICE)
    with kernels.backend("triton"):
        assert kernels.rms_norm(x, torch.ones(100, dtype=torch.float16, device=DEVICE)).shape == (0, 100)
        assert kernels.silu_and_mul(x).shape == (0, 50)
        assert kernels.gelu_and_mul(x, "tanh").shape == (0, 50)
    assert math.prod(x.shape) == 0
