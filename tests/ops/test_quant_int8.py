"""INT8 weight-only GEMM (``w8a16_gemm``), ``Int8Weight`` and the GGUF Q8_0 converter.

Every backend that can run here is compared with the float32 reference on fresh random inputs
(group sizes x dtypes x scale dtypes x shapes), outputs poisoned first. The reference's
dequantisation is checked against the definition, and the converter against the installed
``gguf`` package's own dequantisation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels
from kernels import reference, registry
from kernels.native import library
from tests.helpers import DTYPES, poison_allocator
from tests.ops.test_quant import assert_close

GROUPS = [32, 64, 128]


def _cpu_backends() -> list[str]:
    found = ["reference"]
    native = next((i for i in registry.implementations("w8a16_gemm") if i.backend == "native"), None)
    if native is not None and "cpu" in native.platforms and native.available("cpu") is None:
        found.append("native")
    return found


def random_weight(n: int, k: int, group: int, scale_dtype=torch.float16) -> kernels.Int8Weight:
    """Random codes over the whole int8 range, scales so that outputs of N(0, 1) activations are O(1)."""
    q = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    s = (torch.rand(n, k // group) + 0.5) / (74 * k**0.5)
    return kernels.Int8Weight(q, s.to(scale_dtype), group)


def _check(backend: str, m: int, n: int, k: int, group: int, dtype, scale_dtype=torch.float16):
    w = random_weight(n, k, group, scale_dtype)
    a = torch.randn(m, k).to(dtype)
    poison_allocator(m * n * a.element_size(), "cpu")
    with kernels.backend(backend):
        out = w.gemm(a)
    assert out.is_contiguous()
    assert_close(out, reference.w8a16_gemm(a, w.qweight, w.scales, group), dtype)


# ---------------------------------------------------------------------------------------------
# Backends against the reference


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", GROUPS)
def test_cpu_backends(backend, dtype, group):
    # N not a multiple of the kernel's 16-channel blocks (72); K = 3 groups, not a power of two.
    for n, k in [(72, 3 * group), (64, 256)]:
        for m in (0, 1, 2, 3, 5, 17, 64):
            _check(backend, m, n, k, group, dtype)


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize(
    "m,n,k,group,dtype",
    [
        (1, 4099, 576, 32, torch.float32),  # SmolLM2-135M's Q8_0 LM head (N 49152) cut to a prime N
        (4, 576, 1536, 32, torch.bfloat16),
        (129, 200, 1024, 128, torch.float16),
    ],
)
def test_cpu_backends_larger(backend, m, n, k, group, dtype):
    _check(backend, m, n, k, group, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_reference(dtype):
    # No GPU kernel: the reference runs there (the support matrix's CUDA cell); against its CPU self.
    w = random_weight(72, 192, 64)
    a = torch.randn(17, 192).to(dtype)
    poison_allocator(17 * 72 * a.element_size(), "cuda")
    got = kernels.w8a16_gemm(a.cuda(), w.qweight.cuda(), w.scales.cuda(), group_size=64)
    assert got.device.type == "cuda"
    assert_close(got, reference.w8a16_gemm(a, w.qweight, w.scales, 64), dtype)


@pytest.mark.parametrize("scale_dtype", DTYPES)
def test_scales_of_another_dtype(scale_dtype):
    for backend in _cpu_backends():
        _check(backend, 5, 72, 128, 64, torch.bfloat16, scale_dtype)


# ---------------------------------------------------------------------------------------------
# The reference's dequantisation, Int8Weight.rows, and the GGUF converter


def test_dequantize_by_definition():
    n, k, group = 6, 128, 64
    w = random_weight(n, k, group, torch.float32)
    expected = torch.empty(n, k, dtype=torch.float64)
    for row in range(n):
        for col in range(k):
            expected[row, col] = float(w.qweight[row, col]) * float(w.scales[row, col // group])
    got = kernels.dequantize_int8(w)
    assert got.dtype == torch.float32 and got.shape == (n, k) == w.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_are_the_dequantized_rows(dtype):
    w = random_weight(50, 96, 32)
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    got = w.rows(ids, dtype)
    assert got.shape == (2, 3, 96) and got.dtype == dtype
    torch.testing.assert_close(got, kernels.dequantize_int8(w)[ids].to(dtype), rtol=0, atol=0)


def _q8_0_blocks(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``[blocks, 32]`` int8 codes and ``[blocks]`` scales -> raw Q8_0 bytes: d (f16), then the codes."""
    return np.concatenate([d.astype("<f2").view(np.uint8).reshape(-1, 2), q.astype(np.int8).view(np.uint8)], axis=1)


def test_from_gguf_q8_0_by_definition():
    n, k = 6, 96
    blocks = n * k // 32
    q = np.random.randint(-128, 128, (blocks, 32))
    d = (np.random.rand(blocks) + 0.1).astype(np.float16)
    raw = _q8_0_blocks(q, d)
    expected = torch.from_numpy((q * d.astype(np.float64)[:, None]).reshape(n, k))
    for blob in (raw, torch.from_numpy(raw.reshape(n, -1)), raw.reshape(-1)):
        w = kernels.from_gguf_q8_0(blob, n, k)
        assert w.group_size == 32 and w.scales.dtype == torch.float16 and w.qweight.dtype == torch.int8
        assert w.shape == (n, k)
        torch.testing.assert_close(kernels.dequantize_int8(w).double(), expected, rtol=1e-6, atol=1e-6)


def test_from_gguf_q8_0_matches_gguf_py():
    # gguf is a dependency of the package; the GPU machine's --no-deps install may lack it.
    GGMLQuantizationType = pytest.importorskip("gguf").GGMLQuantizationType
    from gguf.quants import dequantize

    n, k = 5, 160
    blocks = n * k // 32
    raw = np.random.randint(0, 256, (blocks, 34), dtype=np.uint8)
    raw[:, :2] = np.random.randn(blocks).astype("<f2").view(np.uint8).reshape(-1, 2)  # finite d
    raw = raw.reshape(n, -1)
    expected = np.asarray(dequantize(raw, GGMLQuantizationType.Q8_0), dtype=np.float32)  # [n, k]
    got = kernels.dequantize_int8(kernels.from_gguf_q8_0(raw, n, k))
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-6, atol=1e-6)


def test_from_gguf_q8_0_refuses():
    raw = np.zeros((4, 34), dtype=np.uint8)
    with pytest.raises(ValueError, match="blocks must hold 2 Q8_0 blocks"):
        kernels.from_gguf_q8_0(raw, 1, 64)
    with pytest.raises(ValueError, match="k = 48 must be a multiple of 32"):
        kernels.from_gguf_q8_0(raw, 1, 48)
    with pytest.raises(TypeError, match="blocks must hold raw bytes"):
        kernels.from_gguf_q8_0(raw.astype(np.int16), 1, 64)


# ---------------------------------------------------------------------------------------------
# Bad input


def _good():
    return torch.randn(3, 128), random_weight(16, 128, 32)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a, w: (a, w._replace(scales=w.scales[:, :2].contiguous())), ValueError, "scales must have shape"),
        (lambda a, w: (a, w._replace(group_size=48)), ValueError, "group_size must be one of 32, 64, 128"),
        (lambda a, w: (a, w._replace(group_size=64, scales=w.scales[:, :2].contiguous())), None, None),
        (lambda a, w: (a[:, :96].contiguous(), w._replace(qweight=w.qweight[:, :96].contiguous(),
                       scales=w.scales[:, :1].contiguous(), group_size=64)),
         ValueError, "must be a multiple of group_size 64"),  # fmt: skip
        (lambda a, w: (a.to(torch.int32), w), TypeError, "^a must have dtype"),
        (lambda a, w: (a, w._replace(qweight=w.qweight.to(torch.uint8))), TypeError, "qweight must have dtype int8"),
        (lambda a, w: (a, w._replace(qweight=w.qweight.to(torch.int32))), TypeError, "qweight must have dtype int8"),
        (lambda a, w: (a, w._replace(scales=w.scales.to(torch.int32))), TypeError, "scales must have dtype"),
        (lambda a, w: (torch.randn(128, 3).T, w), ValueError, "^a must be contiguous"),
        (lambda a, w: (torch.randn(3, 64), w), ValueError, r"^a.shape\[1\] must be 128"),
        (lambda a, w: (torch.randn(128), w), ValueError, "^a must be 2-D"),
        (lambda a, w: (a, w._replace(qweight=w.qweight[:0])), ValueError, "qweight has an empty N"),
        (lambda a, w: (a, w._replace(qweight=w.qweight.T.contiguous().T)), ValueError, "qweight must be contiguous"),
        (lambda a, w: (a, w._replace(scales=w.scales.T.contiguous().T)), ValueError, "scales must be contiguous"),
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


# ---------------------------------------------------------------------------------------------
# torch.library: the native schema's fake, opcheck, and torch.compile through the public op


def _has_schema() -> bool:
    return library.load() is None and hasattr(torch.ops.kernels, "w8a16_gemm")


@pytest.mark.skipif(not _has_schema(), reason="the loaded native library has no kernels::w8a16_gemm schema")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    w = random_weight(24, 64, 32)
    for m in (0, 5):
        a = torch.randn(m, 64).to(dtype)
        torch.library.opcheck(torch.ops.kernels.w8a16_gemm, (a, w.qweight, w.scales, 32))


def test_torch_compile():
    torch._dynamo.reset()
    w = random_weight(72, 128, 64, torch.float32)

    def layer(x):
        return kernels.w8a16_gemm(x, w.qweight, w.scales, group_size=64).relu()

    a = torch.randn(7, 128)
    got = torch.compile(layer, fullgraph=True)(a)
    assert_close(got, reference.w8a16_gemm(a, w.qweight, w.scales, 64).relu(), torch.float32)
