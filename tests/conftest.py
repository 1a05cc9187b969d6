import os

import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter. The flag must be set
# before triton (or kernels, which imports it) is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed(request):
    # A fresh seed per test (derived from its id), so inputs differ across tests but reruns reproduce.
    torch.manual_seed(hash(request.node.nodeid) % (2**31))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run by scripts/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
