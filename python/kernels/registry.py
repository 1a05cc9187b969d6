"""Op -> implementations, per platform, in priority order.

Every public op ends in ``dispatch(op_name, *args)``. For the platform of the arguments it walks the
registered implementations in backend priority order (native, triton, torch, reference) and calls the
first whose ``supports(*args)`` accepts them. The reference runs everywhere, so every op runs
everywhere. ``backend(name)`` or ``KERNELS_BACKEND=name`` forces one backend; a forced backend that
cannot run the call raises ``BackendUnavailableError`` and never falls back.

Each registration declares, per platform, how it is verified: ``verified`` (the project's test suite
runs it on that hardware) or ``emulated`` (tested without the hardware: Triton interpreter,
ahead-of-time compile, the same torch ops on another device). ``kernels info`` prints that table.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import platform as _platform

BACKENDS = ("native", "triton", "torch", "reference")
VERIFICATION_LEVELS = ("verified", "emulated")


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run the call (not built, not registered, or unsupported arguments)."""


def _always(*args, **kwargs) -> str | None:
    return None


# Backends made of plain torch ops (the composite and the reference): tested on CPU in CI and on
# CUDA on the GPU machine; on ROCm and XPU the same torch ops run untested there.
TORCH_OPS_PLATFORMS = {"cpu": "verified", "cuda": "verified", "rocm": "emulated", "xpu": "emulated"}


@dataclass(frozen=True)
class Implementation:
    op: str
    backend: str
    fn: Callable
    # platform -> "verified" | "emulated"
    platforms: dict[str, str]
    # Returns None when the implementation can run these arguments, else the reason it cannot.
    supports: Callable[..., str | None] = field(default=_always)
    # Returns None when the implementation is usable in this process (library built, package
    # importable, device present), else the reason it is not.
    available: Callable[[str], str | None] = field(default=_always)


_REGISTRY: dict[str, list[Implementation]] = {}
_forced: list[str] = []


def register(
    op: str,
    backend: str,
    platforms: dict[str, str],
    supports: Callable[..., str | None] = _always,
    available: Callable[[str], str | None] = _always,
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for plat, level in platforms.items():
        if plat not in _platform.PLATFORMS:
            raise ValueError(f"platform must be one of {_platform.PLATFORMS}, got {plat!r}")
        if level not in VERIFICATION_LEVELS:
            raise ValueError(f"verification level must be one of {VERIFICATION_LEVELS}, got {level!r}")

    def decorate(fn: Callable) -> Callable:
        impls = [i for i in _REGISTRY.get(op, []) if i.backend != backend]
        impls.append(Implementation(op, backend, fn, dict(platforms), supports, available))
        impls.sort(key=lambda i: BACKENDS.index(i.backend))
        _REGISTRY[op] = impls
        _CANDIDATES.clear()
        return fn

    return decorate


def ops() -> list[str]:
    return sorted(_REGISTRY)


def implementations(op: str) -> list[Implementation]:
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(ops())}")
    return list(_REGISTRY[op])


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Force every op called inside the block onto backend ``name`` (raises if it cannot run)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


# Read once, at import: it forces a backend process-wide, and every op consults it (reading the
# environment per call was ~1 us of each op's ~2 us of CPU dispatch).
_ENV_BACKEND = os.environ.get("KERNELS_BACKEND") or None


def forced_backend() -> str | None:
    if _forced:
        return _forced[-1]
    name = _ENV_BACKEND
    if name is not None and name not in BACKENDS:
        raise ValueError(f"KERNELS_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


# (op, platform) -> the implementations usable in this process, in priority order. A plain dict
# (not functools.lru_cache) so that torch.compile traces a lookup rather than the availability probes.
_CANDIDATES: dict[tuple[str, str], tuple[Implementation, ...]] = {}


def _candidates(op: str, plat: str) -> tuple[Implementation, ...]:
    found = _CANDIDATES.get((op, plat))
    if found is None:
        found = tuple(i for i in implementations(op) if plat in i.platforms and i.available(plat) is None)
        _CANDIDATES[(op, plat)] = found
    return found


def prepare(platforms: list[str]) -> None:
    """Probe availability now (library loaded, triton importable) for every op on ``platforms``."""
    for op in _REGISTRY:
        for plat in platforms:
            _candidates(op, plat)


def select(op: str, *args) -> Implementation:
    """The implementation ``dispatch`` would call for these arguments."""
    plat = _platform.platform_of(*args)
    forced = forced_backend()
    if forced is None:
        return _best(op, plat, args)
    for impl in implementations(op):
        if impl.backend != forced:
            continue
        if plat not in impl.platforms:
            raise BackendUnavailableError(
                f"backend {forced!r} does not run {op} on platform {plat!r} "
                f"(it runs on: {', '.join(sorted(impl.platforms))})"
            )
        reason = impl.available(plat) or impl.supports(*args)
        if reason is not None:
            raise BackendUnavailableError(f"backend {forced!r} cannot run {op} here: {reason}")
        return impl
    raise BackendUnavailableError(f"backend {forced!r} has no implementation of {op}")


def _best(op: str, plat: str, args: tuple) -> Implementation:
    for impl in _candidates(op, plat):
        if impl.supports(*args) is None:
            return impl
    raise BackendUnavailableError(f"no implementation of {op} can run on {plat!r} with these arguments")


def dispatch(op: str, *args):
    return select(op, *args).fn(*args)


def dispatch_best(op: str, *args):
    """``dispatch`` ignoring a forced backend: how a composite runs its steps (forcing names the
    backend of the op called, not of the ops it is made of)."""
    return _best(op, _platform.platform_of(*args), args).fn(*args)
