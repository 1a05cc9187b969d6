"""`kernels bench` on CPU: tiny shapes, the result-file schema, the plot, argument errors.

Our rows come from whichever of native / reference runs here (native when the library is built),
so the test passes on a machine without a build; the numbers themselves are not checked.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from kernels.bench import ceilings, cli, correctness, peers, specs

TOP_KEYS = {"name", "device", "commit", "torch", "command", "threads", "ceilings", "timing", "results"}
RECORD_KEYS = {
    "op", "backend", "variant", "shape", "dtype", "median_us", "gbps", "tflops",
    "ceiling", "fraction", "peers", "vs_peer",
}  # fmt: skip


def bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kernels")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return cli.run(parser.parse_args(["bench", *argv]))


@pytest.fixture(autouse=True)
def _small_ceilings(monkeypatch):
    # The ceilings' values are not under test here: small buffers keep the run short.
    monkeypatch.setattr(ceilings, "CPU_BUFFER_BYTES", 8 << 20)


def _check_file(path, op, peer_names):
    doc = json.loads(path.read_text())
    assert set(doc) == TOP_KEYS
    assert doc["name"] == op
    assert doc["command"].startswith(f"kernels bench {op} ")
    for key in ("device", "commit", "torch"):
        assert isinstance(doc[key], str) and doc[key]
    assert doc["torch"] == torch.__version__
    assert isinstance(doc["threads"], int) and doc["threads"] >= 1
    assert set(doc["ceilings"]) == {"copy_gbps", "read_gbps"}
    assert all(isinstance(v, float) and v > 0 for v in doc["ceilings"].values())
    assert doc["timing"]["cpu"] == "perf_counter"
    assert doc["results"], "no records"
    for r in doc["results"]:
        assert set(r) == RECORD_KEYS
        assert r["op"] == op
        assert r["backend"] in ("native", "reference")
        assert r["dtype"] == "bfloat16"
        assert r["shape"] == "2x512"
        assert isinstance(r["variant"], str)
        assert r["ceiling"] == "copy_gbps" and r["tflops"] is None
        for key in ("median_us", "gbps", "fraction", "vs_peer"):
            assert isinstance(r[key], (int, float)) and r[key] > 0, key
        assert "torch_eager" in r["peers"] and set(r["peers"]) <= set(peer_names)
        assert all(isinstance(v, float) and v > 0 for v in r["peers"].values())
        assert r["vs_peer"] == pytest.approx(min(r["peers"].values()) / r["median_us"], rel=1e-2)
        assert r["fraction"] == pytest.approx(r["gbps"] / doc["ceilings"]["copy_gbps"], rel=2e-2, abs=2e-3)
    return doc


def test_bench_rms_norm_with_compile_peer(tmp_path, capsys):
    code = bench(
        ["rms_norm", "--shapes", "2x512", "--backends", "native,triton,reference", "--reps", "3",
         "--json", str(tmp_path), "--plot", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "torch_eager us" in out and "vs_peer" in out
    doc = _check_file(tmp_path / "rms_norm.json", "rms_norm", ["torch_eager", "torch_compile"])
    # torch.compile needs a working C++ compiler on CPU: where it cannot run, the run says so.
    assert all("torch_compile" in r["peers"] for r in doc["results"]) or "peer torch_compile skipped" in out
    assert "--json" in doc["command"] and "--shapes 2x512" in doc["command"]
    assert (tmp_path / "rms_norm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_inplace_rope_into_named_files(tmp_path, capsys):
    # rotary_embedding_ is in place (inputs restored between implementations), q and k are strided
    # views; the alias without the trailing underscore is accepted; .json / .png name single files.
    json_path, png_path = tmp_path / "r" / "rope.json", tmp_path / "rope.png"
    code = bench(
        ["rotary_embedding", "--shapes", "2x512", "--backends", "native,reference", "--peers", "torch_eager",
         "--reps", "3", "--json", str(json_path), "--plot", str(png_path)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    doc = _check_file(json_path, "rotary_embedding_", ["torch_eager"])
    assert {r["variant"] for r in doc["results"]} == {"neox"}
    assert png_path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope"], "unknown op 'nope'"),
        (["rms_norm", "--shapes", "12by4"], "bad shape '12by4'"),
        (["rms_norm", "--shapes", "0x4096"], "bad shape '0x4096'"),
        (["rotary_embedding_", "--shapes", "4x100"], "multiple of 512"),
        (["rms_norm", "--backends", "cudnn"], "unknown backend 'cudnn'"),
        (["rms_norm", "--peers", "flashinfer"], "unknown peer 'flashinfer'"),
        (["rms_norm", "--reps", "0"], "--reps must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert bench(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_the_kernels_command_runs_bench(capsys):
    from kernels import cli as kernels_cli

    assert kernels_cli.main(["bench", "rms_norms"]) == 2
    assert "unknown op 'rms_norms'" in capsys.readouterr().err


def test_nothing_to_time_is_an_error_not_a_crash(capsys):
    # triton is never timed on CPU (interpreter only): nothing runs, exit 1 with a hint.
    assert bench(["silu_and_mul", "--shapes", "2x512", "--backends", "triton", "--reps", "1"]) == 1
    captured = capsys.readouterr()
    assert "Triton runs on CPU only in its interpreter" in captured.out
    assert "--backends reference" in captured.err


def test_resolve_op():
    assert specs.resolve_op("fused_add_rms_norm") == ["fused_add_rms_norm_"]
    assert specs.resolve_op("silu_and_mul") == ["silu_and_mul"]
    assert specs.resolve_op("all") == list(specs.OP_NAMES)
    with pytest.raises(KeyError):
        specs.resolve_op("rms")


def test_bytes_moved():
    bf16 = torch.bfloat16
    assert specs.SPECS["rms_norm"].bytes_moved((4096, 4096), bf16) == (2 * 4096 * 4096 + 4096) * 2
    assert specs.SPECS["fused_add_rms_norm_"].bytes_moved((8, 64), bf16) == (4 * 8 * 64 + 64) * 2
    assert specs.SPECS["silu_and_mul"].bytes_moved((16, 14336), bf16) == 3 * 16 * 14336 * 2
    # Llama-3-8B: 32 + 8 heads of 128 read and written, int64 positions, one 128-wide cache row each
    assert specs.SPECS["rotary_embedding_"].bytes_moved((16, 4096), bf16) == 2 * 16 * 40 * 128 * 2 + 16 * 8 + 16 * 128 * 2


def test_rope_inputs_are_llama3_views_with_real_frequencies():
    gen = torch.Generator().manual_seed(0)
    positions, q, k, cache, is_neox = specs.SPECS["rotary_embedding_"].make_inputs((3, 4096), torch.float32, "cpu", "neox", gen)
    assert (q.shape, k.shape, is_neox) == ((3, 32, 128), (3, 8, 128), True)
    assert q.stride(0) == k.stride(0) == (32 + 2 * 8) * 128  # views of one fused qkv row
    assert positions.unique().numel() == 3 and int(positions.max()) < cache.shape[0]
    p = int(positions[0])
    assert cache[p, 1].item() == pytest.approx(torch.cos(torch.tensor(p / 500000 ** (2 / 128), dtype=torch.float64)).item(), abs=1e-6)


def test_a_wrong_implementation_fails_the_check():
    spec = specs.SPECS["rms_norm"]
    args = spec.make_inputs((4, 256), torch.bfloat16, "cpu", "", torch.Generator().manual_seed(0))
    ok, detail = correctness.check(spec, args, lambda x, w, eps: x * 1.0)
    assert not ok and "relative error" in detail
    ok, _ = correctness.check(spec, args, spec.composite)
    assert ok


class _FakeRMSNorm(torch.autograd.Function):
    # The shape of Liger's recent signature: extra optional parameters after eps.
    @staticmethod
    def forward(ctx, X, W, eps, offset=0.0, casting_mode="llama", in_place=True, row_mode=None):
        return X * W + eps + offset + (casting_mode == "llama")


class _FakeNeedsMore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, W, eps, group_size):
        return X


def test_liger_binding_follows_the_signature_found():
    call = peers._bind_positional(_FakeRMSNorm, ("x", "w", "eps"), {"offset": 0.0, "casting_mode": "llama"})
    x, w = torch.ones(2, 4), torch.full((4,), 2.0)
    assert torch.equal(call(x, w, 0.5), torch.full((2, 4), 3.5))
    with pytest.raises(peers.PeerUnavailable, match="group_size"):
        peers._bind_positional(_FakeNeedsMore, ("x", "w", "eps"), {})
