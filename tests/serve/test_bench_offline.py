"""`kernels bench offline`: the command runs end to end on a tiny dummy model, writes a valid record,
computes the roofline as documented, and rejects bad arguments with argparse errors."""

import json

import pytest
import torch

from kernels import cli
from kernels.serve.bench import offline
from kernels.serve.loader.dummy import find_config
from kernels.serve.loader.hf import read_hf_config
from kernels.serve.model import CausalLM, ModelConfig

TINY = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64, "eos_token_id": 0,
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def test_roofline_hand_computed():
    # 2 requests, 4 in, 4 out: decode steps attend 5, 6, 7 tokens -> mean context 4 + 4/2 = 6;
    # bytes per step 1000 + 2 * 6 * 10 = 1120; at 1000 B/s a step takes 1.12 s for 2 tokens.
    r = offline.roofline(1000, 10, 2, 4, 4, read_gbps=1e-6)
    assert r["mean_context"] == 6
    assert r["kv_bytes_per_step"] == 120
    assert r["bytes_per_step"] == 1120
    assert r["tokens_per_s"] == pytest.approx(2 / 1.12)
    assert "N / ((weight_bytes + N * (IN + OUT/2) * kv_bytes_per_token) / read_gbps)" in r["formula"]
    assert offline.roofline(1000, 10, 2, 4, 4, read_gbps=None)["tokens_per_s"] is None


def test_roofline_of_llama_3_8b_matches_the_issue():
    # Issue 6: "the roofline is about 10,400 tok/s" for 64 x 128 x 128 in bfloat16 on an H100
    # (read bandwidth ~2.9 TB/s). Weights on the meta device: their bytes without the memory.
    config = ModelConfig.from_hf(read_hf_config(find_config("llama-3-8b")))
    model = CausalLM(config, torch.bfloat16, "meta")
    weights = offline.weight_bytes(model)
    assert weights == 2 * (2 * 128256 * 4096 + 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096) + 4096)
    kv = offline.kv_bytes_per_token(32, 8, 128, 2)
    assert kv == 131072
    r = offline.roofline(weights, kv, 64, 128, 128, read_gbps=2900)
    assert 10000 < r["tokens_per_s"] < 10800


def test_offline_runs_and_writes_a_record(tiny_config, tmp_path, capsys):
    out = tmp_path / "results"
    rc = cli.main(["bench", "offline", "--model", tiny_config, "--load-format", "dummy", "--device", "cpu",
                   "--num-requests", "3", "--input-len", "8", "--output-len", "5", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "output tokens/s" in printed and "roofline tokens/s" in printed and "transformers_generate" in printed
    doc = json.loads((out / "serve_offline.json").read_text())
    assert doc["name"] == "serve_offline"
    for key in ("device", "commit", "torch", "command", "threads", "ceilings", "timing", "results"):
        assert key in doc, key
    assert doc["ceilings"]["read_gbps"] > 0
    assert "kernels bench offline" in doc["command"] and "--num-requests 3" in doc["command"]
    (rec,) = doc["results"]
    assert rec["op"] == "serve_offline"
    assert rec["shape"] == "3x8x5"
    assert rec["dtype"] == "float32"
    assert rec["variant"] == "tiny+dummy+greedy+ignore_eos"
    for key in ("tokens_per_s", "total_tokens_per_s", "requests_per_s", "wall_s", "mean_ttft_ms", "mean_tpot_ms",
                "roofline_tokens_per_s", "fraction"):
        assert rec[key] > 0, key
    assert rec["ceiling"] == "roofline_tokens_per_s"
    assert rec["tokens_per_s"] == pytest.approx(3 * 5 / rec["wall_s"], rel=1e-3)
    # Three timed runs by default; the headline is the median one.
    assert len(rec["runs_tokens_per_s"]) == 3
    assert rec["tokens_per_s"] == pytest.approx(sorted(rec["runs_tokens_per_s"])[1], rel=1e-3)
    assert "--repeats 3" in doc["command"] and "median of 3 runs" in doc["timing"]["what"]
    assert rec["total_tokens_per_s"] == pytest.approx(3 * 13 / rec["wall_s"], rel=1e-3)
    assert rec["fraction"] == pytest.approx(rec["tokens_per_s"] / rec["roofline_tokens_per_s"], rel=1e-2)
    roof = rec["roofline"]
    assert roof["kv_bytes_per_token"] == 2 * 1 * 64 * 2 * 4
    # embed + head, 2 layers of qkv (128 + 2*64 rows), o, gate_up, down and two norms, the final norm; fp32
    layer = 256 * 64 + 64 * 128 + 256 * 64 + 64 * 128 + 2 * 64
    assert roof["weight_bytes"] == 4 * (2 * 256 * 64 + 2 * layer + 64)
    assert roof["mean_context"] == 8 + 5 / 2
    # The peer ran on the same weights and batch: fp32 greedy gives the same tokens.
    assert rec["peers"]["transformers_generate"] > 0
    # Timed as the engine is: three runs after a warm-up, the median one reported.
    peer_runs = rec["peer_runs_tokens_per_s"]["transformers_generate"]
    assert len(peer_runs) == 3 and rec["peers"]["transformers_generate"] == pytest.approx(sorted(peer_runs)[1], rel=1e-3)
    assert rec["vs_peer"] == pytest.approx(rec["tokens_per_s"] / rec["peers"]["transformers_generate"], rel=1e-2)
    assert rec["peer_check"]["transformers_generate"]["identical_outputs"] == 1.0
    # The timed run computed every prompt token (no prefix-cache hits from the warm-up).
    assert rec["engine_stats"]["prompt_tokens_cached"] == 0
    assert rec["engine_stats"]["prompt_tokens_computed"] == 3 * 8
    assert "reference" not in rec  # llama.cpp's numbers go only with the default model's decode1 on CPU


def test_json_file_path_and_no_peers(tiny_config, tmp_path):
    path = tmp_path / "x" / "mine.json"
    rc = offline.main(["--model", tiny_config, "--load-format", "dummy", "--device", "cpu", "--num-requests", "1",
                       "--input-len", "4", "--output-len", "3", "--peers", "none", "--no-warmup", "--repeats", "1",
                       "--json", str(path)])
    assert rc == 0
    rec = json.loads(path.read_text())["results"][0]
    assert rec["peers"] == {} and rec["vs_peer"] is None and rec["warmup"] is False
    assert len(rec["runs_tokens_per_s"]) == 1  # --repeats 1 below


def test_workload_defaults():
    args = offline.parse_args(["--device", "cpu"])
    assert (args.num_requests, args.input_len, args.output_len) == (64, 128, 128)
    assert args.peer_list == ["transformers_generate"] and args.dtype == "float32"
    args = offline.parse_args(["--device", "cpu", "--workload", "decode1", "--output-len", "32"])
    assert (args.num_requests, args.input_len, args.output_len) == (1, 128, 32)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-requests", "0"], "--num-requests must be at least 1"),
        (["--output-len", "-3"], "--output-len must be at least 1"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--peers", "vllm"], "unknown peer 'vllm'"),
        (["--peers", ","], "--peers is empty"),
        (["--load-format", "dummy"], "--load-format dummy needs --model"),
        (["--workload", "huge"], "invalid choice: 'huge'"),
        (["--input-len", "many"], "invalid int value: 'many'"),
        (["--dtype", "int8"], "invalid choice: 'int8'"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "offline", "--device", "cpu", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_no_cuda_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    with pytest.raises(SystemExit):
        offline.main(["--device", "cuda"])
    assert "--device cuda: no CUDA device" in capsys.readouterr().err


def test_too_long_for_the_model_and_missing_model(tiny_config, capsys):
    rc = offline.main(["--model", tiny_config, "--load-format", "dummy", "--device", "cpu", "--num-requests", "1",
                       "--input-len", "60", "--output-len", "8", "--peers", "none"])
    assert rc == 2
    assert "exceeds the model's context length (64)" in capsys.readouterr().err
    rc = offline.main(["--model", "/nonexistent/model.gguf", "--device", "cpu", "--peers", "none"])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "offline", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("roofline", "transformers_generate", "--load-format", "decode1", "llama-3-8b", "read_gbps"):
        assert word in text, word
