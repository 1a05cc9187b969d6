"""Registers the references as the last-resort ``reference`` backend on every platform.

Verification: ``registry.TORCH_OPS_PLATFORMS``.
"""

from .. import registry
from . import OPS

for _name, _fn in OPS.items():
    registry.register(_name, "reference", registry.TORCH_OPS_PLATFORMS)(_fn)
