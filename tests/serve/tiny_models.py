"""Small random-weight Llamas for the serving tests: the real model code, fast on two CPU cores.

A model's output depends on every cached token through attention, so a wrong page, slot or
position changes its greedy tokens.
"""

import json

from kernels.serve.loader import LoadedModel, load_model

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 1024, "eos_token_id": 0,
}


def load_tiny(tmp_path_factory, seed: int, **overrides) -> LoadedModel:
    """TINY_LLAMA with ``overrides``, random weights from ``seed``, float32 on the CPU."""
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps({**TINY_LLAMA, **overrides}))
    return load_model(str(path), load_format="dummy", device="cpu", dtype="float32", seed=seed)


def load_texty(tmp_path_factory, smol: LoadedModel) -> LoadedModel:
    """A tiny model over SmolLM2's vocabulary with its tokenizer: text in and text out, fast."""
    model = load_tiny(tmp_path_factory, 5, vocab_size=smol.config.vocab_size, eos_token_id=2)
    return LoadedModel(model.model, model.config, smol.tokenizer, "texty")
