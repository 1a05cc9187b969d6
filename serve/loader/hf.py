"""Load a Hugging Face model directory: config.json, *.safetensors (one file or shards), tokenizer."""

from __future__ import annotations

import glob
import json
import os

import torch

from ..model import ModelConfig
from .common import build_model


def read_hf_config(file: str) -> dict:
    """A ``config.json``, with the end-of-sequence ids of ``generation_config.json`` beside it merged in."""
    hf = _read_json(file)
    gen_file = os.path.join(os.path.dirname(file), "generation_config.json")
    if os.path.isfile(gen_file):
        # Chat models often stop on more tokens than config.json names (Llama 3: <|eot_id|>).
        eos = [e for src in (hf, _read_json(gen_file)) for e in _as_list(src.get("eos_token_id"))]
        hf["eos_token_id"] = sorted(set(eos))
    return hf


def load_hf(path: str, device: torch.device, dtype: torch.dtype):
    """Read a Hugging Face directory; return ``(model, config)``.

    Raises
    ------
    FileNotFoundError
        No such directory, or no config.json or safetensors files in it.
    ValueError
        An unsupported architecture, a corrupt or truncated safetensors file, or tensors missing
        or misshapen for config.json.
    """
    from safetensors import safe_open

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} has no config.json (a Hugging Face model directory needs one)")
    config = ModelConfig.from_hf(read_hf_config(os.path.join(path, "config.json")))
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors weights (other weight formats are not supported)")
    handles, owner, shapes = {}, {}, {}
    for file in files:
        try:
            handles[file] = f = safe_open(file, framework="pt")
            for name in f.keys():
                owner[name], shapes[name] = file, tuple(f.get_slice(name).get_shape())
        except Exception as e:  # safetensors raises its own error type for a bad header or short file
            raise ValueError(f"{file} is not a readable safetensors file (corrupt or truncated?): {e}") from e

    def read(name: str) -> torch.Tensor:
        try:
            return handles[owner[name]].get_tensor(name)
        except Exception as e:
            raise ValueError(f"{owner[name]}: tensor {name} cannot be read (corrupt or truncated file?): {e}") from e

    model = build_model(config, dtype, device, shapes, read, f"Loading {os.path.basename(os.path.normpath(path))}")
    return model, config


def _read_json(file: str) -> dict:
    try:
        with open(file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]
