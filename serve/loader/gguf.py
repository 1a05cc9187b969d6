"""Load a GGUF file (llama.cpp's format): config from its metadata, weights dequantised to the model
dtype, or (``int4=True``) the 4-bit Linear weights (Q4_0, Q4_1) kept packed for the INT4 GEMM, and
(``int8_head=True``) a Q8_0 LM head kept int8 for the INT8 GEMM."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..model import ModelConfig
from .common import build_model

# GGUF architecture -> Hugging Face class (Mistral files say "llama").
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
# Types that convert losslessly to kernels.Int4Weight (docs/api/quant.md), by converter name.
INT4_TYPES = {"Q4_0": "from_gguf_q4_0", "Q4_1": "from_gguf_q4_1"}
INT8_TYPE = "Q8_0"  # converts losslessly to kernels.Int8Weight (from_gguf_q8_0)

_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    **{f"attn_{p}.{kind}": f"self_attn.{p}_proj.{kind}" for p in "qkv" for kind in ("weight", "bias")},
}
# llama.cpp keeps Llama 3.1's rope scaling as this tensor of per-frequency divisors.
_ROPE_FREQS = "rope_freqs.weight"


def hf_name(name: str) -> str:
    """The Hugging Face name of a GGUF tensor (``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``)."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise ValueError(f"GGUF tensor {name} has no place in a Llama-family model")


_TOKENIZER_FIELD = "tokenizer.ggml.model"


def is_linear_weight(hf: str) -> bool:
    """Whether the Hugging Face tensor ``hf`` is the weight of a Linear (a projection or the LM head),
    as opposed to the token embedding (gathered, never multiplied), a norm or a bias."""
    return hf == "lm_head.weight" or (hf.startswith("model.layers.") and hf.endswith("_proj.weight"))


def load_gguf(path: str, device: torch.device, dtype: torch.dtype, int4: bool = False, int8_head: bool = False):
    """Read ``path``; return ``(model, config, has_tokenizer)``, the last whether the metadata holds a tokenizer.

    With ``int4``, every Linear weight stored as Q4_0 or Q4_1 (the q, k, v, o, gate, up and down
    projections, and the LM head when untied) is converted once to a packed
    :class:`kernels.Int4Weight` (``kernels.ops.quant.from_gguf_q4_0`` / ``from_gguf_q4_1``: the
    same weights, losslessly) and the model keeps it packed, multiplying through
    ``kernels.w4a16_gemm``; no float copy is made. With ``int8_head``, an LM head stored as Q8_0
    (``output.weight``, or the ``token_embd.weight`` a tied head is) is converted once to a
    :class:`kernels.Int8Weight` (``from_gguf_q8_0``, losslessly) and multiplied through
    ``kernels.w8a16_gemm``; a tied table also serves the embedding lookup, a row dequantised per
    token, so no float copy of it is made either. Other tensors (F32, F16, BF16, other Q8_0, and an
    untied token embedding whatever its type) are dequantised to ``dtype`` as without them.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a readable GGUF file (corrupt or truncated), an unsupported architecture or tensor
        type, or tensors missing or misshapen for the config in the metadata.
    """
    from gguf import GGUFReader

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader raises whatever numpy does on a short or garbled file
        raise ValueError(f"{path} is not a readable GGUF file (corrupt or truncated?): {e}") from e
    arch = _field(reader, "general.architecture")
    config = ModelConfig.from_hf(gguf_hf_config(reader))
    tensors = {t.name: t for t in reader.tensors if t.name != _ROPE_FREQS}
    for t in tensors.values():
        if t.tensor_type.name not in TENSOR_TYPES:
            raise ValueError(f"{path}: tensor {t.name} is {t.tensor_type.name}; supported types: {', '.join(TENSOR_TYPES)}")
    by_hf = {hf_name(n): t for n, t in tensors.items()}
    shapes = {n: tuple(int(d) for d in reversed(t.shape.tolist())) for n, t in by_hf.items()}
    # With int4: the 4-bit Linear weights, read as packed kernels.Int4Weight (the rest dequantised).
    packed = {n for n, t in by_hf.items()
              if int4 and is_linear_weight(n) and t.tensor_type.name in INT4_TYPES and len(shapes[n]) == 2}
    # With int8_head: the LM head's weight (the embedding table when tied), if Q8_0.
    head = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
    int8 = {head} if int8_head and head in by_hf and by_hf[head].tensor_type.name == INT8_TYPE else set()

    def read(name: str):
        t = by_hf[name]
        # llama.cpp's converter reorders each head's q/k rows from rotate-halves to interleaved
        # pairs for its own rope; undo it so the neox pairing of rotary_embedding_ applies.
        heads = None
        if arch == "llama" and (".self_attn.q_proj." in name or ".self_attn.k_proj." in name):
            heads = config.num_heads if ".q_proj." in name else config.num_kv_heads
        if name in packed:
            return _read_int4(path, t, shapes[name], heads)
        if name in int8:
            return _read_int8(path, t, shapes[name])
        try:
            w = _dequantize(t).reshape(shapes[name])
        except Exception as e:
            raise ValueError(f"{path}: tensor {t.name} cannot be read (corrupt or truncated file?): {e}") from e
        if heads is not None:
            w = _unpermute(w, heads)
        return torch.from_numpy(np.require(w, requirements=["C", "W"]))  # a writable copy where w views the file

    model = build_model(config, dtype, device, shapes, read, f"Loading {os.path.basename(path)}", int4=packed, int8=int8)
    return model, config, _TOKENIZER_FIELD in reader.fields


def gguf_has_tokenizer(path: str) -> bool:
    """Whether the GGUF file's metadata holds a tokenizer (the tensors are not read)."""
    from gguf import GGUFReader

    return _TOKENIZER_FIELD in GGUFReader(path).fields


def gguf_hf_config(reader) -> dict:
    """A Hugging Face style config dict from a GGUF file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {', '.join(GGUF_ARCHITECTURES)}")

    def get(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    names = {t.name for t in reader.tensors}
    hidden, heads = get("embedding_length"), get("attention.head_count")
    vocab = get("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = [_field(reader, k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
    hf = {
        "architectures": [GGUF_ARCHITECTURES[arch]],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "head_dim": get("attention.key_length") or hidden // heads,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": get("rope.freq_base", 10000.0),
        "max_position_embeddings": get("context_length", 4096),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": [e for e in eos if e is not None],
    }
    if None in (hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"], heads):
        raise ValueError(f"GGUF metadata lacks the {arch} model's shape (embedding_length, feed_forward_length, ...)")
    scaling = get("rope.scaling.type")
    if scaling == "linear":
        hf["rope_scaling"] = {"rope_type": "linear", "factor": get("rope.scaling.factor")}
    elif scaling not in (None, "none"):
        raise ValueError(f"GGUF rope scaling {scaling!r} is not supported; supported: linear, and rope_freqs tensors")
    freqs = next((t for t in reader.tensors if t.name == _ROPE_FREQS), None)
    if freqs is not None:
        hf["rope_scaling"] = {"rope_type": "freq_factors", "factors": _dequantize(freqs).reshape(-1).tolist()}
    return hf


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _dequantize(t) -> np.ndarray:
    from gguf import dequantize

    return dequantize(t.data, t.tensor_type)


def _read_int4(path: str, t, shape: tuple[int, int], heads: int | None):
    """A Q4_0 / Q4_1 tensor as a packed ``kernels.Int4Weight`` of ``shape`` (rows un-permuted for ``heads``)."""
    from kernels.ops import quant

    n, k = shape
    try:
        blocks = torch.from_numpy(np.array(t.data, dtype=np.uint8).reshape(-1))  # a copy: the file is mapped read-only
        w = getattr(quant, INT4_TYPES[t.tensor_type.name])(blocks, n, k)
    except Exception as e:
        raise ValueError(f"{path}: tensor {t.name} cannot be read (corrupt or truncated file?): {e}") from e
    if heads is not None:
        # The permutation only moves rows, so it moves the rows of every packed tensor alike.
        rows = torch.from_numpy(_unpermute(np.arange(n), heads))
        w = type(w)(*(None if x is None else x[rows].contiguous() for x in w[:4]), w.group_size)
    return w


def _read_int8(path: str, t, shape: tuple[int, int]):
    """A Q8_0 tensor as a ``kernels.Int8Weight`` of ``shape``."""
    from kernels.ops import quant_int8

    n, k = shape
    try:
        blocks = torch.from_numpy(np.array(t.data, dtype=np.uint8).reshape(-1))  # a copy: the file is mapped read-only
        return quant_int8.from_gguf_q8_0(blocks, n, k)
    except Exception as e:
        raise ValueError(f"{path}: tensor {t.name} cannot be read (corrupt or truncated file?): {e}") from e


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    # The converter did rows.reshape(heads, 2, d/2).swapaxes(1, 2); this is its inverse.
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
