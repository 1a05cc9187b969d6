"""Finds and loads the compiled library (``libkernels_C.so``) into torch.

The library registers the ``torch.ops.kernels.*`` schemas and their CPU / CUDA implementations
through torch's stable ABI. ``KERNELS_NATIVE_LIB`` points at another build of it (development).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

LIBRARY_NAME = "libkernels_C.so"


def _search_paths() -> list[Path]:
    override = os.environ.get("KERNELS_NATIVE_LIB")
    if override:
        return [Path(override)]
    import kernels

    # An editable install keeps the sources and the built library in different folders,
    # both listed in the package's __path__.
    return [Path(p) / LIBRARY_NAME for p in kernels.__path__]


_NOT_TRIED = object()
_load_result: object = _NOT_TRIED
_has_kernel: dict[tuple[str, str], bool] = {}


def _load_once() -> str | None:
    paths = _search_paths()
    for path in paths:
        if path.is_file():
            torch.ops.load_library(str(path))
            return None
    return f"{LIBRARY_NAME} not found (looked in: {', '.join(str(p.parent) for p in paths)}); reinstall with `pip install .`"


def load() -> str | None:
    """Load the library once; returns None on success, else why it could not be loaded."""
    global _load_result
    if _load_result is _NOT_TRIED:
        _load_result = _load_once()
    return _load_result


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the loaded library registered ``kernels::op`` for ``dispatch_key`` (CPU, CUDA)."""
    key = (op, dispatch_key)
    if key not in _has_kernel:
        _has_kernel[key] = load() is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"kernels::{op}", dispatch_key)
    return _has_kernel[key]
