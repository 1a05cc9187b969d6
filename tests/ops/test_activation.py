import pytest
import torch

import kernels
from kernels import reference
from tests.helpers import DTYPES, assert_close, device_backend_params, poison_allocator

TOKENS = [0, 1, 7, 4096]
WIDTHS = [64, 4099, 8192]  # d: the output width; x is [tokens, 2 * d]


def _input(tokens, d, dtype, device):
    return torch.randn(tokens, 2 * d, dtype=dtype, device=device) * 2


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_silu_and_mul(device, backend, dtype, d, tokens):
    x = _input(tokens, d, dtype, device)
    poison_allocator(tokens * d * x.element_size(), device)
    with kernels.backend(backend):
        out = kernels.silu_and_mul(x)
    assert_close(out, reference.silu_and_mul(x), dtype)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_gelu_and_mul(device, backend, approximate, dtype, d, tokens):
    x = _input(tokens, d, dtype, device)
    poison_allocator(tokens * d * x.element_size(), device)
    with kernels.backend(backend):
        out = kernels.gelu_and_mul(x, approximate=approximate)
    assert_close(out, reference.gelu_and_mul(x, approximate), dtype)
