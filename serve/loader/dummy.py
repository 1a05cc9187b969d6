"""Random weights for any config: benchmarks of model shapes without their checkpoints."""

from __future__ import annotations

import glob
import os

import torch

from ..model import CausalLM, ModelConfig
from .hf import read_hf_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> list[str]:
    """Names of the configs in serve/configs/ (``llama-3-8b``, ...)."""
    return sorted(os.path.basename(f)[: -len(".json")] for f in glob.glob(os.path.join(CONFIG_DIR, "*.json")))


def find_config(path_or_name: str) -> str:
    """A config.json path from a file, a model directory, or the name of a shipped config."""
    if os.path.isdir(path_or_name):
        return os.path.join(path_or_name, "config.json")
    if os.path.isfile(path_or_name):
        return path_or_name
    name = path_or_name[: -len(".json")] if path_or_name.endswith(".json") else path_or_name
    if name in shipped_configs():
        return os.path.join(CONFIG_DIR, f"{name}.json")
    raise FileNotFoundError(
        f"{path_or_name} is neither a config file, a model directory nor a shipped config "
        f"({', '.join(shipped_configs())})"
    )


def load_dummy(path_or_name: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Build the model of a config with random weights; return ``(model, config)``.

    Matrices are drawn from ``N(0, 1 / in_features)`` (so every projection keeps its input's scale
    and the logits are O(1)), biases from ``N(0, 0.02^2)``, norm weights are 1. The same seed on the
    same kind of device gives the same weights.
    """
    file = find_config(path_or_name)
    config = ModelConfig.from_hf(read_hf_config(file))
    model = CausalLM(config, dtype, device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    for name, param in model.named_parameters():  # the tied head is one parameter, drawn once
        if param.ndim == 2:
            param.normal_(0.0, param.shape[1] ** -0.5, generator=generator)
        elif name.endswith("qkv_bias"):
            param.normal_(0.0, 0.02, generator=generator)
        else:
            param.fill_(1.0)
    return model, config
