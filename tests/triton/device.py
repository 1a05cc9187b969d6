"""Where the Triton tests run: CPU tensors under the interpreter, else a GPU; importing this skips
the importing test module when neither is possible."""

import os

import pytest
import torch

pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET") == "1":
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("needs TRITON_INTERPRET=1 (set before import) or a GPU", allow_module_level=True)
