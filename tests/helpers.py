"""Shared checks: compare with the float32 reference, poison memory, list devices and backends."""

from __future__ import annotations

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative norm error allowed per dtype (float32 reference, math in float32 everywhere).
NORM_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
# Elementwise bound |out - ref| <= ATOL + RTOL * |ref|: catches a few wrong or unwritten elements
# that a norm over millions would hide. Two ulps of the dtype plus headroom for ops that round twice.
ELEM_RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}
ELEM_ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def backends_for(device: str) -> list[str]:
    """Our implementations under test on a device (the reference is the ground truth, not a subject)."""
    return ["native"] if device == "cpu" else ["native", "triton"]


def device_backend_params():
    params = [("cpu", "native")]
    params += [pytest.param("cuda", b, marks=pytest.mark.gpu) for b in ("native", "triton")]
    return params


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "output") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != {ref.dtype}"
    if out.numel() == 0:
        return
    o, r = out.double().cpu(), ref.double().cpu()
    assert not torch.isnan(o).any(), f"{what}: {int(torch.isnan(o).sum())} NaN elements (unwritten?)"
    rel = ((o - r).norm() / r.norm().clamp_min(1e-30)).item()
    assert rel <= NORM_TOL[dtype], f"{what}: relative norm error {rel:.3e} > {NORM_TOL[dtype]:.0e}"
    bad = (o - r).abs() > ELEM_ATOL[dtype] + ELEM_RTOL[dtype] * r.abs()
    if bad.any():
        idx = tuple(i.item() for i in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} elements off, first at {idx}: {o[idx].item()} vs {r[idx].item()}")


def poison_allocator(nbytes: int, device: str) -> None:
    """Fill and free a block so that a following allocation of that size likely reuses NaN memory."""
    if nbytes:
        torch.full((nbytes // 4 + 1,), float("nan"), dtype=torch.float32, device=device)
