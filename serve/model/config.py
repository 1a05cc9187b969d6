"""The shape of a Llama-family decoder, read from a Hugging Face ``config.json`` dict."""

from __future__ import annotations

from dataclasses import dataclass, field

# Hugging Face class name -> our architecture name. All of them are the same decoder: pre-norm
# blocks, grouped-query attention with neox RoPE, SwiGLU MLP; they differ in the options below.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",  # Llama 2/3, SmolLM
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",  # qkv bias
    "Qwen3ForCausalLM": "qwen3",  # per-head rms norm of q and k before RoPE
}
# The paged attention kernels are built for these head sizes.
HEAD_DIMS = (64, 128, 256)
ROPE_TYPES = ("default", "linear", "llama3", "freq_factors")


def supported_architectures() -> str:
    return ", ".join(ARCHITECTURES)


@dataclass
class ModelConfig:
    """What :class:`CausalLM` needs to know to build and run a model.

    ``rope_scaling`` is ``None`` (plain RoPE) or a dict with ``rope_type`` one of ``"linear"``
    (``factor``), ``"llama3"`` (``factor``, ``low_freq_factor``, ``high_freq_factor``,
    ``original_max_position_embeddings``) or ``"freq_factors"`` (``factors``: one divisor per
    frequency, how llama.cpp stores Llama 3.1 scaling in a GGUF file).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES.values():
            raise ValueError(
                f"architecture {self.architecture!r} is not supported; supported: {supported_architectures()}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "max_position"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim not in HEAD_DIMS:
            raise ValueError(f"head_dim must be one of {HEAD_DIMS} (the paged attention kernels); got {self.head_dim}")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(f"rms_norm_eps and rope_theta must be > 0; got {self.rms_norm_eps}, {self.rope_theta}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            if kind not in ROPE_TYPES:
                raise ValueError(f"rope_scaling type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"sliding_window must be None or a positive int; got {self.sliding_window!r}")
        self.eos_token_ids = sorted({int(t) for t in self.eos_token_ids})

    @classmethod
    def from_hf(cls, hf: dict) -> ModelConfig:
        """Build from a Hugging Face ``config.json`` dict (old ``rope_scaling`` or new ``rope_parameters``)."""
        names = hf.get("architectures") or []
        arch = next((ARCHITECTURES[n] for n in names if n in ARCHITECTURES), None)
        if arch is None:
            raise ValueError(
                f"architecture {names or hf.get('model_type')!r} is not supported; supported: {supported_architectures()}"
            )
        try:
            num_heads = hf["num_attention_heads"]
            rope_theta, rope_scaling = _rope(hf)
            if arch == "qwen2" and hf.get("use_sliding_window"):
                raise ValueError("Qwen2 with use_sliding_window=true is not supported")
            eos = hf.get("eos_token_id")
            return cls(
                architecture=arch,
                vocab_size=hf["vocab_size"],
                hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=num_heads,
                num_kv_heads=hf.get("num_key_value_heads") or num_heads,
                head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
                rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                max_position=hf.get("max_position_embeddings", 4096),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                # Qwen2 always has q/k/v biases; Llama and Mistral only where attention_bias says so.
                qkv_bias=arch == "qwen2" or bool(hf.get("attention_bias", False)),
                qk_norm=arch == "qwen3",
                sliding_window=hf.get("sliding_window") if arch == "mistral" else None,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_ids=[] if eos is None else eos if isinstance(eos, list) else [eos],
            )
        except KeyError as e:
            raise ValueError(f"config is missing the field {e.args[0]!r}") from None


def _rope(hf: dict) -> tuple[float, dict | None]:
    # transformers 5 writes rope_parameters (theta included); older files rope_theta + rope_scaling.
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", None) or hf.get("rope_theta", 10000.0)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return theta, None
    params["rope_type"] = kind
    params.pop("type", None)
    return theta, params
