"""Llama-family decoders on the ``kernels`` ops."""

from .config import ARCHITECTURES, ModelConfig
from .llama import CausalLM

__all__ = ["ARCHITECTURES", "CausalLM", "ModelConfig"]
