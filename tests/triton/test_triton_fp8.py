"""The Triton FP8 kernels at the level tests/ops/test_fp8.py does not reach: the kernel's own
rounding to e4m3 on every code and every tie, bit-exact codes and scales against the reference
(the kernels divide as the reference does), and both GEMM dot paths (native FP8 operands and the
float16 upcast taken where FP8 tensor cores are missing).

Under the Triton interpreter (CPU tensors) or on a CUDA GPU; outputs and workspaces poisoned (NaN).
"""

from __future__ import annotations

import pytest
import torch

from tests.triton.device import DEVICE  # noqa: E402  (skips this module when Triton cannot run)

from kernels import reference  # noqa: E402
from kernels.triton import fp8  # noqa: E402

FP8 = torch.float8_e4m3fn
NAN = float("nan")


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    from kernels.triton import _util

    def poisoned(shape, like, dtype=None):
        return torch.full(shape, NAN, dtype=like.dtype if dtype is None else dtype, device=like.device)

    monkeypatch.setattr(_util, "new_empty", poisoned)


def assert_same_codes(q: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert q.dtype == FP8 and q.shape == ref.shape, (what, q.dtype, q.shape, ref.shape)
    same = q.view(torch.uint8) == ref.view(torch.uint8)
    if not same.all():
        idx = tuple(torch.nonzero(~same)[0].tolist())
        raise AssertionError(f"{what}: {int((~same).sum())} codes differ, first at {idx}: {q[idx].float()} vs {ref[idx].float()}")


def test_rounding_to_e4m3_every_code_and_tie():
    # Every finite code, the midpoints between neighbours (ties go to the even code) and the
    # floats just either side of them, beyond 448 (saturates), below the smallest subnormal, -0.
    codes = torch.arange(256, dtype=torch.uint8).view(FP8).float()
    codes = codes[~codes.isnan()].unique()
    mids = (codes[1:] + codes[:-1]) / 2
    up, down = torch.full_like(mids, 1e9), torch.full_like(mids, -1e9)
    y = torch.cat([codes, mids, mids.nextafter(up), mids.nextafter(down), torch.tensor([449.0, 464.0, 500.0, 1e6, 1e-12, -0.0])])
    y = torch.cat([y, -y])[None, :].to(DEVICE)
    q, _ = fp8.quantize_fp8(y, "tensor", torch.ones(1, device=DEVICE), False)  # q = round(y / 1)
    assert_same_codes(q, y.clamp(-448, 448).to(FP8), "codes")


@pytest.mark.parametrize("granularity", ["tensor", "token", "group128"])
def test_quantize_bit_exact(granularity):
    cases = [(m, k, dtype) for m, k in ((0, 64), (1, 64), (7, 200), (33, 384)) for dtype in (torch.float32, torch.bfloat16)]
    cases.append((5, 300, torch.float16))
    if granularity == "token":
        cases.append((2, fp8.ROW_MAX + 300, torch.float16))  # a row streamed in two passes
    for m, k, dtype in cases:
        for column_major in (False, True) if granularity == "group128" else (False,):
            x = (torch.randn(m, k, device=DEVICE) * torch.rand(m, 1, device=DEVICE) * 10).to(dtype)
            if m > 1:
                x[1] = 0  # an all-zero row: the floored scale, zero codes
            q, s = fp8.quantize_fp8(x, granularity, None, column_major)
            rq, rs = reference.quantize_fp8(x, granularity, None, column_major)
            what = f"{granularity} {m}x{k} {dtype} column_major={column_major}"
            assert_same_codes(q, rq, what)
            assert s.shape == rs.shape and torch.equal(s, rs), (what, s, rs)
            if m:
                assert s.stride() == rs.stride(), (what, s.stride(), rs.stride())


def test_quantize_static_scale_saturates():
    x = torch.randn(9, 300, device=DEVICE) * 5
    scale = torch.tensor([0.004], device=DEVICE)  # |x| / scale reaches ~5000: saturates to 448
    q, s = fp8.quantize_fp8(x, "tensor", scale, False)
    assert s is scale
    assert_same_codes(q, reference.quantize_fp8(x, "tensor", scale, False)[0], "static")
    assert q.float().abs().max().item() == 448.0


def _gemm_inputs(m, n, k, kind, column_major=False):
    a = (torch.randn(m, k, device=DEVICE) * 16).to(FP8)
    b = (torch.randn(n, k, device=DEVICE) * 16).to(FP8)
    kb, nb = -(-k // 128), -(-n // 128)
    shapes = {"tensor": ((1,), (1,)), "token": ((m,), (n,)), "mixed": ((m,), (1,)), "block": ((m, kb), (nb, kb))}[kind]
    unit = 1.0 / (16 * k**0.25)  # output rms ~ 1
    sa, sb = ((torch.rand(shape, device=DEVICE) + 0.5) * unit for shape in shapes)
    if column_major:
        sa = sa.T.contiguous().T
    return a, b, sa, sb


@pytest.mark.parametrize("upcast", [False, True], ids=["fp8-dot", "fp16-upcast"])
@pytest.mark.parametrize("kind", ["tensor", "token", "mixed", "block"])
def test_gemm(monkeypatch, kind, upcast):
    monkeypatch.setattr(fp8, "native_fp8_dot", lambda t: not upcast)
    # M, N and K off the tiles; a K block of blockwise scales cut short (K = 200, 260).
    cases = [(1, 64, 128, torch.float32, False), (7, 72, 200, torch.bfloat16, True), (20, 130, 260, torch.float16, False)]
    for m, n, k, out_dtype, with_bias in cases:
        for column_major in (False, True) if kind == "block" else (False,):
            a, b, sa, sb = _gemm_inputs(m, n, k, kind, column_major)
            bias = torch.randn(n, device=DEVICE).to(out_dtype) if with_bias else None
            out = fp8.fp8_gemm(a, b, sa, sb, out_dtype, bias, False)
            ref = reference.fp8_gemm(a, b, sa, sb, out_dtype, bias)
            assert out.shape == ref.shape and out.dtype == out_dtype
            o, r = out.double(), ref.double()
            assert not o.isnan().any(), "unwritten output elements"
            rel = ((o - r).norm() / r.norm()).item()
            tol = 1e-5 if out_dtype == torch.float32 else 1e-2
            assert rel <= tol, f"{kind} {m}x{n}x{k} {out_dtype}: relative norm error {rel:.2e}"


def test_gemm_zero_tokens():
    a, b, sa, sb = _gemm_inputs(0, 64, 128, "token")
    assert fp8.fp8_gemm(a, b, sa, sb, torch.bfloat16, None, False).shape == (0, 64)
