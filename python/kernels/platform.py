"""Which platform a tensor lives on, and what that device can do.

Platforms: ``cuda`` (NVIDIA), ``rocm`` (an AMD GPU, which torch also calls a ``cuda`` device but
builds with ``torch.version.hip``), ``xpu`` (Intel GPU) and ``cpu``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

PLATFORMS = ("cuda", "rocm", "xpu", "cpu")


def platform_of_device(device: torch.device) -> str:
    kind = device.type
    if kind == "cuda":
        return "rocm" if torch.version.hip else "cuda"
    if kind in ("xpu", "cpu"):
        return kind
    raise ValueError(f"tensors on device type {kind!r} are not supported; platforms: {', '.join(PLATFORMS)}")


def platform_of(*args) -> str:
    """The platform of the first tensor among ``args``."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return platform_of_device(a.device)
    raise TypeError("an op needs at least one tensor argument")


@dataclass(frozen=True)
class DeviceInfo:
    platform: str
    name: str
    # (major, minor) compute capability on NVIDIA, gfx version on ROCm as (major, minor); None elsewhere
    capability: tuple[int, int] | None
    multiprocessors: int | None
    cpu_isa: tuple[str, ...]


@functools.lru_cache(maxsize=None)
def cpu_isa() -> tuple[str, ...]:
    """The vector extensions of this CPU that the native CPU backend can use."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ()
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16", "amx_bf16")
    return tuple(w for w in wanted if w in flags)


def device_info(device: torch.device | str) -> DeviceInfo:
    device = torch.device(device)
    plat = platform_of_device(device)
    if plat in ("cuda", "rocm"):
        props = torch.cuda.get_device_properties(device)
        return DeviceInfo(plat, props.name, (props.major, props.minor), props.multi_processor_count, cpu_isa())
    if plat == "xpu":
        props = torch.xpu.get_device_properties(device)
        return DeviceInfo(plat, props.name, None, getattr(props, "gpu_subslice_count", None), cpu_isa())
    return DeviceInfo(plat, _cpu_name(), None, torch.get_num_threads(), cpu_isa())


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def local_platforms() -> list[str]:
    """Platforms with a usable device in this process."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.insert(0, "rocm" if torch.version.hip else "cuda")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        found.insert(0, "xpu")
    return found
