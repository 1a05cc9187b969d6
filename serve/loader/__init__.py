"""Model loading: a GGUF file, a Hugging Face directory, or random weights for a config."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..model import CausalLM, ModelConfig
from ..tokenizer import TOKENIZER_FILES, Tokenizer
from .common import resolve_device, resolve_dtype
from .default_model import default_model_path
from .dummy import load_dummy, shipped_configs
from .gguf import gguf_has_tokenizer, load_gguf
from .hf import load_hf

LOAD_FORMATS = ("auto", "gguf", "hf", "dummy")
QUANTIZED_WEIGHTS = ("auto", "int4", "dequantize")


@dataclass
class LoadedModel:
    model: CausalLM
    config: ModelConfig
    tokenizer: Tokenizer | None  # None for dummy weights, or a checkpoint without a tokenizer
    name: str  # what the server reports as the model id


def load_model(path: str | None = None, *, device="auto", dtype="auto", load_format: str = "auto", seed: int = 0,
               quantized_weights: str = "auto") -> LoadedModel:
    """Load a model, its config and its tokenizer.

    Parameters
    ----------
    path : str or None
        A ``.gguf`` file, a Hugging Face directory (config.json + safetensors), or for
        ``load_format="dummy"`` a config file or the name of a shipped config (see
        :func:`shipped_configs`). ``None`` loads the default model, SmolLM2-135M-Instruct (GGUF).
    device : str or torch.device
        ``"auto"`` picks CUDA when available, else CPU.
    dtype : str or torch.dtype
        float32, float16 or bfloat16; ``"auto"`` is bfloat16 on GPUs and float32 on CPU: the dtype
        of activations, of the KV cache and of every weight that is not kept packed (see
        ``quantized_weights``).
    load_format : str
        ``"auto"`` (by path: a directory is ``hf``, a file ``gguf``), ``"gguf"``, ``"hf"`` or ``"dummy"``.
    seed : int
        Seed of the random weights of ``load_format="dummy"``.
    quantized_weights : str
        What becomes of quantised GGUF weights. ``"int4"``: every Linear weight stored 4-bit (Q4_0,
        Q4_1: q, k, v, o, gate, up, down projections, and an untied LM head) is converted once to a
        packed :class:`kernels.Int4Weight` and the model multiplies by it through
        ``kernels.w4a16_gemm`` (4 bits a weight plus a float16 scale and min per 32: about a sixth
        of their float32 size); on CPU, an LM head stored as Q8_0 (an untied ``output.weight``, or
        the ``token_embd.weight`` a tied head is, as in SmolLM2) is also kept, as a
        :class:`kernels.Int8Weight` multiplied through ``kernels.w8a16_gemm`` (a byte a weight plus
        a float16 scale per 32: 0.27 of float32; a tied table also serves the embedding lookup, a
        row dequantised per token). Activations stay in ``dtype``; every other tensor (F32, F16,
        BF16, other Q8_0, an untied token embedding) is dequantised. ``"dequantize"``: every weight
        is dequantised to ``dtype`` at load (the float math of transformers, token for token in
        float32). ``"auto"`` (the default): ``"int4"`` on CPU, where the native INT4 and INT8
        kernels are faster than the float matmul, and ``"dequantize"`` elsewhere (the CUDA INT4
        kernel is not there yet: ``"int4"`` on a GPU runs the Triton kernel, untuned and not for
        CUDA graphs; there is no GPU INT8 kernel, so a GPU keeps a Q8_0 head as float). Hugging
        Face directories and dummy weights have no quantised weights and ignore it.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist, or lacks the files its format needs.
    ValueError
        Bad arguments, an unsupported architecture (the message lists the supported ones), a
        corrupt or truncated weight file, or missing or misshapen tensors. Nothing half-loaded is
        ever returned.
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {LOAD_FORMATS}; got {load_format!r}")
    if quantized_weights not in QUANTIZED_WEIGHTS:
        raise ValueError(f"quantized_weights must be one of {QUANTIZED_WEIGHTS}; got {quantized_weights!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if path is None:
        if load_format not in ("auto", "gguf"):
            raise ValueError(f"path is required with load_format={load_format!r}")
        path, load_format = default_model_path(), "gguf"
    path = os.fspath(path)
    if load_format == "dummy":
        model, config = load_dummy(path, device, dtype, seed)
        return LoadedModel(model, config, None, os.path.basename(path).removesuffix(".json"))
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path} does not exist")
    if load_format == "auto":
        load_format = "hf" if os.path.isdir(path) else "gguf"
    if load_format == "gguf":
        int4 = quantized_weights == "int4" or (quantized_weights == "auto" and device.type == "cpu")
        # w8a16_gemm has a native kernel on the CPU only; elsewhere the float head is faster.
        int8_head = int4 and device.type == "cpu"
        model, config, has_tokenizer = load_gguf(path, device, dtype, int4=int4, int8_head=int8_head)
        tokenizer = Tokenizer.from_gguf(path, config.eos_token_ids) if has_tokenizer else None
        return LoadedModel(model, config, tokenizer, os.path.basename(path).removesuffix(".gguf"))
    model, config = load_hf(path, device, dtype)
    return LoadedModel(model, config, load_tokenizer(path, "hf", config.eos_token_ids),
                       os.path.basename(os.path.normpath(path)))


def load_tokenizer(path: str | None, load_format: str = "auto", eos_token_ids=()) -> Tokenizer | None:
    """The tokenizer :func:`load_model` would load for the same ``path`` and ``load_format``,
    without the weights (the server's main process tokenizes; the model lives elsewhere).
    ``None`` where there is none: dummy weights, a directory without tokenizer files, a GGUF file
    without tokenizer metadata."""
    if load_format == "dummy":
        return None
    path = default_model_path() if path is None else os.fspath(path)
    if load_format == "hf" or (load_format == "auto" and os.path.isdir(path)):
        if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
            return None
        return Tokenizer.from_dir(path, eos_token_ids)
    if not gguf_has_tokenizer(path):
        return None
    return Tokenizer.from_gguf(path, eos_token_ids)


__all__ = ["LOAD_FORMATS", "QUANTIZED_WEIGHTS", "LoadedModel", "default_model_path", "load_model", "load_tokenizer", "shipped_configs"]
