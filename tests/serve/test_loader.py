"""Loaders: GGUF tensor types and name mapping, dummy weights, and clear errors on bad input.

Tiny GGUF files are written here the way llama.cpp's converter writes them (its names, and for the
llama architecture its q/k row permutation), from known Hugging Face-layout weights.
"""

import json
import os

import numpy as np
import pytest
import kernels
import torch

from kernels.serve.loader import load_model, shipped_configs
from kernels.serve.loader.dummy import CONFIG_DIR
from kernels.serve.model import ModelConfig

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 128, 2, 1, 64, 256, 64
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def hf_weights(arch: str, layers: int = 2) -> dict[str, np.ndarray]:
    """Random weights of a tiny model in the Hugging Face layout."""
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    per_layer = {
        "input_layernorm.weight": (HIDDEN,), "post_attention_layernorm.weight": (HIDDEN,),
        "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN), "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
        "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
        "mlp.gate_proj.weight": (FFN, HIDDEN), "mlp.up_proj.weight": (FFN, HIDDEN), "mlp.down_proj.weight": (HIDDEN, FFN),
    }
    if arch == "qwen2":
        per_layer.update({f"self_attn.{p}_proj.bias": (n * HEAD_DIM,) for p, n in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS))})
    if arch == "qwen3":
        per_layer.update({"self_attn.q_norm.weight": (HEAD_DIM,), "self_attn.k_norm.weight": (HEAD_DIM,)})
    shapes.update({f"model.layers.{i}.{n}": s for i in range(layers) for n, s in per_layer.items()})
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    # convert_hf_to_gguf.py's LlamaModel.permute: each head's rotate-halves rows -> interleaved pairs.
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch: str, weights: dict[str, np.ndarray], qtype=Q.F32) -> None:
    """Write ``weights`` as llama.cpp would: matrices as ``qtype``, vectors as F32."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_block_count(1 + max(int(n.split(".")[2]) for n in weights if n.startswith("model.layers.")))
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(VOCAB)
    for name, w in weights.items():
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            gname = f"blk.{layer}.{LAYER_NAMES[rest]}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            w = llama_cpp_permute(w, HEADS if ".q_proj." in name else KV_HEADS)
        t = qtype if w.ndim == 2 else Q.F32
        data = gguf.quants.quantize(w, t)
        writer.add_tensor(gname, data, raw_shape=w.shape if t in (Q.F32, Q.F16) else data.shape, raw_dtype=t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def assert_weights(model, expected: dict[str, np.ndarray]) -> None:
    assert set(model.expected_weight_names()) == set(expected)
    for name, w in expected.items():
        got = model.weight_slice(name)
        if isinstance(got, kernels.Int4Weight):  # a Q4_0 / Q4_1 projection kept packed (the default on CPU)
            got = kernels.dequantize_int4(got)
        if isinstance(got, kernels.Int8Weight):  # a Q8_0 LM head kept int8 (the default on CPU)
            got = kernels.dequantize_int8(got)
        assert torch.equal(got, torch.from_numpy(w)), f"{name} differs"


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda t: t.name)
def test_gguf_tensor_types(qtype, tmp_path):
    weights = hf_weights("llama")
    write_gguf(tmp_path / "m.gguf", "llama", weights, qtype)
    model = load_model(str(tmp_path / "m.gguf"), device="cpu", dtype="float32", load_format="gguf").model
    # Quantisation works row by row, so rounding the HF-layout rows gives exactly what the
    # loader must produce from the permuted file.
    expected = {n: gguf.quants.dequantize(gguf.quants.quantize(w, qtype if w.ndim == 2 else Q.F32),
                                          qtype if w.ndim == 2 else Q.F32).reshape(w.shape)
                for n, w in weights.items()}
    assert_weights(model, expected)
    # On CPU the 4-bit projections and LM head stay packed by default; the embedding never does.
    packed = set(model.int4_weights())
    projections = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert packed == ({"lm_head", *(f"layers.{i}.{p}" for i in range(2) for p in projections)}
                      if qtype in (Q.Q4_0, Q.Q4_1) else set())
    # A Q8_0 (untied) LM head stays int8; the untied embedding is dequantised.
    assert isinstance(model.lm_head, kernels.Int8Weight) == (qtype == Q.Q8_0)
    assert isinstance(model.embed_tokens, torch.nn.Parameter)


@pytest.mark.parametrize("quantized_weights", ["auto", "dequantize"])
def test_gguf_tied_q8_0_head(quantized_weights, tmp_path):
    # No output.weight: the head is token_embd, which (Q8_0, CPU, auto) stays one int8 table for both.
    weights = hf_weights("llama")
    del weights["lm_head.weight"]
    write_gguf(tmp_path / "m.gguf", "llama", weights, Q.Q8_0)
    loaded = load_model(str(tmp_path / "m.gguf"), device="cpu", dtype="float32", quantized_weights=quantized_weights)
    model = loaded.model
    assert model.config.tie_word_embeddings and model.lm_head is model.embed_tokens
    assert isinstance(model.embed_tokens, kernels.Int8Weight) == (quantized_weights == "auto")
    table = np.asarray(gguf.quants.dequantize(gguf.quants.quantize(weights["model.embed_tokens.weight"], Q.Q8_0), Q.Q8_0))
    got = model.weight_slice("model.embed_tokens.weight")
    got = kernels.dequantize_int8(got) if isinstance(got, kernels.Int8Weight) else got
    assert torch.equal(got, torch.from_numpy(table.reshape(VOCAB, HIDDEN)))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_gguf_architectures(arch, tmp_path):
    weights = hf_weights(arch)
    write_gguf(tmp_path / "m.gguf", arch, weights)
    loaded = load_model(str(tmp_path / "m.gguf"), device="cpu", dtype="float32")
    assert loaded.config.qkv_bias == (arch == "qwen2") and loaded.config.qk_norm == (arch == "qwen3")
    assert_weights(loaded.model, weights)


def test_gguf_matches_transformers_unpermute(tmp_path):
    transformers = pytest.importorskip("transformers")
    weights = hf_weights("llama", layers=1)
    write_gguf(tmp_path / "m.gguf", "llama", weights)
    ours = load_model(str(tmp_path / "m.gguf"), device="cpu", dtype="float32").model
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="m.gguf", dtype=torch.float32, local_files_only=True
    ).state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        assert torch.equal(ours.weight_slice(name), ref[name])


def test_dummy_weights_are_seeded(tmp_path):
    assert {"llama-3-8b", "llama-tiny"} <= set(shipped_configs())
    a = load_model("llama-tiny", device="cpu", dtype="float32", load_format="dummy", seed=1)
    b = load_model("llama-tiny.json", device="cpu", dtype="float32", load_format="dummy", seed=1)
    c = load_model("llama-tiny", device="cpu", dtype="float32", load_format="dummy", seed=2)
    assert a.tokenizer is None and a.name == "llama-tiny"
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(a.model.weight_slice(name), b.model.weight_slice(name))
    assert not torch.equal(a.model.weight_slice(name), c.model.weight_slice(name))


def test_shipped_llama_3_8b_config():
    with open(os.path.join(CONFIG_DIR, "llama-3-8b.json")) as f:
        config = ModelConfig.from_hf(json.load(f))
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim) == (32, 4096, 32, 8, 128)
    assert (config.intermediate_size, config.vocab_size, config.rope_theta) == (14336, 128256, 500000.0)


# ---- bad input ---------------------------------------------------------------------------------------


def hf_directory(path, arch="LlamaForCausalLM", drop=(), reshape=()) -> None:
    from safetensors.numpy import save_file

    weights = {n: w for n, w in hf_weights("llama", layers=1).items() if n not in drop}
    for n in reshape:
        weights[n] = weights[n][:-1]
    save_file(weights, str(path / "model.safetensors"))
    config = {
        "architectures": [arch], "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_hidden_layers": 1, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
    }
    (path / "config.json").write_text(json.dumps(config))


def test_hf_directory_loads(tmp_path):
    hf_directory(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu", dtype="bfloat16")
    assert loaded.tokenizer is None and loaded.model.embed_tokens.dtype == torch.bfloat16


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"), device="cpu")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path), device="cpu", load_format="hf")
    with pytest.raises(FileNotFoundError, match="llama-3-8b"):  # lists the shipped configs
        load_model("no-such-config", device="cpu", load_format="dummy")


def test_unsupported_architecture_lists_supported(tmp_path):
    hf_directory(tmp_path, arch="GPT2LMHeadModel")
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM, MistralForCausalLM, Qwen2"):
        load_model(str(tmp_path), device="cpu")
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(ValueError, match="'gpt2' is not supported; supported: llama, qwen2, qwen3"):
        load_model(str(tmp_path / "m.gguf"), device="cpu")


@pytest.mark.parametrize("fault", ["missing", "misshapen"])
def test_checkpoint_tensors_checked(fault, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    hf_directory(tmp_path, drop=[name] if fault == "missing" else [], reshape=[name] if fault == "misshapen" else [])
    with pytest.raises(ValueError, match="missing" if fault == "missing" else "shape"):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_truncated_or_garbled_files(fmt, tmp_path):
    if fmt == "gguf":
        file = tmp_path / "m.gguf"
        write_gguf(file, "llama", hf_weights("llama"))
        path = str(file)
    else:
        hf_directory(tmp_path)
        file, path = tmp_path / "model.safetensors", str(tmp_path)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(path, device="cpu")
    file.write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(path, device="cpu")


def test_bad_arguments():
    with pytest.raises(ValueError, match="load_format"):
        load_model(None, load_format="pickle")
    with pytest.raises(ValueError, match="dtype"):
        load_model(None, device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="path is required"):
        load_model(None, load_format="dummy")
    with pytest.raises(ValueError, match="head_dim"):
        ModelConfig(architecture="llama", vocab_size=8, hidden_size=96, intermediate_size=8, num_layers=1,
                    num_heads=1, num_kv_heads=1, head_dim=96)
