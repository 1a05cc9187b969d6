"""FP8 quantisation (``quantize_fp8``) and the scaled FP8 GEMM (``fp8_gemm``).

Every backend registered for the platform is compared with the float32 reference on fresh random
inputs, outputs poisoned first: on the CPU the torch composite and, under the Triton interpreter,
the Triton kernels; on the GPU the native (CUTLASS), Triton and torch backends. The reference
itself is checked against the FP8 format's definition (e4m3: largest finite 448, saturating).
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import reference, registry
from kernels.native import library
from tests.helpers import DTYPES, poison_allocator

FP8 = torch.float8_e4m3fn
NAN = float("nan")
GRANULARITIES = ["tensor", "token", "group128"]
GEMM_KINDS = ["tensor", "token", "block"]
OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Norm and elementwise bounds for the GEMM's output: |out - ref| <= ATOL * rms(ref) + RTOL * |ref|.
# The products of two e4m3 values are exact in float32; what differs is the order of the float32
# sums, the tensor cores' narrower FP8 accumulator inside each 128-deep chunk of K (promoted into
# float32 after each), and the output's rounding.
# float32 outputs: two float32 sums over K = 7168 in different orders (the reference's and a
# tensor-core kernel's) differ by ~sqrt(K) * 2^-24 * rms typically, more at a few elements.
NORM_TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}
ELEM_ATOL = {torch.float32: 5e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}
ELEM_RTOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 1e-2}
# use_fast_accum: one narrow accumulator over all of K, whose rounding errors add up along K. On
# the H100 a few outputs in a thousand came out up to ~0.9% of rms away at K = 1536, ~2% at
# K = 7168 (our kernels) and ~5% at K = 18432 (cuBLAS): the bound grows with K (the norm bound above
# still holds).
FAST_ACCUM_ELEM_ATOL = 2e-2
FAST_ACCUM_ELEM_ATOL_PER_K = 3e-6


def _backends(op: str, platform: str) -> list[str]:
    """Backends (the reference aside) registered for ``platform`` that can run here."""
    found = []
    for impl in registry.implementations(op):
        if impl.backend != "reference" and platform in impl.platforms and impl.available(platform) is None:
            found.append(impl.backend)
    return found


@pytest.fixture(autouse=True)
def _poison_triton_outputs(monkeypatch):
    from kernels.triton import _util

    def poisoned(shape, like, dtype=None):
        dtype = dtype or like.dtype
        return torch.full(shape, NAN if dtype.is_floating_point else -1, dtype=dtype, device=like.device)

    monkeypatch.setattr(_util, "new_empty", poisoned)


# ---------------------------------------------------------------------------------------------
# The reference against the format's definition


def test_reference_quantize_by_definition():
    x = torch.tensor([[0.0, 1.0, -2.0, 500.0], [1e-3, -1e-3, 0.0, 0.0]])
    q, s = reference.quantize_fp8(x, "token", None, False)
    assert s.tolist() == pytest.approx([500.0 / 448, 1e-3 / 448], rel=1e-6)
    assert q.float()[0].tolist() == pytest.approx([0.0, 0.875, -1.75, 448.0], rel=0.07)
    assert q.float()[0, 3].item() == 448.0  # the row's amax lands on the largest finite value
    # a static scale saturates instead of overflowing to NaN (e4m3fn has no infinity)
    q, s = reference.quantize_fp8(x, "tensor", torch.tensor([0.5]), False)
    assert q.float()[0, 3].item() == 448.0 and q.float()[0, 2].item() == -4.0 and s.item() == 0.5
    # all-zero rows get the floored scale and zeros
    q, s = reference.quantize_fp8(torch.zeros(2, 3), "token", None, False)
    assert torch.all(s > 0) and torch.all(q.float() == 0)


def test_reference_gemm_by_definition():
    m, n, k = 3, 130, 260
    a = (torch.randn(m, k) * 8).to(FP8)
    b = (torch.randn(n, k) * 8).to(FP8)
    sa, sb = torch.rand(m, 3) + 0.5, torch.rand(2, 3) + 0.5
    expected = torch.zeros(m, n, dtype=torch.float64)
    af, bf = a.double(), b.double()
    for kb in range(3):
        ks = slice(128 * kb, 128 * (kb + 1))
        for nb in range(2):
            ns = slice(128 * nb, 128 * (nb + 1))
            expected[:, ns] += (af[:, ks] @ bf[ns, ks].T) * sa[:, kb : kb + 1].double() * sb[nb, kb].double()
    out = reference.fp8_gemm(a, b, sa, sb, torch.float32, None)
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


# ---------------------------------------------------------------------------------------------
# quantize_fp8


def _assert_fp8_close(q: torch.Tensor, ref: torch.Tensor) -> None:
    """Codes equal, except a rare neighbour where ``x / s`` sits on a rounding boundary and a kernel
    multiplies by ``1 / s`` (one float32 ulp away from the reference's division)."""
    assert q.dtype == FP8 and q.shape == ref.shape
    if not q.numel():
        return
    o, r = q.float().cpu(), ref.float().cpu()
    assert not o.isnan().any(), f"{int(o.isnan().sum())} NaN codes (unwritten?)"
    diff = (o - r).abs()
    neighbour = diff <= 0.125 * torch.maximum(o.abs(), r.abs()) + 2.0**-9
    assert neighbour.all(), f"{int((~neighbour).sum())} codes beyond one step, first at {tuple(torch.nonzero(~neighbour)[0].tolist())}"
    assert int((diff > 0).sum()) <= max(2, q.numel() // 200), f"{int((diff > 0).sum())} of {q.numel()} codes differ"


def _check_quantize(backend, m, k, dtype, granularity, device="cpu", static=False, column_major=False):
    x = (torch.randn(m, k, device=device) * torch.rand(m, 1, device=device) * 10).to(dtype)
    scale = torch.rand(1, device=device) * 0.02 + 0.001 if static else None  # saturates some values
    poison_allocator(m * k * 4, device)
    with kernels.backend(backend):
        q, s = kernels.quantize_fp8(x, granularity, scale, column_major_scales=column_major)
    rq, rs = reference.quantize_fp8(x, granularity, scale, column_major)
    assert s.dtype == torch.float32 and s.shape == rs.shape, (s.dtype, s.shape, rs.shape)
    if all(d > 1 for d in s.shape):  # the layout; a size-0 or size-1 dim's stride means nothing
        assert s.stride() == rs.stride(), (s.shape, s.stride(), rs.stride())
    assert q.is_contiguous()
    if s.numel():
        assert torch.allclose(s.cpu(), rs.cpu(), rtol=1e-6, atol=0), (s, rs)
    _assert_fp8_close(q, rq)


def _quantize_cases(k_values):
    for granularity in GRANULARITIES:
        for m in (0, 1, 7, 33):
            for k in k_values:
                yield granularity, m, k


@pytest.mark.parametrize("backend", _backends("quantize_fp8", "cpu") or [pytest.param("none", marks=pytest.mark.skip(reason="only the reference runs quantize_fp8 on this CPU"))])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_cpu(backend, dtype):
    for granularity, m, k in _quantize_cases((64, 200, 384)):
        _check_quantize(backend, m, k, dtype, granularity)
    _check_quantize(backend, 9, 300, dtype, "tensor", static=True)
    _check_quantize(backend, 9, 300, dtype, "group128", column_major=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_gpu(backend, dtype):
    if backend not in _backends("quantize_fp8", "cuda"):
        pytest.skip(f"no {backend} quantize_fp8 for CUDA here")
    for granularity, m, k in _quantize_cases((64, 200, 7168)):
        _check_quantize(backend, m, k, dtype, granularity, "cuda")
    for m, k in ((4096, 7168), (3, 18432)):
        for granularity in GRANULARITIES:
            _check_quantize(backend, m, k, dtype, granularity, "cuda")
    _check_quantize(backend, 300, 4096, dtype, "tensor", "cuda", static=True)
    _check_quantize(backend, 300, 4096, dtype, "group128", "cuda", column_major=True)


# ---------------------------------------------------------------------------------------------
# fp8_gemm


def _gemm_inputs(m, n, k, kind, device, column_major=False):
    """FP8 values across e4m3's range, and scales that make the output O(1)."""
    a = (torch.randn(m, k, device=device) * 16).to(FP8)
    b = (torch.randn(n, k, device=device) * 16).to(FP8)
    unit = 1.0 / (16 * k**0.25)  # each side; output rms ~ 1
    kb, nb = -(-k // 128), -(-n // 128)
    shapes = {"tensor": ((1,), (1,)), "token": ((m,), (n,)), "block": ((m, kb), (nb, kb))}[kind]
    sa, sb = ((torch.rand(shape, device=device) + 0.5) * unit for shape in shapes)
    if column_major:
        sa = sa.T.contiguous().T
    return a, b, sa, sb


def _check_gemm(backend, m, n, k, kind, out_dtype, device="cpu", bias=False, column_major=False, fast_accum=False):
    a, b, sa, sb = _gemm_inputs(m, n, k, kind, device, column_major)
    bias_t = torch.randn(n, device=device).to(out_dtype) if bias else None
    poison_allocator(m * n * 4, device)
    with kernels.backend(backend):
        out = kernels.fp8_gemm(a, b, sa, sb, out_dtype, bias_t, use_fast_accum=fast_accum)
    ref = reference.fp8_gemm(a, b, sa, sb, out_dtype, bias_t)
    assert out.shape == (m, n) and out.dtype == out_dtype and out.is_contiguous()
    if not out.numel():
        return
    o, r = out.double().cpu(), ref.double().cpu()
    assert not o.isnan().any(), f"{int(o.isnan().sum())} NaN elements (unwritten?)"
    rel = ((o - r).norm() / r.norm()).item()
    assert rel <= NORM_TOL[out_dtype], f"{backend} {kind} {m}x{n}x{k}: relative norm error {rel:.3e}"
    atol = max(ELEM_ATOL[out_dtype], FAST_ACCUM_ELEM_ATOL + FAST_ACCUM_ELEM_ATOL_PER_K * k if fast_accum else 0)
    bad = (o - r).abs() > atol * r.pow(2).mean().sqrt() + ELEM_RTOL[out_dtype] * r.abs()
    if bad.any():
        idx = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{backend} {kind} {m}x{n}x{k}: {int(bad.sum())} elements off, first at {idx}: {o[idx].item()} vs {r[idx].item()}")


def _declines(backend, *args) -> bool:
    impl = next(i for i in registry.implementations("fp8_gemm") if i.backend == backend)
    return impl.supports(*args, None, False) is not None


GPU_GEMM_SHAPES = [(64, 128), (72, 200), (256, 384), (1000, 1040), (7168, 1536)]
GPU_GEMM_LARGE = [(4096, 2048, 7168), (64, 7168, 18432), (2048, 24576, 1536), (128, 18432, 7168)]


def _gemm_cases(shapes):
    for kind in GEMM_KINDS:
        for m in (0, 1, 7, 33):
            for n, k in shapes:
                yield kind, m, n, k


@pytest.mark.parametrize("backend", _backends("fp8_gemm", "cpu"))
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_gemm_cpu(backend, out_dtype):
    for kind, m, n, k in _gemm_cases(((64, 128), (72, 200), (130, 384))):
        _check_gemm(backend, m, n, k, kind, out_dtype)
    _check_gemm(backend, 5, 130, 256, "token", out_dtype, bias=True)
    _check_gemm(backend, 5, 130, 256, "block", out_dtype, bias=True, column_major=True)
    _check_gemm(backend, 5, 130, 256, "token", out_dtype, fast_accum=True)


def test_gemm_mixed_scales_cpu():
    # per-token activations with a per-tensor weight scale, and the reverse
    a, b, sa, sb = _gemm_inputs(6, 40, 64, "token", "cpu")
    for x, y in ((sa, sb[:1]), (sa[:1], sb)):
        for backend in _backends("fp8_gemm", "cpu"):
            with kernels.backend(backend):
                out = kernels.fp8_gemm(a, b, x, y, torch.float32)
            assert torch.allclose(out, reference.fp8_gemm(a, b, x, y, torch.float32, None), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "triton", "torch"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("kind", GEMM_KINDS)
def test_gemm_gpu(backend, out_dtype, kind):
    if backend not in _backends("fp8_gemm", "cuda"):
        pytest.skip(f"no {backend} fp8_gemm for CUDA here")
    cases = [(m, n, k) for m in (0, 1, 7, 64, 100, 333) for n, k in GPU_GEMM_SHAPES] + GPU_GEMM_LARGE
    ran = 0
    for m, n, k in cases:
        for column_major in ((False, True) if kind == "block" else (False,)):
            a, b, sa, sb = _gemm_inputs(max(m, 1), n, k, kind, "cuda", column_major)
            if _declines(backend, a, b, sa, sb, out_dtype):
                continue  # its supports() says why; dispatch falls through to the next backend
            _check_gemm(backend, m, n, k, kind, out_dtype, "cuda", column_major=column_major)
            ran += 1
    if not ran:
        pytest.skip(f"{backend} declines every {kind} case with {out_dtype} output")
    _check_gemm(backend, 33, 256, 512, kind, out_dtype, "cuda", bias=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["tensor", "token"])
def test_gemm_gpu_fast_accum(backend, out_dtype, kind):
    if backend not in _backends("fp8_gemm", "cuda"):
        pytest.skip(f"no {backend} fp8_gemm for CUDA here")
    for m, n, k in [(m, n, k) for m in (1, 100, 333) for n, k in GPU_GEMM_SHAPES[2:]] + GPU_GEMM_LARGE:
        if not _declines(backend, *_gemm_inputs(m, n, k, kind, "cuda"), out_dtype):
            _check_gemm(backend, m, n, k, kind, out_dtype, "cuda", fast_accum=True)


@pytest.mark.gpu
def test_native_opcheck():
    if not library.has_kernel("fp8_gemm", "CUDA"):
        pytest.skip("the library has no CUDA fp8_gemm")
    a, b, sa, sb = _gemm_inputs(64, 256, 512, "token", "cuda")
    # test_schema compares inputs before and after with arithmetic torch has no FP8 kernel for.
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for fast_accum in (False, True):
        torch.library.opcheck(torch.ops.kernels.fp8_gemm, (a, b, sa, sb, torch.bfloat16, None, fast_accum), test_utils=utils)


# ---------------------------------------------------------------------------------------------
# Bad input


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_quantize_rejects_bad_input():
    x = torch.randn(4, 256)
    _raises(ValueError, "granularity", kernels.quantize_fp8, x, "channel")
    _raises(TypeError, "x must have dtype", kernels.quantize_fp8, x.to(torch.int32))
    _raises(ValueError, "x must be 2-D", kernels.quantize_fp8, x.view(4, 2, 128))
    _raises(ValueError, "x must be contiguous", kernels.quantize_fp8, x.T)
    _raises(ValueError, "empty K", kernels.quantize_fp8, torch.randn(4, 0))
    _raises(ValueError, "static scale is per-tensor", kernels.quantize_fp8, x, "token", torch.ones(1))
    _raises(ValueError, r"scale.shape\[0\] must be 1", kernels.quantize_fp8, x, "tensor", torch.ones(2))
    _raises(TypeError, "scale must have dtype float32", kernels.quantize_fp8, x, "tensor", torch.ones(1, dtype=torch.float16))
    _raises(ValueError, "column_major_scales applies to granularity 'group128'", kernels.quantize_fp8, x, "token", column_major_scales=True)
    _raises(TypeError, "column_major_scales must be a bool", kernels.quantize_fp8, x, "group128", column_major_scales=1)


def test_gemm_rejects_bad_input():
    a, b, sa, sb = _gemm_inputs(8, 256, 512, "token", "cpu")
    _, _, ba, bb = _gemm_inputs(8, 256, 512, "block", "cpu")
    gemm = kernels.fp8_gemm
    _raises(TypeError, "a must have dtype float8_e4m3fn", gemm, a.float(), b, sa, sb)
    _raises(TypeError, "b must have dtype float8_e4m3fn", gemm, a, b.to(torch.float8_e5m2), sa, sb)
    _raises(ValueError, r"b.shape\[1\] must be 512", gemm, a, b[:, :256].contiguous(), sa, sb)
    _raises(ValueError, "a must be contiguous", gemm, a.T.contiguous().T, b, sa, sb)
    _raises(TypeError, "scale_a must have dtype float32", gemm, a, b, sa.half(), sb)
    _raises(ValueError, r"scale_b must be \[1\] \(per tensor\) or \[256\]", gemm, a, b, sa, sb[:3])
    _raises(ValueError, r"scale_a must be \[1\] \(per tensor\) or \[8\]", gemm, a, b, sa[:5], sb)
    _raises(ValueError, r"blockwise scale_a must be \[M, ceil\(K / 128\)\] = \[8, 4\]", gemm, a, b, ba[:, :3], bb)
    _raises(ValueError, r"blockwise scale_b must be \[ceil\(N / 128\), ceil\(K / 128\)\] = \[2, 4\]", gemm, a, b, ba, sb)
    _raises(ValueError, "blockwise scale_a must be row-major or column-major", gemm, a, b, torch.rand(8, 8)[:, ::2], bb)
    _raises(TypeError, "out_dtype must be one of", gemm, a, b, sa, sb, torch.int32)
    _raises(TypeError, "bias must have dtype bfloat16", gemm, a, b, sa, sb, torch.bfloat16, torch.zeros(256))
    _raises(ValueError, r"bias.shape\[0\] must be 256", gemm, a, b, sa, sb, torch.bfloat16, torch.zeros(255, dtype=torch.bfloat16))
    _raises(ValueError, "empty N", gemm, a, b[:0], sa, sb[:0])
    _raises(TypeError, "use_fast_accum must be a bool", gemm, a, b, sa, sb, use_fast_accum=1)


def test_zero_tokens():
    q, s = kernels.quantize_fp8(torch.randn(0, 256), "group128")
    assert q.shape == (0, 256) and s.shape == (0, 2)
    a, b, sa, sb = _gemm_inputs(0, 64, 128, "token", "cpu")
    assert kernels.fp8_gemm(a, b, sa, sb).shape == (0, 64)
