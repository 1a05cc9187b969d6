"""Llama-family decoder (Llama 2/3, Mistral, Qwen2/2.5/3, SmolLM) on the ``kernels`` ops.

Every sequence's new tokens run as one flat batch of ``[num_tokens, hidden]`` rows; attention reads
and writes the paged KV cache the scheduler owns. Projections sharing an input are fused (``qkv_proj``,
``gate_up_proj``) so each is one matmul; :meth:`CausalLM.load_weights` takes Hugging Face tensor
names and writes each into its slice.
"""

from __future__ import annotations

import math
import re

import kernels
import torch
import torch.nn.functional as F
from torch import nn

from ..forward_batch import ForwardBatch
from .config import ModelConfig


def rope_cos_sin_cache(config: ModelConfig, device=None) -> torch.Tensor:
    """``[max_position, head_dim]`` float32: ``cos`` of every position's angles, then ``sin``.

    Computed as transformers does (float32 inverse frequencies times float32 positions) so that
    greedy decoding matches it token for token.
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type")
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, scaling)
    elif kind == "freq_factors":
        inv_freq = inv_freq / torch.tensor(scaling["factors"], dtype=torch.float32)
    positions = torch.arange(config.max_position, dtype=torch.int64).float()
    angles = positions[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1).to(device)


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Llama 3.1: wavelengths longer than the original context / low_freq_factor are slowed by
    # `factor`, those shorter than original / high_freq_factor kept, the band between interpolated.
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    original = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)  # used only inside the band
    scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(wavelen > original / low, inv_freq / factor, torch.where(wavelen < original / high, inv_freq, scaled))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        c = config
        self.q_size, self.kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim

        def param(*shape):
            return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)

        self.input_layernorm = param(c.hidden_size)
        self.qkv_proj = param(self.q_size + 2 * self.kv_size, c.hidden_size)
        self.qkv_bias = param(self.q_size + 2 * self.kv_size) if c.qkv_bias else None
        self.q_norm = param(c.head_dim) if c.qk_norm else None
        self.k_norm = param(c.head_dim) if c.qk_norm else None
        self.o_proj = param(c.hidden_size, self.q_size)
        self.post_attention_layernorm = param(c.hidden_size)
        self.gate_up_proj = param(2 * c.intermediate_size, c.hidden_size)
        self.down_proj = param(c.hidden_size, c.intermediate_size)


class CausalLM(nn.Module):
    """A Llama-family decoder with an LM head.

    Parameters
    ----------
    config : ModelConfig
        The model's shape and options.
    dtype : torch.dtype
        Weights, activations and KV cache dtype (float32, float16 or bfloat16).
    device : torch.device or str
        Where the weights live. They are allocated uninitialised: fill them with
        :meth:`load_weights` (the loaders do) before running.
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16; got {dtype}")
        self.config, self.dtype, self.device = config, dtype, torch.device(device)
        c = config
        self.embed_tokens = nn.Parameter(
            torch.empty(c.vocab_size, c.hidden_size, dtype=dtype, device=device), requires_grad=False
        )
        self.layers = nn.ModuleList(DecoderLayer(c, dtype, device) for _ in range(c.num_layers))
        self.norm = nn.Parameter(torch.empty(c.hidden_size, dtype=dtype, device=device), requires_grad=False)
        self.lm_head = (
            self.embed_tokens
            if c.tie_word_embeddings
            else nn.Parameter(torch.empty(c.vocab_size, c.hidden_size, dtype=dtype, device=device), requires_grad=False)
        )
        self.register_buffer("cos_sin_cache", rope_cos_sin_cache(c, self.device), persistent=False)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Run one step and return the float32 logits ``[batch.batch_size, vocab]``.

        Row ``i`` is the logits of token ``batch.logits_indices[i]``. Each layer's new K/V are
        written to ``kv_caches[layer]`` (``(k_cache, v_cache)``, each
        ``[num_pages, page_size, num_kv_heads, head_dim]`` in the model dtype) at
        ``batch.slot_mapping`` before attention reads them.
        """
        if len(kv_caches) != self.config.num_layers:
            raise ValueError(f"kv_caches must hold one (k, v) pair per layer ({self.config.num_layers}); got {len(kv_caches)}")
        eps = self.config.rms_norm_eps
        residual = F.embedding(batch.input_ids, self.embed_tokens)
        x = kernels.rms_norm(residual, self.layers[0].input_layernorm, eps)
        for i, layer in enumerate(self.layers):
            if i:
                kernels.fused_add_rms_norm_(x, residual, layer.input_layernorm, eps)
            x = self._attention(layer, x, batch, kv_caches[i])
            kernels.fused_add_rms_norm_(x, residual, layer.post_attention_layernorm, eps)
            x = F.linear(kernels.silu_and_mul(F.linear(x, layer.gate_up_proj)), layer.down_proj)
        kernels.fused_add_rms_norm_(x, residual, self.norm, eps)
        # Only the rows whose next token is sampled go through the (vocab-wide) head.
        return F.linear(x[batch.logits_indices], self.lm_head).float()

    def _attention(self, layer: DecoderLayer, x: torch.Tensor, batch: ForwardBatch, kv_cache) -> torch.Tensor:
        c, n = self.config, x.shape[0]
        qkv = F.linear(x, layer.qkv_proj, layer.qkv_bias)
        q, k, v = qkv.split([layer.q_size, layer.kv_size, layer.kv_size], dim=1)
        q, k, v = (t.view(n, -1, c.head_dim) for t in (q, k, v))
        if layer.q_norm is not None:  # Qwen3 normalises each head before the rotation
            q = kernels.rms_norm(q.reshape(-1, c.head_dim), layer.q_norm, c.rms_norm_eps).view(n, -1, c.head_dim)
            k = kernels.rms_norm(k.reshape(-1, c.head_dim), layer.k_norm, c.rms_norm_eps).view(n, -1, c.head_dim)
        kernels.rotary_embedding_(batch.positions, q, k, self.cos_sin_cache, True)
        k_cache, v_cache = kv_cache
        kernels.store_kv_cache(k, v, k_cache, v_cache, batch.slot_mapping)
        q = q.contiguous()  # still a strided view of qkv unless q/k-norm copied it
        if batch.is_decode:
            out = kernels.paged_decode_attention(
                q, k_cache, v_cache, batch.page_table, batch.kv_lens, sliding_window=c.sliding_window
            )
        else:
            out = kernels.paged_prefill_attention(
                q, k_cache, v_cache, batch.page_table, batch.qo_indptr, batch.kv_lens, causal=True,
                sliding_window=c.sliding_window,
            )
        return F.linear(out.view(n, layer.q_size), layer.o_proj)

    # ---- loading -------------------------------------------------------------------------

    def load_weights(self, weights) -> None:
        """Copy Hugging Face-named tensors into the model, then check that every weight was written.

        Parameters
        ----------
        weights : iterable of (str, torch.Tensor)
            ``model.layers.3.self_attn.q_proj.weight`` style names, any float dtype and device.
            ``lm_head.weight`` of a tied model and rotary ``inv_freq`` buffers are skipped.

        Raises
        ------
        ValueError
            A name the model has no place for, a tensor of the wrong shape, or (at the end) a
            weight that no tensor wrote.
        """
        written: set[str] = set()
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and self.config.tie_word_embeddings):
                continue
            target = self.weight_slice(name)
            if target.shape != tensor.shape:
                raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)}; the model expects {tuple(target.shape)}")
            target.copy_(tensor)
            written.add(name)
        missing = [n for n in self.expected_weight_names() if n not in written]
        if missing:
            raise ValueError(f"{len(missing)} weights missing from the checkpoint, e.g. {', '.join(missing[:5])}")

    def expected_weight_names(self) -> list[str]:
        """The Hugging Face tensor names a complete checkpoint of this model has."""
        c = self.config
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        if not c.tie_word_embeddings:
            names.append("lm_head.weight")
        per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.o_proj.weight"]
        per_layer += [f"self_attn.{p}_proj.weight" for p in "qkv"] + [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        if c.qkv_bias:
            per_layer += [f"self_attn.{p}_proj.bias" for p in "qkv"]
        if c.qk_norm:
            per_layer += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
        return names + [f"model.layers.{i}.{p}" for i in range(c.num_layers) for p in per_layer]

    _LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")

    def weight_slice(self, name: str) -> torch.Tensor:
        """The view of our parameters that the Hugging Face tensor ``name`` fills (``q_proj`` rows of ``qkv_proj``, ...)."""
        top = {"model.embed_tokens.weight": self.embed_tokens, "model.norm.weight": self.norm, "lm_head.weight": self.lm_head}
        if name in top:
            return top[name]
        m = self._LAYER_NAME.fullmatch(name)
        if m and int(m[1]) < len(self.layers):
            layer, part = self.layers[int(m[1])], m[2]
            q, kv, inter = layer.q_size, layer.kv_size, self.config.intermediate_size
            qkv_rows = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
            target = None
            if part in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                target = getattr(layer, part.split(".")[0])
            elif part == "self_attn.o_proj.weight":
                target = layer.o_proj
            elif part == "mlp.down_proj.weight":
                target = layer.down_proj
            elif part in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                start = 0 if part.startswith("mlp.gate") else inter
                target = layer.gate_up_proj[start : start + inter]
            elif part in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
                target = getattr(layer, part.split(".")[1])
            elif m2 := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", part):
                full = layer.qkv_proj if m2[2] == "weight" else layer.qkv_bias
                lo, hi = qkv_rows[m2[1]]
                target = None if full is None else full[lo:hi]
            if target is not None:
                return target
        raise ValueError(f"unexpected tensor {name} for a {self.config.architecture} model with this config")
