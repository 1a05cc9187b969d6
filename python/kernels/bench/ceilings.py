"""The roofline of this machine, measured at the start of every run in the same process.

- ``copy_gbps``: ``dst.copy_(src)`` of a buffer far larger than the last-level cache; bytes read
  plus bytes written over the median time. The ceiling of every memory-bound op here.
- ``read_gbps``: ``src.sum()`` of such a buffer (float32); bytes read over the median time.
- GPU only: ``bf16_tflops`` (8192^3 bfloat16 matmul, 2*M*N*K flops) and ``fp8_tflops``
  (``torch._scaled_mm`` of float8_e4m3fn with per-tensor scales and fast accumulation, 8192^3,
  bfloat16 out), null where unsupported (before sm_89, or a torch without it).

Peaks are what this torch can reach on this device now (clocks, power, the sharing of the host),
which is what a fraction of the ceiling should be measured against, not a datasheet number.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

GPU_BUFFER_BYTES = 1 << 30  # 1 GiB: ~20x the L2 of an H100 / H200
CPU_BUFFER_BYTES = 256 << 20  # 256 MiB: several times any last-level cache, quick with few threads
MATMUL_SIZE = 8192


def _median_seconds(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def copy_gbps(device: torch.device) -> float:
    nbytes = GPU_BUFFER_BYTES if device.type == "cuda" else CPU_BUFFER_BYTES
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)  # touched, so that no page fault lands in the timed copies
    seconds = _median_seconds(lambda: dst.copy_(src), device, reps=20 if device.type == "cuda" else 10)
    return 2 * nbytes / seconds / 1e9


def read_gbps(device: torch.device) -> float:
    nbytes = GPU_BUFFER_BYTES if device.type == "cuda" else CPU_BUFFER_BYTES
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    seconds = _median_seconds(lambda: src.sum(), device, reps=20 if device.type == "cuda" else 10)
    return nbytes / seconds / 1e9


def bf16_tflops(device: torch.device) -> float:
    n = MATMUL_SIZE
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    seconds = _median_seconds(lambda: a @ b, device, reps=20, warmup=3)
    return 2 * n**3 / seconds / 1e12


def fp8_tflops(device: torch.device) -> float | None:
    """float8_e4m3fn x float8_e4m3fn -> bfloat16 with per-tensor scales; None where unsupported."""
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return None
    if torch.cuda.get_device_capability(device) < (8, 9):
        return None
    n = MATMUL_SIZE
    try:
        a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt wants
        one = torch.ones((), dtype=torch.float32, device=device)

        def mm():
            # use_fast_accum: the fastest mode cuBLASLt offers, so that the ceiling is the highest one
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)

        mm()
        seconds = _median_seconds(mm, device, reps=20, warmup=3)
    except (RuntimeError, TypeError) as e:
        print(f"note: fp8_tflops not measured ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return None
    return 2 * n**3 / seconds / 1e12


def measure(device: torch.device) -> dict[str, float | None]:
    """All ceilings of ``device``, rounded for the result file."""
    found: dict[str, float | None] = {"copy_gbps": copy_gbps(device), "read_gbps": read_gbps(device)}
    if device.type == "cuda":
        found["bf16_tflops"] = bf16_tflops(device)
        found["fp8_tflops"] = fp8_tflops(device)
        torch.cuda.empty_cache()
    return {k: (None if v is None else float(f"{v:.4g}")) for k, v in found.items()}
