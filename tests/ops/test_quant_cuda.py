"""The native CUDA ``w4a16_gemm`` (csrc/cuda/quant/w4a16_kernel.cuh) against the float32 reference.

Forced onto backend ``native`` on fresh random inputs, outputs poisoned first (``_check``): the
token tiles (M 1..32 across 8-token tile edges), N not a multiple of the kernel's 128 channels,
K ending in a partial 128-k chunk, every mode, group size, activation and scale dtype, and shapes
that split K over a cluster of CTAs. Then what the kernel declines goes elsewhere.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import registry
from tests.ops.test_quant import GROUPS, MODES, _check, random_weight

pytestmark = pytest.mark.gpu

HALF = [torch.float16, torch.bfloat16]


def _native_cuda():
    impl = next((i for i in registry.implementations("w4a16_gemm") if i.backend == "native"), None)
    if impl is None or "cuda" not in impl.platforms or impl.available("cuda") is not None:
        pytest.skip("no native w4a16_gemm for CUDA in this build")
    return impl


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("mode", MODES)
def test_token_tiles_and_edges(dtype, group, mode):
    _native_cuda()
    # (N, K): N a multiple of 8 but not of 128; K with a partial last chunk (3 groups of 32 = 96,
    # or 128 + group); one whole-chunk K.
    for n, k in [(200, 96 if group == 32 else 128 + group), (72, 1024), (384, 512)]:
        for m in (1, 3, 4, 8, 9, 16, 17, 24, 32):
            _check("native", m, n, k, group, mode, dtype, device="cuda")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "m,n,k,group",
    [
        (1, 8192, 8192, 128),  # the decode shape of the benchmark (256 CTAs of 32 channels)
        (16, 8192, 8192, 128),
        (4, 1024, 8192, 32),  # few channel blocks: a cluster of 2 CTAs splits K
        (32, 4096, 4096, 64),  # 4 token tiles
        (5, 1000, 14336 + 32, 32),  # N with a partial tile, K with a partial chunk, split
    ],
)
def test_decode_shapes(m, n, k, group, mode, dtype):
    _native_cuda()
    _check("native", m, n, k, group, mode, dtype, device="cuda")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scales_of_any_dtype(dtype, scale_dtype):
    _native_cuda()
    for mode in MODES:
        _check("native", 5, 264, 640, 64, mode, dtype, scale_dtype, device="cuda")


def test_declined_calls_go_elsewhere():
    impl = _native_cuda()
    w = random_weight(256, 512, 128, "sym", torch.bfloat16, device="cuda")
    args = (w.qweight, w.scales, None, None, 128)
    for a in (
        torch.randn(33, 512, device="cuda", dtype=torch.bfloat16),  # more tokens than the kernel takes
        torch.randn(2, 512, device="cuda"),  # float32
        torch.randn(2 * 512 + 1, device="cuda", dtype=torch.bfloat16)[1:].view(2, 512),  # misaligned
    ):
        assert impl.supports(a, *args) is not None
        assert registry.select("w4a16_gemm", a, *args).backend != "native"
        ref = kernels.reference.w4a16_gemm(a, *args)
        torch.testing.assert_close(w.gemm(a).float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_side_stream():
    _native_cuda()
    w = random_weight(512, 1024, 64, "zp", torch.float16, device="cuda")
    a = torch.randn(3, 1024, device="cuda", dtype=torch.float16)
    expected = kernels.reference.w4a16_gemm(a, w.qweight, w.scales, w.zero_points, w.mins, 64)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), kernels.backend("native"):
        out = w.gemm(a)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=1e-2)
