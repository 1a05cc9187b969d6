"""Argument validation shared by the public ops: each failure names the argument and what was expected."""

from __future__ import annotations

import math
import weakref
from typing import Callable

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def tensor(name: str, t, *, ndim: int, dtypes=FLOAT_DTYPES, layout: str = "") -> torch.Tensor:
    """``t`` is a tensor of ``ndim`` dims and one of ``dtypes``; ``layout`` names the dims in messages."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_names(dtypes)}; got {str(t.dtype).removeprefix('torch.')}")
    if t.dim() != ndim:
        shape = f" {layout}" if layout else ""
        raise ValueError(f"{name} must be {ndim}-D{shape}; got shape {tuple(t.shape)}")
    return t


def same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; put them on one device")


def same_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{name} must have the dtype of {ref_name} ({str(ref.dtype).removeprefix('torch.')}); "
            f"got {str(t.dtype).removeprefix('torch.')}"
        )


def dim_size(name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(f"{name}.shape[{dim}] must be {expected} ({what}); got shape {tuple(t.shape)}")


def nonempty(name: str, t: torch.Tensor, dim: int, what: str) -> None:
    if t.shape[dim] == 0:
        raise ValueError(f"{name} has an empty {what} dimension (shape {tuple(t.shape)}); only tokens may be 0")


def contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (strides {t.stride()} for shape {tuple(t.shape)}); call .contiguous() first")


def tracing() -> bool:
    """Inside torch.compile's trace: data pointers and tensor values are not known, so checks that
    need them are skipped (the kernels' own bounds checks still hold)."""
    return torch.compiler.is_compiling()


class CheckedTensors:
    """The tensors a value check last accepted, with the bounds it held them to.

    A check that reads values (a host reduction of several microseconds) need not read the same
    unchanged tensors again: the engine hands every layer of a step the same positions, slots, page
    table and lengths. Unchanged means the same tensor objects at the same version counters (torch
    bumps a tensor's counter, shared with its views, on every in-place write, and on every in-place
    change of shape or strides). Inference-mode tensors have no counter and are always checked.
    """

    def __init__(self) -> None:
        self._last: tuple = ((), None)

    @staticmethod
    def _state(tensors, bounds):
        if any(t.is_inference() for t in tensors):
            return None
        return tuple(t._version for t in tensors), bounds

    def check_once(self, tensors: tuple[torch.Tensor, ...], bounds: tuple, check: Callable[[], None]) -> None:
        """Run ``check`` (which raises on bad values) unless these tensors passed it unchanged last
        time with the same bounds; remember them once it passes."""
        state = self._state(tensors, bounds)
        refs, last = self._last
        if state is not None and state == last and all(r() is t for r, t in zip(refs, tensors)):
            return
        check()
        self._last = (tuple(weakref.ref(t) for t in tensors), state)


def heads_contiguous(name: str, t: torch.Tensor) -> None:
    """``t`` is ``[tokens, heads, head_dim]`` with contiguous heads; the token stride may be larger
    (a view of a fused qkv projection)."""
    if t.stride(2) != 1 or (t.shape[1] > 1 and t.stride(1) != t.shape[2]):
        raise ValueError(
            f"{name} must have contiguous heads (stride(2) == 1, stride(1) == head_dim); got strides {t.stride()}"
        )


def distinct(name: str, t: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if tracing():
        return
    if t.numel() and other.numel() and t.data_ptr() == other.data_ptr():
        raise ValueError(f"{name} and {other_name} must not share memory: both are written in place")


def positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def choice(name: str, value, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value
