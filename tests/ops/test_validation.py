"""Bad input raises ValueError/TypeError naming the argument, before any backend runs."""

import pytest
import torch

import kernels


def _norm_args():
    return torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)


def _rope_args():
    positions = torch.arange(4)
    q = torch.randn(4, 2, 64)
    k = torch.randn(4, 1, 64)
    cache = torch.randn(16, 64)
    return positions, q, k, cache


BF16 = torch.bfloat16
CASES = {
    # rms_norm
    "rms_norm x not a tensor": (lambda: kernels.rms_norm([[1.0]], torch.ones(1)), TypeError, "x"),
    "rms_norm x int dtype": (lambda: kernels.rms_norm(torch.ones(4, 64, dtype=torch.int32), torch.ones(64)), TypeError, "x"),
    "rms_norm x 3-D": (lambda: kernels.rms_norm(torch.randn(2, 4, 64), torch.randn(64)), ValueError, "x"),
    "rms_norm empty hidden": (lambda: kernels.rms_norm(torch.randn(4, 0), torch.randn(0)), ValueError, "hidden"),
    "rms_norm weight wrong size": (lambda: kernels.rms_norm(torch.randn(4, 64), torch.randn(63)), ValueError, "weight"),
    "rms_norm weight dtype": (lambda: kernels.rms_norm(torch.randn(4, 64, dtype=BF16), torch.randn(64)), TypeError, "weight"),
    "rms_norm weight on meta": (lambda: kernels.rms_norm(torch.randn(4, 64), torch.randn(64, device="meta")), ValueError, "weight"),
    "rms_norm weight 2-D": (lambda: kernels.rms_norm(torch.randn(4, 64), torch.randn(1, 64)), ValueError, "weight"),
    "rms_norm weight strided": (lambda: kernels.rms_norm(torch.randn(4, 64), torch.randn(128)[::2]), ValueError, "weight"),
    "rms_norm x transposed": (lambda: kernels.rms_norm(torch.randn(64, 4).t(), torch.randn(64)), ValueError, "x"),
    "rms_norm eps negative": (lambda: kernels.rms_norm(*_norm_args(), eps=-1.0), ValueError, "eps"),
    "rms_norm eps nan": (lambda: kernels.rms_norm(*_norm_args(), eps=float("nan")), ValueError, "eps"),
    "rms_norm eps string": (lambda: kernels.rms_norm(*_norm_args(), eps="1e-6"), TypeError, "eps"),
    # fused_add_rms_norm_
    "fused residual shape": (
        lambda: kernels.fused_add_rms_norm_(torch.randn(4, 64), torch.randn(5, 64), torch.randn(64)),
        ValueError,
        "residual",
    ),
    "fused residual dtype": (
        lambda: kernels.fused_add_rms_norm_(torch.randn(4, 64), torch.randn(4, 64, dtype=BF16), torch.randn(64)),
        TypeError,
        "residual",
    ),
    "fused x non-contiguous": (
        lambda: kernels.fused_add_rms_norm_(torch.randn(4, 128)[:, :64], torch.randn(4, 64), torch.randn(64)),
        ValueError,
        "x",
    ),
    "fused same tensor": (lambda: (lambda t: kernels.fused_add_rms_norm_(t, t, torch.randn(64)))(torch.randn(4, 64)), ValueError, "residual"),
    "fused residual on meta": (
        lambda: kernels.fused_add_rms_norm_(torch.randn(4, 64), torch.randn(4, 64, device="meta"), torch.randn(64)),
        ValueError,
        "residual",
    ),
    # rotary_embedding_
    "rope positions int32": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p.int(), q, k, c))(*_rope_args()),
        TypeError,
        "positions",
    ),
    "rope positions wrong length": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p[:3], q, k, c))(*_rope_args()),
        ValueError,
        "positions",
    ),
    "rope positions out of range": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p + 13, q, k, c))(*_rope_args()),
        ValueError,
        "positions",
    ),
    "rope negative position": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p - 1, q, k, c))(*_rope_args()),
        ValueError,
        "positions",
    ),
    "rope q 2-D": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q.flatten(1), k, c))(*_rope_args()),
        ValueError,
        "q",
    ),
    "rope k head_dim": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q, torch.randn(4, 1, 32), c))(*_rope_args()),
        ValueError,
        "k",
    ),
    "rope k dtype": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q, k.to(BF16), c))(*_rope_args()),
        TypeError,
        "k",
    ),
    "rope q heads transposed": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q.transpose(1, 2).contiguous().transpose(1, 2), k, c))(
            *_rope_args()
        ),
        ValueError,
        "q",
    ),
    "rope cache odd rotary": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q, k, torch.randn(16, 63)))(*_rope_args()),
        ValueError,
        "cos_sin_cache",
    ),
    "rope cache wider than head": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q, k, torch.randn(16, 66)))(*_rope_args()),
        ValueError,
        "cos_sin_cache",
    ),
    "rope cache dtype": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q, k, c.double()))(*_rope_args()),
        TypeError,
        "cos_sin_cache",
    ),
    "rope cache on meta": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q, k, c.to("meta")))(*_rope_args()),
        ValueError,
        "cos_sin_cache",
    ),
    "rope is_neox not bool": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q, k, c, is_neox=1))(*_rope_args()),
        TypeError,
        "is_neox",
    ),
    "rope q and k overlap": (
        lambda: (lambda p, q, k, c: kernels.rotary_embedding_(p, q, q[:, :1], c))(*_rope_args()),
        ValueError,
        "overlap",
    ),
    # activations
    "silu odd width": (lambda: kernels.silu_and_mul(torch.randn(4, 63)), ValueError, "x"),
    "silu 1-D": (lambda: kernels.silu_and_mul(torch.randn(64)), ValueError, "x"),
    "silu empty width": (lambda: kernels.silu_and_mul(torch.randn(4, 0)), ValueError, "x"),
    "silu non-contiguous": (lambda: kernels.silu_and_mul(torch.randn(4, 256)[:, :128]), ValueError, "x"),
    "silu int dtype": (lambda: kernels.silu_and_mul(torch.ones(4, 64, dtype=torch.int64)), TypeError, "x"),
    "gelu bad approximate": (lambda: kernels.gelu_and_mul(torch.randn(4, 64), approximate="fast"), ValueError, "approximate"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_naming_the_argument(case):
    call, error, name = CASES[case]
    with pytest.raises(error) as info:
        call()
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"


@pytest.mark.parametrize("op", ["rms_norm", "silu_and_mul", "gelu_and_mul"])
def test_zero_tokens_give_empty_result(op):
    x = torch.randn(0, 64)
    out = kernels.rms_norm(x, torch.randn(64)) if op == "rms_norm" else getattr(kernels, op)(x)
    assert out.shape == ((0, 64) if op == "rms_norm" else (0, 32))


def test_value_checks_look_again_after_an_in_place_write():
    # The CPU value checks skip tensors they accepted unchanged (the engine passes every layer the
    # same ones); a write through torch bumps the version counter, and the next call checks again.
    k_cache, v_cache = torch.randn(4, 16, 1, 64), torch.randn(4, 16, 1, 64)
    q, k, v = torch.randn(1, 2, 64), torch.randn(1, 1, 64), torch.randn(1, 1, 64)
    table, lens = torch.tensor([[0, 1]], dtype=torch.int32), torch.tensor([20], dtype=torch.int32)
    slots, positions, cos_sin = torch.tensor([19]), torch.tensor([19]), torch.randn(32, 64)

    kernels.paged_decode_attention(q, k_cache, v_cache, table, lens)
    kernels.store_kv_cache(k, v, k_cache, v_cache, slots)
    kernels.rotary_embedding_(positions, q, k, cos_sin)
    table[0, 1] = 4
    slots[0] = 64
    positions[0] = 32
    with pytest.raises(ValueError, match="page_table"):
        kernels.paged_decode_attention(q, k_cache, v_cache, table, lens)
    with pytest.raises(ValueError, match="slot_mapping"):
        kernels.store_kv_cache(k, v, k_cache, v_cache, slots)
    with pytest.raises(ValueError, match="positions"):
        kernels.rotary_embedding_(positions, q, k, cos_sin)
