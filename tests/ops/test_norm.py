import pytest
import torch

import kernels
from kernels import reference
from tests.helpers import DTYPES, assert_close, device_backend_params, poison_allocator

TOKENS = [0, 1, 7, 4096]
HIDDEN = [64, 4099, 8192]


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
def test_rms_norm(device, backend, dtype, hidden, tokens):
    x = torch.randn(tokens, hidden, dtype=dtype, device=device) * 3 + 0.5
    w = torch.randn(hidden, dtype=dtype, device=device)
    x_before = x.clone()
    poison_allocator(x.numel() * x.element_size(), device)
    with kernels.backend(backend):
        out = kernels.rms_norm(x, w, 1e-6)
    assert_close(out, reference.rms_norm(x, w, 1e-6), dtype)
    assert out.is_contiguous()
    assert torch.equal(x, x_before), "rms_norm modified its input"


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_strided_rows(device, backend, dtype):
    # q/k-norm style: normalise a view that skips columns of a wider tensor.
    wide = torch.randn(33, 3 * 128, dtype=dtype, device=device)
    x = wide[:, 128:256]
    w = torch.randn(128, dtype=dtype, device=device)
    with kernels.backend(backend):
        out = kernels.rms_norm(x, w, 1e-5)
    assert_close(out, reference.rms_norm(x, w, 1e-5), dtype)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
def test_fused_add_rms_norm(device, backend, dtype, hidden, tokens):
    x = torch.randn(tokens, hidden, dtype=dtype, device=device)
    residual = torch.randn(tokens, hidden, dtype=dtype, device=device) * 2
    w = torch.randn(hidden, dtype=dtype, device=device)
    ref_x, ref_res = x.clone(), residual.clone()
    reference.fused_add_rms_norm_(ref_x, ref_res, w, 1e-6)
    with kernels.backend(backend):
        assert kernels.fused_add_rms_norm_(x, residual, w, 1e-6) is None
    assert_close(residual, ref_res, dtype, "residual")
    assert_close(x, ref_x, dtype, "x")
