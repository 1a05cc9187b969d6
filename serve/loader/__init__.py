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


@dataclass
class LoadedModel:
    model: CausalLM
    config: ModelConfig
    tokenizer: Tokenizer | None  # None for dummy weights, or a checkpoint without a tokenizer
    name: str  # what the server reports as the model id


def load_model(path: str | None = None, *, device="auto", dtype="auto", load_format: str = "auto", seed: int = 0) -> LoadedModel:
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
        float32, float16 or bfloat16; ``"auto"`` is bfloat16 on GPUs and float32 on CPU. Quantised
        GGUF weights are dequantised to it.
    load_format : str
        ``"auto"`` (by path: a directory is ``hf``, a file ``gguf``), ``"gguf"``, ``"hf"`` or ``"dummy"``.
    seed : int
        Seed of the random weights of ``load_format="dummy"``.

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
        model, config, has_tokenizer = load_gguf(path, device, dtype)
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


__all__ = ["LOAD_FORMATS", "LoadedModel", "default_model_path", "load_model", "load_tokenizer", "shipped_configs"]
