import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels import registry

ROOT = Path(__file__).resolve().parents[1]


def test_native_is_chosen_first_on_cpu():
    x, w = torch.randn(2, 64), torch.randn(64)
    assert registry.select("rms_norm", x, w, 1e-6).backend == "native"


def test_forcing_a_backend_is_honoured_and_restored():
    x, w = torch.randn(2, 64), torch.randn(64)
    with kernels.backend("reference"):
        assert registry.select("rms_norm", x, w, 1e-6).backend == "reference"
        with kernels.backend("torch"):
            assert registry.select("rms_norm", x, w, 1e-6).backend == "torch"
        assert registry.select("rms_norm", x, w, 1e-6).backend == "reference"
    assert registry.select("rms_norm", x, w, 1e-6).backend == "native"


def test_forced_backend_that_cannot_run_raises_instead_of_falling_back(monkeypatch):
    x, w = torch.randn(2, 64), torch.randn(64)
    # Pretend the library lacks CPU kernels: the forced call must raise, never use another backend.
    unbuilt = [
        dataclasses.replace(i, available=lambda platform: "not built") if i.backend == "native" else i
        for i in registry.implementations("rms_norm")
    ]
    monkeypatch.setitem(registry._REGISTRY, "rms_norm", unbuilt)
    registry._CANDIDATES.clear()
    with kernels.backend("native"), pytest.raises(kernels.BackendUnavailableError, match="not built"):
        kernels.rms_norm(x, w)
    # Unforced, dispatch moves on to the next backend.
    assert registry.select("rms_norm", x, w, 1e-6).backend != "native"
    registry._CANDIDATES.clear()


def test_forced_backend_on_a_platform_it_does_not_run_on_raises(monkeypatch):
    monkeypatch.setitem(
        registry._REGISTRY,
        "silu_and_mul",
        [dataclasses.replace(i, platforms={"cuda": "verified"}) if i.backend == "native" else i
         for i in registry.implementations("silu_and_mul")],
    )
    with kernels.backend("native"), pytest.raises(kernels.BackendUnavailableError, match="platform 'cpu'"):
        kernels.silu_and_mul(torch.randn(2, 8))


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        with kernels.backend("cutlass"):
            pass


def test_env_var_forces_backend():
    code = "import torch, kernels; print(kernels.registry.select('silu_and_mul', torch.randn(2, 8)).backend)"
    env = {**os.environ, "KERNELS_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"


def test_every_op_has_every_backend_kind_and_reference_everywhere():
    for op in ("rms_norm", "fused_add_rms_norm_", "rotary_embedding_", "silu_and_mul", "gelu_and_mul"):
        impls = registry.implementations(op)
        assert [i.backend for i in impls] == sorted((i.backend for i in impls), key=registry.BACKENDS.index)
        assert impls[-1].backend == "reference"
        assert set(impls[-1].platforms) == {"cuda", "rocm", "xpu", "cpu"}
        assert {"native", "triton", "torch"} <= {i.backend for i in impls}
