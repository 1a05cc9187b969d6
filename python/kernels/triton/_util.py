"""Launch helpers shared by the Triton wrappers: block sizes, warp counts, output allocation, device guard.

Nothing here imports triton, and every launch parameter derives from the model's sizes (hidden,
head counts), never from the number of tokens, so a serving loop compiles each kernel once.
"""

from __future__ import annotations

import contextlib

import torch

# Most warps per program: 16 warps is 1024 threads on AMD (64-wide waves), the workgroup limit there.
MAX_WARPS = 16
# A program handles about this many elements when rows are short (several rows per program).
TARGET_ELEMENTS = 2048
MAX_ROWS = 16


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def num_warps(elements: int, max_warps: int = MAX_WARPS) -> int:
    """One warp per 256 elements of the program's block (8 per thread of a 32-wide warp)."""
    return max(1, min(max_warps, next_power_of_2(elements) // 256))


def rows_per_program(block: int) -> int:
    """Rows a program takes so that short rows still fill a block of about TARGET_ELEMENTS."""
    return max(1, min(MAX_ROWS, TARGET_ELEMENTS // block))


def new_empty(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The output allocation of every wrapper, on ``like``'s device, in ``dtype`` (default: ``like``'s).

    Tests replace it to poison outputs (and workspaces).
    """
    return torch.empty(shape, dtype=like.dtype if dtype is None else dtype, device=like.device)


def device_guard(t: torch.Tensor):
    """Make ``t``'s device current for the launch (Triton launches on the current device)."""
    if t.device.type == "cpu" or t.device.index is None:
        return contextlib.nullcontext()
    return torch.get_device_module(t.device.type).device(t.device.index)
