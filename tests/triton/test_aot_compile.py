"""The Triton kernels compile ahead of time for AMD (gfx942) with no GPU and no ROCm installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"


def test_aot_compile_for_amd(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PYTHON_DIR), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.triton.aot", "--target", "hip:gfx942"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("ok ", "FAIL"))]
    assert lines and all(line.startswith("ok ") and "hsaco" in line for line in lines), report
    compiled = {line.split()[2].split("[")[0] for line in lines}
    assert compiled == {"rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul",
                        "gelu_erf_and_mul", "gelu_tanh_and_mul", "store_kv_cache", "paged_decode",
                        "merge_splits", "paged_prefill", "merge_attention_states", "w4a16_gemm",
                        "quantize_fp8_rows", "quantize_fp8_amax", "quantize_fp8_tensor", "fp8_gemm"}, report
