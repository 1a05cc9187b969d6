"""Registration of the Triton backend, and that triton stays optional."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kernels
from kernels import registry

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"
OPS = [
    "rms_norm", "fused_add_rms_norm_", "rotary_embedding_", "silu_and_mul", "gelu_and_mul",
    "store_kv_cache", "paged_decode_attention", "paged_prefill_attention", "merge_attention_states", "w4a16_gemm",
    "quantize_fp8", "fp8_gemm",
]


def _run(code: str, **env_changes) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PYTHON_DIR), env.get("PYTHONPATH")) if p)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


def test_registered_for_every_op():
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    for op in OPS:
        impl = next(i for i in registry.implementations(op) if i.backend == "triton")
        expected = {"cuda": "verified", "rocm": "emulated", "xpu": "emulated"}
        if interpreted:
            expected["cpu"] = "emulated"
        assert impl.platforms == expected
    assert kernels.triton.INTERPRETER == interpreted


def test_importing_kernels_without_triton():
    # triton blocked: kernels imports, the backend reports why it cannot run, others still serve.
    proc = _run(
        """
        import sys
        sys.modules["triton"] = None
        import torch, kernels
        from kernels import registry
        impl = next(i for i in registry.implementations("rms_norm") if i.backend == "triton")
        reason = impl.available("cuda")
        assert reason and "triton" in reason, reason
        assert "triton" not in {k for k, v in sys.modules.items() if v is not None}
        x = torch.randn(2, 8)
        kernels.rms_norm(x, torch.ones(8))
        try:
            with kernels.backend("triton"):
                kernels.rms_norm(x, torch.ones(8))
        except kernels.BackendUnavailableError as e:
            print("unavailable:", e)
        """,
        TRITON_INTERPRET="1",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unavailable:" in proc.stdout and "triton is not importable" in proc.stdout, proc.stdout


def test_import_does_not_load_triton():
    proc = _run("import sys, kernels; print('triton' in sys.modules)", TRITON_INTERPRET=None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_interpreter_is_never_chosen_by_default():
    # On CPU the interpreted kernels run only when forced; automatic dispatch passes over them.
    import torch

    x, w = torch.randn(2, 64), torch.randn(64)
    assert registry.select("rms_norm", x, w, 1e-6).backend != "triton"
    if kernels.triton.INTERPRETER:
        with kernels.backend("triton"):
            assert registry.select("rms_norm", x, w, 1e-6).backend == "triton"


def test_a_platform_without_its_triton_plugin_is_reported_unavailable():
    pytest.importorskip("triton")
    from triton.backends import backends

    from kernels import triton as triton_backend

    for platform, plugin in (("cuda", "nvidia"), ("rocm", "amd"), ("xpu", "intel")):
        reason = triton_backend.available(platform)
        if plugin in backends:
            assert reason is None
        else:
            assert plugin in reason and platform in reason
