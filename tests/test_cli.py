import os
import subprocess
import sys
from pathlib import Path

import kernels
from kernels import cli

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    try:
        cli.main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert kernels.__version__ in capsys.readouterr().out


def test_info_lists_every_op_with_cpu_native_verified(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for op in ("rms_norm", "fused_add_rms_norm_", "rotary_embedding_", "silu_and_mul", "gelu_and_mul"):
        line = next(l for l in out.splitlines() if l.startswith(op + " ") and " cpu " in l)
        assert "verified *" in line.split("cpu", 1)[1].split()[0] + " " + line.split("cpu", 1)[1].split()[1]
        rocm = next(l for l in out.splitlines() if l.startswith(op + " ") and " rocm " in l)
        assert rocm.split()[3] == "emulated", rocm  # the triton column


def test_support_matrix_doc_is_generated_from_the_registry():
    # docs/support-matrix.md embeds `kernels info --markdown`; regenerate it when registrations change.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "kernels.cli", "info", "--markdown"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    doc = (ROOT / "docs" / "support-matrix.md").read_text()
    assert out in doc, "docs/support-matrix.md is stale: paste the output of `kernels info --markdown`"
