"""Registers the references as the last-resort ``reference`` backend on every platform.

Plain torch ops: tested on CPU and on the GPU machine's CUDA; on ROCm and XPU untested there.
"""

from .. import registry
from . import OPS

PLATFORMS = {"cpu": "verified", "cuda": "verified", "rocm": "emulated", "xpu": "emulated"}

for _name, _fn in OPS.items():
    registry.register(_name, "reference", PLATFORMS)(_fn)
