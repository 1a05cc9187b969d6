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


# ---------------------------------------------------------------------------------------------
# Paged attention


@pytest.fixture
def _one_thread():
    # On a shared 2-core machine two OpenMP threads contend with other processes and tiny ops
    # slow down 100x; one thread keeps these smoke runs short (their numbers are not checked).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check_attention_file(path, op, ceiling, shapes, variants, peer_names):
    doc = json.loads(path.read_text())
    assert set(doc) == TOP_KEYS and doc["name"] == op
    assert doc["command"].startswith(f"kernels bench {op} ") and "--backends reference" in doc["command"]
    assert set(doc["ceilings"]) == {"copy_gbps", "read_gbps"}
    spec = specs.SPECS[op]
    seen = set()
    for r in doc["results"]:
        assert set(r) == RECORD_KEYS
        assert r["op"] == op and r["backend"] == "reference" and r["dtype"] == "bfloat16"
        assert r["ceiling"] == ceiling
        seen.add((r["variant"], r["shape"]))
        dims = spec.parse_shape(r["shape"])
        us = r["median_us"]
        assert r["gbps"] == pytest.approx(spec.bytes_moved(dims, torch.bfloat16, r["variant"]) / us / 1e3, rel=2e-3)
        assert r["tflops"] == pytest.approx(spec.flops(dims, torch.bfloat16, r["variant"]) / us / 1e6, rel=2e-3)
        if ceiling in doc["ceilings"]:
            assert r["fraction"] == pytest.approx(r["gbps"] / doc["ceilings"][ceiling], rel=2e-2)
        else:
            assert r["fraction"] is None  # bf16_tflops is measured on GPUs only
        assert set(r["peers"]) == set(peer_names)
        if r["peers"]:
            assert r["vs_peer"] == pytest.approx(min(r["peers"].values()) / us, rel=1e-2)
    assert seen == {(v, s) for v in variants for s in shapes}
    return doc


def test_bench_decode_with_rope_smoke(tmp_path, capsys, _one_thread):
    code = bench(
        ["paged_decode_attention_with_rope_", "--shapes", "2x64x4x2x64x16", "--backends", "reference",
         "--peers", "unfused", "--reps", "2", "--json", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    _check_attention_file(
        tmp_path / "paged_decode_attention_with_rope_.json", "paged_decode_attention_with_rope_", "read_gbps",
        ["2x64x4x2x64x16"], ["neox"], ["unfused"],
    )  # fmt: skip


def test_bench_paged_decode_smoke(tmp_path, capsys, _one_thread):
    code = bench(
        ["paged_decode_attention", "--shapes", "2x64x4x2x64x16", "1x100x4x1x64x8", "--backends", "reference",
         "--peers", "sdpa", "--reps", "2", "--json", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ceiling read_gbps" in out and "TFLOP/s" in out and "sdpa us" in out
    _check_attention_file(
        tmp_path / "paged_decode_attention.json", "paged_decode_attention", "read_gbps",
        ["2x64x4x2x64x16", "1x100x4x1x64x8"], [""], ["sdpa"],
    )  # fmt: skip


def test_bench_paged_prefill_smoke(tmp_path, capsys, _one_thread):
    # one sequence over a cached prefix (SDPA with a bottom-right causal mask) and a ragged batch
    code = bench(
        ["paged_prefill_attention", "--shapes", "64x96x4x2x64", "--variants", ",ragged2", "--backends", "reference",
         "--peers", "sdpa", "--reps", "2", "--json", str(tmp_path / "p.json")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "bf16_tflops = not measured" in out
    doc = _check_attention_file(
        tmp_path / "p.json", "paged_prefill_attention", "bf16_tflops", ["64x96x4x2x64"], ["", "ragged2"], ["sdpa"]
    )
    assert "--variants ,ragged2" in doc["command"]


def test_bench_store_and_merge_smoke(tmp_path, capsys, _one_thread):
    code = bench(
        ["store_kv_cache", "--shapes", "40x2x64", "--backends", "reference", "--peers", "torch_eager", "--reps", "2",
         "--json", str(tmp_path / "s.json")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    code = bench(
        ["merge_attention_states", "--shapes", "8x4x64", "--backends", "reference", "--peers", "torch_eager",
         "--reps", "2", "--json", str(tmp_path / "m.json")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    for name, op in (("s.json", "store_kv_cache"), ("m.json", "merge_attention_states")):
        doc = json.loads((tmp_path / name).read_text())
        (r,) = doc["results"]
        assert r["op"] == op and r["ceiling"] == "copy_gbps" and r["tflops"] is None
        assert set(r["peers"]) == {"torch_eager"} and r["vs_peer"] > 0


def test_bench_peers_none_times_ours_only(tmp_path, capsys, _one_thread):
    code = bench(
        ["merge_attention_states", "--shapes", "8x4x64", "--backends", "reference", "--peers", "none",
         "--reps", "2", "--json", str(tmp_path / "m.json")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    doc = json.loads((tmp_path / "m.json").read_text())
    (r,) = doc["results"]
    assert r["peers"] == {} and r["vs_peer"] is None and r["median_us"] > 0
    assert "--peers none" in doc["command"]


def test_attention_bytes_and_flops():
    bf16 = torch.bfloat16
    decode = specs.SPECS["paged_decode_attention"]
    dims = decode.parse_shape("128x32768x32x8x128x16")
    assert decode.bytes_moved(dims, bf16) == 2 * 128 * 32768 * 8 * 128 * 2 + 2 * 128 * 32 * 128 * 2
    assert decode.flops(dims, bf16) == 4 * 128 * 32 * 32768 * 128
    assert decode.flops(dims, bf16, "window4096") == 4 * 128 * 32 * 4096 * 128
    prefill = specs.SPECS["paged_prefill_attention"]
    single = prefill.parse_shape("8192x8192x32x8x128")
    assert prefill.flops(single, bf16) == 4 * 32 * 128 * (8192 * 8193 // 2)  # causal: half the square
    assert prefill.flops(single, bf16, "noncausal") == 4 * 32 * 128 * 8192 * 8192
    ragged = prefill.parse_shape("8192x4096x32x8x128")
    assert prefill.flops(ragged, bf16, "ragged8") == 4 * 32 * 128 * 8 * (1024 * 3072 + 1024 * 1025 // 2)
    assert prefill.bytes_moved(ragged, bf16, "ragged8") == 2 * 8192 * 32 * 128 * 2 + 2 * 8 * 4096 * 8 * 128 * 2
    assert specs.SPECS["store_kv_cache"].bytes_moved((16, 8, 128), bf16) == 4 * 16 * 8 * 128 * 2 + 16 * 8
    assert specs.SPECS["merge_attention_states"].bytes_moved((16, 32, 128), bf16) == 3 * 16 * 32 * 128 * 2 + 3 * 16 * 32 * 4


def test_attention_defaults_and_inputs():
    decode = specs.SPECS["paged_decode_attention"]
    gpu = decode.shapes_for("cuda")
    assert len(gpu) == 24 and "128x32768x32x8x128x16" in gpu and "1x1024x32x8x128x64" in gpu
    assert decode.shapes_for("cpu") == ("1x2048x9x3x64x16", "16x2048x9x3x64x16")
    prefill = specs.SPECS["paged_prefill_attention"]
    assert prefill.cases_for("cuda") == (("", "8192x8192x32x8x128"), ("ragged8", "8192x4096x32x8x128"))
    # reference is never one of our default rows: it loops over sequences in Python
    from kernels.bench import runner

    assert "reference" not in runner.OUR_BACKENDS
    gen = torch.Generator().manual_seed(0)
    q, kc, vc, table, lens, window, cap = decode.make_inputs((3, 40, 4, 2, 64, 16), torch.float32, "cpu", "", gen)
    assert kc.shape == (9, 16, 2, 64) and table.dtype == torch.int32 and table.shape == (3, 3)
    assert sorted(table.flatten().tolist()) == list(range(9)) and lens.tolist() == [40] * 3
    assert (window, cap) == (None, None)
    args = prefill.make_inputs((8, 12, 4, 2, 64), torch.float32, "cpu", "ragged2+window5", gen)
    assert args[4].tolist() == [0, 4, 8] and args[5].tolist() == [12, 12] and args[6:] == (True, 5, None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["paged_decode_attention", "--shapes", "2x64x6x4x64x16"], "multiple of KVHEADS"),
        (["paged_decode_attention", "--shapes", "2x64x4x2x96x16"], "DIM must be one of"),
        (["paged_decode_attention", "--variants", "ragged2"], "bad variant 'ragged2'"),
        (["paged_prefill_attention", "--shapes", "64x32x4x2x64", "--variants", ""], "must fit in its CONTEXT"),
        (["paged_prefill_attention", "--shapes", "63x96x4x2x64", "--variants", "ragged2"], "split evenly"),
        (["gelu_and_mul", "--variants", "sigmoid"], "bad variant 'sigmoid'"),
    ],
)
def test_bad_attention_arguments_exit_2(argv, message, capsys):
    assert bench(argv) == 2
    assert message in capsys.readouterr().err


def test_w4a16_gemm_spec():
    spec = specs.SPECS["w4a16_gemm"]
    bf16, fp32 = torch.bfloat16, torch.float32
    dims = spec.parse_shape("4x8192x8192")
    weight = 8192 * 8192 // 2
    io = (4 * 8192 + 4 * 8192) * 2
    groups = 8192 * 64
    assert spec.bytes_moved(dims, bf16, "sym+group128") == weight + groups * 2 + io
    assert spec.bytes_moved(dims, bf16, "zp+group128") == weight + groups * 3 + io
    assert spec.bytes_moved(dims, bf16, "min+group128") == weight + groups * 4 + io
    assert spec.bytes_moved((1, 1536, 576), fp32, "min+group32") == 1536 * 288 + 1536 * 18 * 4 + (576 + 1536) * 4
    assert spec.flops(dims, bf16, "sym+group128") == 2 * 4 * 8192 * 8192
    assert spec.parse_variant(" ZP+group64") == "zp+group64"
    for bad in ("sym", "zp+group48", "nf4+group128"):
        with pytest.raises(specs.ShapeError):
            spec.parse_variant(bad)
    assert spec.check_case("sym+group128", (1, 64, 96)) is not None
    assert spec.peers_for_device("cuda") == ("bf16_matmul",) and spec.peers_for_device("cpu") == ("fp32_matmul",)


def test_bench_w4a16_gemm_smoke(tmp_path, capsys, _one_thread):
    code = bench(
        ["w4a16_gemm", "--shapes", "3x72x96", "--variants", "min+group32,zp+group32", "--backends", "reference,torch",
         "--dtype", "float32", "--reps", "2", "--json", str(tmp_path / "w.json")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads((tmp_path / "w.json").read_text())
    assert {(r["backend"], r["variant"]) for r in doc["results"]} == {
        (b, v) for b in ("reference", "torch") for v in ("min+group32", "zp+group32")
    }
    assert all(set(r["peers"]) == {"fp32_matmul"} and r["ceiling"] == "read_gbps" for r in doc["results"])


def test_w8a16_gemm_spec():
    spec = specs.SPECS["w8a16_gemm"]
    fp32, bf16 = torch.float32, torch.bfloat16
    dims = spec.parse_shape("1x49152x576")
    assert spec.bytes_moved(dims, fp32, "group32") == 49152 * 576 + 49152 * 18 * 2 + (576 + 49152) * 4
    assert spec.bytes_moved((4, 64, 256), bf16, "group128") == 64 * 256 + 64 * 2 * 2 + (4 * 256 + 4 * 64) * 2
    assert spec.flops(dims, fp32, "group32") == 2 * 49152 * 576
    assert spec.parse_variant(" Group64") == "group64"
    for bad in ("sym+group32", "group48", "32"):
        with pytest.raises(specs.ShapeError):
            spec.parse_variant(bad)
    assert spec.check_case("group128", (1, 64, 96)) is not None
    assert spec.peers_for_device("cpu") == ("fp32_matmul",)


def test_bench_w8a16_gemm_smoke(tmp_path, capsys, _one_thread):
    code = bench(
        ["w8a16_gemm", "--shapes", "3x72x96", "--variants", "group32", "--backends", "reference,native",
         "--dtype", "float32", "--reps", "2", "--json", str(tmp_path / "w.json")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads((tmp_path / "w.json").read_text())
    assert {(r["backend"], r["variant"]) for r in doc["results"]} == {("reference", "group32"), ("native", "group32")}
    assert all(set(r["peers"]) == {"fp32_matmul"} and r["ceiling"] == "read_gbps" for r in doc["results"])
