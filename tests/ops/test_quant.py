"""INT4 weight-only GEMM (``w4a16_gemm``), the packed layout, and the converters into it.

Every backend that can run here is compared with the float32 reference on fresh random inputs
(modes x group sizes x dtypes x shapes), outputs poisoned first. The layout, the reference's
dequantisation and the converters are checked against encoders written here, independently, from
each format's definition (and GGUF against the installed ``gguf`` package).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels
from kernels import reference, registry
from kernels.native import library
from tests.helpers import DTYPES, NORM_TOL, poison_allocator

MODES = ["sym", "zp", "min"]
GROUPS = [32, 64, 128]
NAN = float("nan")
# Elementwise bound |out - ref| <= ATOL * rms(ref) + RTOL * |ref|. The half-precision kernels round
# each dequantised weight to the activation dtype before the float32 accumulation (as every W4A16
# kernel does), so the error of an output scales with the row's magnitude, not with its own value.
ELEM_ATOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}
ELEM_RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def _cpu_backends() -> list[str]:
    found = ["torch"]
    native = next((i for i in registry.implementations("w4a16_gemm") if i.backend == "native"), None)
    if native is not None and "cpu" in native.platforms and native.available("cpu") is None:
        found.append("native")
    return found


def _triton_on_cpu() -> bool:
    triton = next((i for i in registry.implementations("w4a16_gemm") if i.backend == "triton"), None)
    return triton is not None and "cpu" in triton.platforms and triton.available("cpu") is None


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, out.dtype, ref.shape, ref.dtype)
    if out.numel() == 0:
        return
    o, r = out.double().cpu(), ref.double().cpu()
    assert not o.isnan().any(), f"{int(o.isnan().sum())} NaN elements (unwritten?)"
    rel = ((o - r).norm() / r.norm().clamp_min(1e-30)).item()
    assert rel <= NORM_TOL[dtype], f"relative norm error {rel:.3e} > {NORM_TOL[dtype]:.0e}"
    rms = r.pow(2).mean().sqrt()
    bad = (o - r).abs() > ELEM_ATOL[dtype] * rms + ELEM_RTOL[dtype] * r.abs()
    if bad.any():
        idx = tuple(i.item() for i in bad.nonzero()[0])
        raise AssertionError(f"{int(bad.sum())} elements off, first at {idx}: {o[idx].item()} vs {r[idx].item()}")


def random_weight(n: int, k: int, group: int, mode: str, scale_dtype=torch.float16, device="cpu") -> kernels.Int4Weight:
    """Random codes and per-group parameters scaled so that outputs of N(0, 1) activations are O(1)."""
    groups = k // group
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, device=device)
    s = (torch.rand(n, groups, device=device) + 0.5) / (4.6 * k**0.5)
    zp = torch.randint(0, 16, (n, groups), dtype=torch.uint8, device=device) if mode == "zp" else None
    mins = (-7.5 * s * (1 + 0.2 * torch.randn(n, groups, device=device))).to(scale_dtype) if mode == "min" else None
    return kernels.Int4Weight(kernels.pack_int4(q), s.to(scale_dtype), zp, mins, group)


def _call(backend: str, a: torch.Tensor, w: kernels.Int4Weight) -> torch.Tensor:
    with kernels.backend(backend):
        return w.gemm(a)


def _check(backend: str, m: int, n: int, k: int, group: int, mode: str, dtype, scale_dtype=None, device="cpu"):
    scale_dtype = scale_dtype or (torch.float16 if dtype == torch.float32 else dtype)
    w = random_weight(n, k, group, mode, scale_dtype, device)
    a = torch.randn(m, k, device=device).to(dtype)
    poison_allocator(m * n * a.element_size(), device)
    out = _call(backend, a, w)
    assert out.is_contiguous()
    assert_close(out, reference.w4a16_gemm(a, w.qweight, w.scales, w.zero_points, w.mins, group), dtype)


def _shapes(group: int) -> list[tuple[int, int]]:
    # (N, K): N not a multiple of 64 (72); K a non-multiple of 64 where the group allows (96 = 3 x 32).
    return [(72, 96 if group == 32 else 3 * group), (64, 256)]


# ---------------------------------------------------------------------------------------------
# Backends against the reference


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("mode", MODES)
def test_cpu_backends(backend, dtype, group, mode):
    for n, k in _shapes(group):
        for m in (0, 1, 3, 17, 64):
            _check(backend, m, n, k, group, mode, dtype)


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize(
    "m,n,k,group,mode,dtype",
    [
        (300, 1000, 2048, 128, "zp", torch.bfloat16),
        (1, 1536, 576, 32, "min", torch.float32),  # SmolLM2-135M's gate/up projection (Q4_1)
        (4, 576, 1536, 32, "min", torch.float32),  # and its down projection
        (4, 64, 8192, 128, "sym", torch.float16),
        (2, 8192, 64, 64, "zp", torch.float32),
        (129, 200, 4096, 64, "sym", torch.float32),
    ],
)
def test_cpu_backends_larger(backend, m, n, k, group, mode, dtype):
    _check(backend, m, n, k, group, mode, dtype)


@pytest.mark.parametrize("scale_dtype", DTYPES)
def test_scales_of_another_dtype(scale_dtype):
    for backend in _cpu_backends():
        for mode in MODES:
            _check(backend, 5, 72, 128, 64, mode, torch.bfloat16, scale_dtype)


@pytest.fixture
def _poison_triton_outputs(monkeypatch):
    from kernels.triton import _util

    monkeypatch.setattr(_util, "new_empty", lambda shape, like: torch.full(shape, NAN, dtype=like.dtype, device=like.device))


@pytest.mark.skipif(not _triton_on_cpu(), reason="the Triton interpreter is not in use")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("mode", MODES)
def test_triton_interpreter(dtype, group, mode, _poison_triton_outputs):
    n, k = _shapes(group)[0]
    for m in (0, 1, 17):
        _check("triton", m, n, k, group, mode, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("mode", MODES)
def test_gpu(backend, dtype, group, mode):
    impl = next((i for i in registry.implementations("w4a16_gemm") if i.backend == backend), None)
    if impl is None or "cuda" not in impl.platforms:
        pytest.skip(f"no {backend} w4a16_gemm for CUDA")
    for m in (0, 1, 3, 17, 64, 4096):
        for n, k in [*_shapes(group), (8192, 8192), (4096, 1024 + group), (1000, 8192)]:
            if (m * n * k <= 4096 * 4096 * 1024 or m <= 64) and not _declines(impl, m, n, k, group, dtype):
                _check(backend, m, n, k, group, mode, dtype, device="cuda")


def _declines(impl, m: int, n: int, k: int, group: int, dtype) -> bool:
    """Whether ``impl`` turns these sizes away (the native CUDA kernel takes half-precision a and
    M <= 32; dispatch gives the rest to Triton), asked with empty tensors of those shapes."""
    a = torch.empty(m, k, dtype=dtype, device="cuda")
    qweight = torch.empty(n, k // 8, dtype=torch.int32, device="cuda")
    scales = torch.empty(n, k // group, dtype=dtype, device="cuda")
    return impl.supports(a, qweight, scales, None, None, group) is not None


# ---------------------------------------------------------------------------------------------
# The layout, and the reference's dequantisation, against an encoder written from the definition


def _pack_by_definition(q: np.ndarray) -> np.ndarray:
    """``[N, K]`` 0..15 -> int32 ``[N, K // 8]``: word (n, j) = sum_i q[n, 8j + i] << 4i."""
    n, k = q.shape
    words = np.zeros((n, k // 8), dtype=np.uint32)
    for i in range(8):
        words |= q[:, i::8].astype(np.uint32) << np.uint32(4 * i)
    return words.view(np.int32)


def test_pack_unpack_round_trip():
    for n, k in [(1, 8), (72, 96), (3, 4096)]:
        q = torch.randint(0, 16, (n, k), dtype=torch.uint8)
        packed = kernels.pack_int4(q)
        assert packed.dtype == torch.int32 and packed.shape == (n, k // 8)
        assert np.array_equal(packed.numpy(), _pack_by_definition(q.numpy()))
        assert torch.equal(kernels.unpack_int4(packed), q)
        assert torch.equal(kernels.pack_int4(q.to(torch.int64)), packed)
    full = torch.full((2, 8), 15, dtype=torch.uint8)  # every bit set: the int32 -1
    assert kernels.pack_int4(full).tolist() == [[-1], [-1]]


@pytest.mark.parametrize("mode", MODES)
def test_dequantize_by_definition(mode):
    n, k, group = 24, 128, 32
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    s = torch.rand(n, k // group) + 0.1
    z = torch.randint(0, 16, (n, k // group), dtype=torch.uint8)
    m = torch.randn(n, k // group)
    expected = torch.empty(n, k, dtype=torch.float64)
    for row in range(n):
        for col in range(k):
            g = col // group
            qv, sv = float(q[row, col]), float(s[row, g])
            if mode == "zp":
                expected[row, col] = (qv - float(z[row, g])) * sv
            elif mode == "min":
                expected[row, col] = qv * sv + float(m[row, g])
            else:
                expected[row, col] = (qv - 8) * sv
    w = kernels.Int4Weight(
        torch.from_numpy(_pack_by_definition(q.numpy())), s, z if mode == "zp" else None, m if mode == "min" else None, group
    )
    got = kernels.dequantize_int4(w)
    assert got.dtype == torch.float32 and got.shape == (n, k)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    a = torch.randn(5, k)
    torch.testing.assert_close(w.gemm(a).double(), a.double() @ expected.T, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Converters: each foreign format encoded here from known codes, converted, and dequantised


def _pack_along_rows(q: np.ndarray) -> np.ndarray:
    """GPTQ's qweight: ``[K, N]`` -> int32 ``[K // 8, N]``, row 8j + i in bits 4i of word row j."""
    return _pack_by_definition(q.T).T.copy()


def _gptq_case(k, n, group, sym, fmt):
    groups = k // group
    q = np.random.randint(0, 16, (k, n))
    z = np.full((groups, n), 8) if sym else np.random.randint(0, 16, (groups, n))
    z[0, 0] = 8 if sym else 0  # v1 stores z = 0 as 15 (the subtraction wraps)
    s = (np.random.rand(groups, n) + 0.1).astype(np.float16)
    stored = (z - 1) & 0xF if fmt == "gptq" else z
    qweight = torch.from_numpy(_pack_along_rows(q))
    qzeros = torch.from_numpy(_pack_by_definition(stored))  # [groups, N // 8], packed along N
    expected = (q - np.repeat(z, group, axis=0)) * np.repeat(s.astype(np.float64), group, axis=0)  # [K, N]
    return qweight, qzeros, torch.from_numpy(s), torch.from_numpy(expected.T.copy())


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("sym", [True, False])
def test_from_gptq(sym, fmt):
    k, n, group = 256, 48, 64
    qweight, qzeros, scales, expected = _gptq_case(k, n, group, sym, fmt)
    g_idx = torch.arange(k, dtype=torch.int32) // group
    w = kernels.from_gptq(qweight, qzeros, scales, group, sym=sym, g_idx=g_idx, checkpoint_format=fmt)
    assert w.shape == (n, k) and w.scales.dtype == torch.float16 and w.mins is None
    assert (w.zero_points is None) == sym
    torch.testing.assert_close(kernels.dequantize_int4(w).double(), expected, rtol=1e-6, atol=1e-6)
    if sym:
        w = kernels.from_gptq(qweight, None, scales, group, sym=True)
        torch.testing.assert_close(kernels.dequantize_int4(w).double(), expected, rtol=1e-6, atol=1e-6)


def test_from_gptq_refuses():
    k, n, group = 256, 48, 64
    qweight, qzeros, scales, _ = _gptq_case(k, n, group, False, "gptq")
    act_order = (torch.arange(k) % (k // group)).to(torch.int32)
    with pytest.raises(ValueError, match="g_idx.*act-order"):
        kernels.from_gptq(qweight, qzeros, scales, group, sym=False, g_idx=act_order)
    with pytest.raises(ValueError, match="sym=True but qzeros"):
        kernels.from_gptq(qweight, qzeros, scales, group, sym=True)
    with pytest.raises(ValueError, match="qzeros is required"):
        kernels.from_gptq(qweight, None, scales, group, sym=False)
    with pytest.raises(ValueError, match="scales must have shape"):
        kernels.from_gptq(qweight, qzeros, scales.T, group, sym=False)
    with pytest.raises(ValueError, match="group_size"):
        kernels.from_gptq(qweight, qzeros, scales, -1, sym=False)
    with pytest.raises(ValueError, match="checkpoint_format"):
        kernels.from_gptq(qweight, qzeros, scales, group, sym=False, checkpoint_format="v3")


AWQ_PACK = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a word holds column AWQ_PACK[i] of its eight


def _pack_awq(q: np.ndarray) -> np.ndarray:
    """``[R, N]`` -> int32 ``[R, N // 8]`` in AWQ's interleaved order."""
    words = np.zeros((q.shape[0], q.shape[1] // 8), dtype=np.uint32)
    for i, col in enumerate(AWQ_PACK):
        words |= q[:, col::8].astype(np.uint32) << np.uint32(4 * i)
    return words.view(np.int32)


def test_from_awq():
    k, n, group = 256, 40, 128
    q = np.random.randint(0, 16, (k, n))
    z = np.random.randint(0, 16, (k // group, n))
    s = (np.random.rand(k // group, n) + 0.1).astype(np.float16)
    w = kernels.from_awq(torch.from_numpy(_pack_awq(q)), torch.from_numpy(_pack_awq(z)), torch.from_numpy(s), group)
    expected = (q - np.repeat(z, group, axis=0)) * np.repeat(s.astype(np.float64), group, axis=0)
    assert w.zero_points.dtype == torch.uint8 and w.mins is None and w.group_size == group
    torch.testing.assert_close(kernels.dequantize_int4(w).double(), torch.from_numpy(expected.T.copy()), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="qzeros must have shape"):
        kernels.from_awq(torch.from_numpy(_pack_awq(q)), torch.from_numpy(_pack_awq(z))[:1], torch.from_numpy(s), group)


def _gguf_encode(q: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """Blocks of 32 codes (``[blocks, 32]``) -> raw bytes: d (f16), [m (f16)], byte j = q[j] | q[j + 16] << 4."""
    qs = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    parts = [d.astype("<f2").view(np.uint8).reshape(-1, 2)]
    if m is not None:
        parts.append(m.astype("<f2").view(np.uint8).reshape(-1, 2))
    return np.concatenate([*parts, qs], axis=1)


@pytest.mark.parametrize("kind", ["q4_0", "q4_1"])
def test_from_gguf(kind):
    n, k = 6, 96
    blocks = n * k // 32
    q = np.random.randint(0, 16, (blocks, 32))
    d = (np.random.rand(blocks) + 0.1).astype(np.float16)
    m = (np.random.randn(blocks)).astype(np.float16) if kind == "q4_1" else None
    raw = _gguf_encode(q, d, m)
    d64 = d.astype(np.float64)[:, None]
    expected = q * d64 + m.astype(np.float64)[:, None] if kind == "q4_1" else (q - 8) * d64
    convert = kernels.from_gguf_q4_1 if kind == "q4_1" else kernels.from_gguf_q4_0
    for blob in (raw, torch.from_numpy(raw.reshape(n, -1)), raw.reshape(-1)):
        w = convert(blob, n, k)
        assert w.group_size == 32 and w.scales.dtype == torch.float16 and w.zero_points is None
        assert (w.mins is not None) == (kind == "q4_1")
        torch.testing.assert_close(
            kernels.dequantize_int4(w).double(), torch.from_numpy(expected.reshape(n, k)), rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_from_gguf_matches_gguf_py(kind):
    # gguf is a dependency of the package; the GPU machine's --no-deps install may lack it.
    GGMLQuantizationType = pytest.importorskip("gguf").GGMLQuantizationType
    from gguf.quants import dequantize

    n, k = 5, 160
    qtype = getattr(GGMLQuantizationType, kind)
    blocks = n * k // 32
    raw = np.random.randint(0, 256, (blocks, 18 if kind == "Q4_0" else 20), dtype=np.uint8)
    raw[:, :2] = np.random.randn(blocks).astype("<f2").view(np.uint8).reshape(-1, 2)  # finite d
    if kind == "Q4_1":
        raw[:, 2:4] = np.random.randn(blocks).astype("<f2").view(np.uint8).reshape(-1, 2)
    raw = raw.reshape(n, -1)
    expected = dequantize(raw, qtype)  # [n, k] float32
    convert = kernels.from_gguf_q4_0 if kind == "Q4_0" else kernels.from_gguf_q4_1
    got = kernels.dequantize_int4(convert(raw, n, k))
    torch.testing.assert_close(got, torch.from_numpy(np.asarray(expected, dtype=np.float32)), rtol=1e-6, atol=1e-6)


def test_from_gguf_refuses():
    raw = np.zeros((4, 18), dtype=np.uint8)
    with pytest.raises(ValueError, match="blocks must hold 2 Q4_0 blocks"):
        kernels.from_gguf_q4_0(raw, 1, 64)
    with pytest.raises(ValueError, match="k = 48 must be a multiple of 32"):
        kernels.from_gguf_q4_0(raw, 1, 48)
    with pytest.raises(TypeError, match="blocks must hold raw bytes"):
        kernels.from_gguf_q4_1(raw.astype(np.int16), 1, 64)


# ---------------------------------------------------------------------------------------------
# Bad input


def _good():
    w = random_weight(16, 128, 32, "zp")
    return torch.randn(3, 128), w


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a, w: (a, w._replace(scales=w.scales[:, :2].contiguous())), ValueError, "scales must have shape"),
        (lambda a, w: (a, w._replace(scales=w.scales.repeat(1, 2))), ValueError, "scales must have shape"),
        (lambda a, w: (a, w._replace(group_size=48)), ValueError, "group_size must be one of 32, 64, 128"),
        (lambda a, w: (a, w._replace(group_size=64, scales=w.scales[:, :2].contiguous(), zero_points=None)), None, None),
        (lambda a, w: (a[:, :96].contiguous(), w._replace(qweight=w.qweight[:, :12].contiguous(),
                       scales=w.scales[:, :1].contiguous(), zero_points=w.zero_points[:, :1].contiguous(),
                       group_size=64)), ValueError, "must be a multiple of group_size 64"),  # fmt: skip
        (lambda a, w: (a, w._replace(mins=w.scales)), ValueError, "zero_points and mins are exclusive"),
        (lambda a, w: (a.to(torch.int32), w), TypeError, "^a must have dtype"),
        (lambda a, w: (a, w._replace(qweight=w.qweight.to(torch.int64))), TypeError, "qweight must have dtype int32"),
        (lambda a, w: (a, w._replace(qweight=w.qweight.view(torch.float32))), TypeError, "qweight must have dtype int32"),
        (lambda a, w: (a, w._replace(scales=w.scales.to(torch.int32))), TypeError, "scales must have dtype"),
        (lambda a, w: (a, w._replace(zero_points=w.zero_points.to(torch.int32))), TypeError, "zero_points must have dtype uint8"),
        (lambda a, w: (a, w._replace(zero_points=None, mins=w.scales.float())), TypeError, "mins must have the dtype of scales"),
        (lambda a, w: (a, w._replace(zero_points=w.zero_points + 9)), ValueError, "zero_points must hold 4-bit values"),
        (lambda a, w: (torch.randn(128, 3).T, w), ValueError, "^a must be contiguous"),
        (lambda a, w: (torch.randn(3, 256)[:, :128], w), ValueError, "^a must be contiguous"),
        (lambda a, w: (torch.randn(3, 64), w), ValueError, r"^a.shape\[1\] must be 128"),
        (lambda a, w: (torch.randn(128), w), ValueError, "^a must be 2-D"),
        (lambda a, w: (a, w._replace(qweight=w.qweight[:0])), ValueError, "qweight has an empty N"),
        (lambda a, w: (a, w._replace(qweight=torch.randint(0, 9, (16, 32), dtype=torch.int32).T)), ValueError, "qweight must be contiguous"),
        (lambda a, w: (a, w._replace(group_size=32.0)), TypeError, "group_size must be an int"),
    ],
)
def test_bad_input_raises(change, error, match):
    a, w = change(*_good())
    if error is None:  # a control: the same arguments made consistent are accepted
        w.gemm(a)
        return
    with pytest.raises(error, match=match):
        w.gemm(a)


def test_zero_tokens():
    a, w = _good()
    out = w.gemm(a[:0])
    assert out.shape == (0, 16) and out.dtype == a.dtype


def test_pack_int4_refuses():
    with pytest.raises(ValueError, match="q must hold 4-bit values"):
        kernels.pack_int4(torch.tensor([[16] + [0] * 7]))
    with pytest.raises(ValueError, match="multiple of 8"):
        kernels.pack_int4(torch.zeros(2, 12, dtype=torch.uint8))
    with pytest.raises(TypeError, match="q must have dtype"):
        kernels.pack_int4(torch.zeros(2, 8))


# ---------------------------------------------------------------------------------------------
# torch.library: the native schema's fake, opcheck, and torch.compile through the public op


def _has_schema() -> bool:
    return library.load() is None and hasattr(torch.ops.kernels, "w4a16_gemm")


@pytest.mark.skipif(not _has_schema(), reason="the loaded native library has no kernels::w4a16_gemm schema")
@pytest.mark.parametrize("mode", MODES)
def test_opcheck(mode):
    w = random_weight(24, 64, 32, mode, torch.float32)
    for m in (0, 5):
        a = torch.randn(m, 64)
        torch.library.opcheck(torch.ops.kernels.w4a16_gemm, (a, w.qweight, w.scales, w.zero_points, w.mins, 32))


def test_torch_compile():
    torch._dynamo.reset()
    w = random_weight(72, 128, 64, "min", torch.float32)

    def layer(x):
        return kernels.w4a16_gemm(x, w.qweight, w.scales, mins=w.mins, group_size=64).relu()

    a = torch.randn(7, 128)
    got = torch.compile(layer, fullgraph=True)(a)
    assert_close(got, reference.w4a16_gemm(a, w.qweight, w.scales, None, w.mins, 64).relu(), torch.float32)
