"""Llama-family decoder (Llama 2/3, Mistral, Qwen2/2.5/3, SmolLM) on the ``kernels`` ops.

Every sequence's new tokens run as one flat batch of ``[num_tokens, hidden]`` rows; attention reads
and writes the paged KV cache the scheduler owns. Projections sharing an input are fused (``qkv_proj``,
``gate_up_proj``) so each is one matmul; :meth:`CausalLM.load_weights` takes Hugging Face tensor
names and writes each into its slice.

A projection (``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``, an untied ``lm_head``) may
instead hold a packed :class:`kernels.Int4Weight` (a 4-bit GGUF tensor kept packed; see the
``int4`` argument of :class:`CausalLM`): every matmul goes through :func:`.linear.linear`, which runs
``F.linear`` for a tensor and ``kernels.w4a16_gemm`` for a packed weight. Its tensors are registered
as parameters of the layer (``qkv_proj_qweight``, ``qkv_proj_scales``, ``qkv_proj_mins``, ...), so
``model.parameters()`` counts the bytes the model really holds.

The LM head may likewise hold a :class:`kernels.Int8Weight` (a Q8_0 GGUF tensor kept int8; the
``int8`` argument of :class:`CausalLM`), multiplied through ``kernels.w8a16_gemm``; when it is tied
to the token embedding, the embedding lookup gathers and dequantises rows of that same int8 table.
"""

from __future__ import annotations

import math
import re

import kernels
import torch
from torch import nn

from ..forward_batch import ForwardBatch
from .config import ModelConfig
from .embedding import embedding
from .linear import Int4Weight, Int8Weight, linear, prefer_cublaslt

# A decoder layer's projections and the Hugging Face weights each one fuses, in row order.
LAYER_LINEARS = {
    "qkv_proj": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "o_proj": ("self_attn.o_proj.weight",),
    "gate_up_proj": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "down_proj": ("mlp.down_proj.weight",),
}
_INT4_FIELDS = ("qweight", "scales", "zero_points", "mins")
# The weights that may be given as an Int8Weight: the LM head, or the embedding it is tied to.
INT8_NAMES = ("lm_head.weight", "model.embed_tokens.weight")


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
    """One decoder layer's weights. The projections named in ``int4`` are not allocated: they are
    ``None`` until :meth:`CausalLM.load_weights` installs their packed :class:`Int4Weight`."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device, int4: frozenset[str] = frozenset()) -> None:
        super().__init__()
        c = config
        self.q_size, self.kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.linear_shapes = {
            "qkv_proj": (self.q_size + 2 * self.kv_size, c.hidden_size),
            "o_proj": (c.hidden_size, self.q_size),
            "gate_up_proj": (2 * c.intermediate_size, c.hidden_size),
            "down_proj": (c.hidden_size, c.intermediate_size),
        }

        def param(*shape):
            return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)

        def proj(name):
            return None if name in int4 else param(*self.linear_shapes[name])

        self.input_layernorm = param(c.hidden_size)
        self.qkv_proj = proj("qkv_proj")
        self.qkv_bias = param(self.q_size + 2 * self.kv_size) if c.qkv_bias else None
        self.q_norm = param(c.head_dim) if c.qk_norm else None
        self.k_norm = param(c.head_dim) if c.qk_norm else None
        self.o_proj = proj("o_proj")
        self.post_attention_layernorm = param(c.hidden_size)
        self.gate_up_proj = proj("gate_up_proj")
        self.down_proj = proj("down_proj")


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
    int4 : collection of str, optional
        Hugging Face names of the Linear weights that :meth:`load_weights` will be given as packed
        :class:`kernels.Int4Weight` (``model.layers.3.self_attn.q_proj.weight``, ``lm_head.weight``).
        A projection all of whose weights are named (all of q, k and v for ``qkv_proj``; gate and
        up for ``gate_up_proj``) is not allocated as a float tensor: it keeps the packed weight,
        the pieces concatenated along the output rows. A packed piece of a projection that is not
        packed whole (say a 4-bit q with an 8-bit v) is dequantised into its float slice.
    int8 : collection of str, optional
        Names among ``lm_head.weight`` (untied) and ``model.embed_tokens.weight`` (tied: the table
        is the LM head) that :meth:`load_weights` will be given as :class:`kernels.Int8Weight`. The
        model keeps them int8: the head multiplies through ``kernels.w8a16_gemm``, and a tied
        table serves the embedding lookup too, one row dequantised per token.
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device, int4=(), int8=()) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16; got {dtype}")
        self.config, self.dtype, self.device = config, dtype, torch.device(device)
        c = config
        int4, self.int8 = frozenset(int4), frozenset(int8)
        head = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
        if not self.int8 <= {head}:
            raise ValueError(f"int8 may name only the LM head's weight ({head} in this model); got {sorted(self.int8)}")
        if "model.embed_tokens.weight" in self.int8:
            self.embed_tokens = None  # installed int8 by load_weights, with the tied head
        else:
            self.embed_tokens = nn.Parameter(
                torch.empty(c.vocab_size, c.hidden_size, dtype=dtype, device=device), requires_grad=False
            )
        self.layers = nn.ModuleList(
            DecoderLayer(c, dtype, device, frozenset(
                attr for attr, sources in LAYER_LINEARS.items() if all(f"model.layers.{i}.{s}" in int4 for s in sources)
            ))
            for i in range(c.num_layers)
        )
        self.norm = nn.Parameter(torch.empty(c.hidden_size, dtype=dtype, device=device), requires_grad=False)
        if c.tie_word_embeddings:
            self.lm_head = self.embed_tokens
        elif "lm_head.weight" in int4 or "lm_head.weight" in self.int8:
            self.lm_head = None  # installed packed by load_weights
        else:
            self.lm_head = nn.Parameter(torch.empty(c.vocab_size, c.hidden_size, dtype=dtype, device=device),
                                        requires_grad=False)
        self.register_buffer("cos_sin_cache", rope_cos_sin_cache(c, self.device), persistent=False)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Run one step and return the logits (the model dtype) ``[batch.batch_size, vocab]``.

        Row ``i`` is the logits of token ``batch.logits_indices[i]``. Each layer's new K/V are
        written to ``kv_caches[layer]`` (``(k_cache, v_cache)``, each
        ``[num_pages, page_size, num_kv_heads, head_dim]`` in the model dtype) at
        ``batch.slot_mapping`` before attention reads them.
        """
        if len(kv_caches) != self.config.num_layers:
            raise ValueError(f"kv_caches must hold one (k, v) pair per layer ({self.config.num_layers}); got {len(kv_caches)}")
        with prefer_cublaslt(self.device):
            return self._forward(batch, kv_caches)

    def _forward(self, batch: ForwardBatch, kv_caches) -> torch.Tensor:
        eps = self.config.rms_norm_eps
        residual = embedding(batch.input_ids, self.embed_tokens, self.dtype)
        x = kernels.rms_norm(residual, self.layers[0].input_layernorm, eps)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i:
                kernels.fused_add_rms_norm_(x, residual, layer.input_layernorm, eps)
            if i == last and not batch.is_decode:
                # Past the last layer's K / V only the rows whose logits are wanted matter: each is
                # its sequence's newest token, a decode query. The rest skip attention and the MLP.
                x = self._attention(layer, x, batch, kv_caches[i], rows=batch.logits_indices)
                residual = residual[batch.logits_indices]
            else:
                x = self._attention(layer, x, batch, kv_caches[i])
            kernels.fused_add_rms_norm_(x, residual, layer.post_attention_layernorm, eps)
            x = linear(kernels.silu_and_mul(linear(x, layer.gate_up_proj)), layer.down_proj)
        kernels.fused_add_rms_norm_(x, residual, self.norm, eps)
        return linear(x, self.lm_head)

    def _attention(self, layer: DecoderLayer, x: torch.Tensor, batch: ForwardBatch, kv_cache,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of every new token, or of ``rows`` only (each its sequence's newest token:
        ``rows[i]`` of sequence ``i``); every new token's K / V are stored either way."""
        c, n = self.config, x.shape[0]
        qkv = linear(x, layer.qkv_proj, layer.qkv_bias)
        q, k, v = qkv.split([layer.q_size, layer.kv_size, layer.kv_size], dim=1)
        q, k, v = (t.view(n, -1, c.head_dim) for t in (q, k, v))
        if layer.q_norm is not None:  # Qwen3 normalises each head before the rotation
            q = kernels.rms_norm(q.reshape(-1, c.head_dim), layer.q_norm, c.rms_norm_eps).view(n, -1, c.head_dim)
            k = kernels.rms_norm(k.reshape(-1, c.head_dim), layer.k_norm, c.rms_norm_eps).view(n, -1, c.head_dim)
        k_cache, v_cache = kv_cache
        if batch.is_decode and x.is_cuda and torch.version.cuda is not None:
            # One kernel: RoPE, the new K / V into the cache, attention (a launch less a layer).
            out = kernels.paged_decode_attention_with_rope_(
                batch.positions, q, k, v, self.cos_sin_cache, k_cache, v_cache, batch.slot_mapping,
                batch.page_table, batch.kv_lens, sliding_window=c.sliding_window,
            )
            return linear(out.view(n, layer.q_size), layer.o_proj)
        kernels.rotary_embedding_and_store_kv_(
            batch.positions, q, k, v, self.cos_sin_cache, k_cache, v_cache, batch.slot_mapping, True
        )
        # Both read q in place, a strided view of qkv.
        if rows is not None:
            q, n = q[rows], rows.shape[0]
        if batch.is_decode or rows is not None:
            out = kernels.paged_decode_attention(
                q, k_cache, v_cache, batch.page_table, batch.kv_lens, sliding_window=c.sliding_window
            )
        else:
            out = kernels.paged_prefill_attention(
                q, k_cache, v_cache, batch.page_table, batch.qo_indptr, batch.kv_lens, causal=True,
                sliding_window=c.sliding_window,
            )
        return linear(out.view(n, layer.q_size), layer.o_proj)

    # ---- loading -------------------------------------------------------------------------

    def load_weights(self, weights) -> None:
        """Copy Hugging Face-named tensors into the model, then check that every weight was written.

        Parameters
        ----------
        weights : iterable of (str, torch.Tensor, kernels.Int4Weight or kernels.Int8Weight)
            ``model.layers.3.self_attn.q_proj.weight`` style names, any float dtype and device.
            ``lm_head.weight`` of a tied model and rotary ``inv_freq`` buffers are skipped. A
            Linear weight may be a packed :class:`kernels.Int4Weight`: a projection the model was
            built to keep packed (``int4``) collects its pieces and, once all have come, holds their
            concatenation (moved to the model's device); any other target gets it dequantised. A
            weight the model was built to keep int8 (``int8``) must be a
            :class:`kernels.Int8Weight`, held as is; one elsewhere is dequantised.

        Raises
        ------
        ValueError
            A name the model has no place for, a tensor of the wrong shape, a float tensor for a
            weight built to be packed, or (at the end) a weight that no tensor wrote.
        """
        written: set[str] = set()
        pending: dict[tuple[int, str], dict[int, Int4Weight]] = {}  # (layer or -1, attr) -> row start -> piece
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and self.config.tie_word_embeddings):
                continue
            index, attr, rows = self._locate(name)
            owner = self if index < 0 else self.layers[index]
            current = getattr(owner, attr)
            full = tuple(current.shape) if current is not None else self._linear_shape(index, attr)
            lo, hi = rows or (0, full[0])
            expected = (hi - lo, *full[1:])
            if tuple(tensor.shape) != expected:
                raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)}; the model expects {expected}")
            if current is None and name in self.int8:
                if not isinstance(tensor, Int8Weight):
                    raise ValueError(f"tensor {name} must be a kernels.Int8Weight: the model was built to keep "
                                     f"{attr} int8, and it got a {type(tensor).__name__}")
                self._install_int8(attr, tensor)
            elif current is None:  # a projection kept packed: collect its pieces
                if not isinstance(tensor, Int4Weight):
                    raise ValueError(f"tensor {name} must be a kernels.Int4Weight: the model was built to keep "
                                     f"{attr} packed (int4), and it got a {type(tensor).__name__}")
                parts = pending.setdefault((index, attr), {})
                parts[lo] = tensor
                if sum(p.shape[0] for p in parts.values()) == full[0]:
                    self._install_int4(owner, attr, [parts[r] for r in sorted(parts)])
                    del pending[(index, attr)]
            elif isinstance(current, (Int4Weight, Int8Weight)):
                raise ValueError(f"tensor {name} was given twice ({attr} is already loaded, packed)")
            else:
                if isinstance(tensor, Int4Weight):
                    tensor = kernels.dequantize_int4(tensor)
                elif isinstance(tensor, Int8Weight):
                    tensor = kernels.dequantize_int8(tensor)
                (current if rows is None else current[lo:hi]).copy_(tensor)
            written.add(name)
        missing = [n for n in self.expected_weight_names() if n not in written]
        if missing:
            raise ValueError(f"{len(missing)} weights missing from the checkpoint, e.g. {', '.join(missing[:5])}")
        if pending:
            (index, attr), _ = next(iter(pending.items()))
            raise ValueError(f"packed projection {attr} of layer {index} got overlapping pieces (a weight given twice?)")

    def _linear_shape(self, index: int, attr: str) -> tuple[int, int]:
        if index < 0:  # the LM head
            return (self.config.vocab_size, self.config.hidden_size)
        return self.layers[index].linear_shapes[attr]

    def _install_int4(self, owner: nn.Module, attr: str, parts: list[Int4Weight]) -> None:
        """Set ``owner.attr`` to the row concatenation of ``parts``, its tensors registered as parameters."""
        kinds = {(p.zero_points is None, p.mins is None, p.group_size, p.scales.dtype) for p in parts}
        if len(kinds) > 1:
            # Pieces in different modes (say a Q4_0 q with Q4_1 k and v) have no one packed form.
            w = torch.cat([kernels.dequantize_int4(p) for p in parts])
            setattr(owner, attr, nn.Parameter(w.to(self.device, self.dtype), requires_grad=False))
            return
        fields = []
        for field in _INT4_FIELDS:
            tensors = [getattr(p, field) for p in parts]
            if tensors[0] is None:
                fields.append(None)
                continue
            t = (tensors[0] if len(tensors) == 1 else torch.cat(tensors)).to(self.device).contiguous()
            param = nn.Parameter(t, requires_grad=False)
            owner.register_parameter(f"{attr}_{field}", param)
            fields.append(param)
        setattr(owner, attr, Int4Weight(*fields, parts[0].group_size))

    def _install_int8(self, attr: str, w: Int8Weight) -> None:
        """Set ``attr`` (the LM head, or the embedding it is tied to) to ``w`` on the model's
        device, its tensors registered as parameters."""
        fields = []
        for field in ("qweight", "scales"):
            param = nn.Parameter(getattr(w, field).to(self.device).contiguous(), requires_grad=False)
            self.register_parameter(f"{attr}_{field}", param)
            fields.append(param)
        packed = Int8Weight(*fields, w.group_size)
        setattr(self, attr, packed)
        if self.config.tie_word_embeddings:
            self.lm_head = packed

    def int4_weights(self) -> dict[str, Int4Weight]:
        """The projections held packed, by name (``layers.3.qkv_proj``, ``lm_head``)."""
        found = {f"layers.{i}.{attr}": getattr(layer, attr) for i, layer in enumerate(self.layers) for attr in LAYER_LINEARS}
        found["lm_head"] = self.lm_head
        return {name: w for name, w in found.items() if isinstance(w, Int4Weight)}

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
    _TOP_NAMES = {"model.embed_tokens.weight": "embed_tokens", "model.norm.weight": "norm", "lm_head.weight": "lm_head"}

    def _locate(self, name: str) -> tuple[int, str, tuple[int, int] | None]:
        """Where the Hugging Face tensor ``name`` goes: ``(layer index or -1, attribute, rows or None)``."""
        if name in self._TOP_NAMES:
            return -1, self._TOP_NAMES[name], None
        m = self._LAYER_NAME.fullmatch(name)
        if m and int(m[1]) < len(self.layers):
            index, layer, part = int(m[1]), self.layers[int(m[1])], m[2]
            q, kv, inter = layer.q_size, layer.kv_size, self.config.intermediate_size
            qkv_rows = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
            if part in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                return index, part.split(".")[0], None
            if part == "self_attn.o_proj.weight":
                return index, "o_proj", None
            if part == "mlp.down_proj.weight":
                return index, "down_proj", None
            if part in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                start = 0 if part.startswith("mlp.gate") else inter
                return index, "gate_up_proj", (start, start + inter)
            if part in ("self_attn.q_norm.weight", "self_attn.k_norm.weight") and layer.q_norm is not None:
                return index, part.split(".")[1], None
            if (m2 := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", part)) and (
                m2[2] == "weight" or layer.qkv_bias is not None
            ):
                return index, "qkv_proj" if m2[2] == "weight" else "qkv_bias", qkv_rows[m2[1]]
        raise ValueError(f"unexpected tensor {name} for a {self.config.architecture} model with this config")

    def weight_slice(self, name: str) -> torch.Tensor | Int4Weight | Int8Weight:
        """The view of our parameters that the Hugging Face tensor ``name`` fills (``q_proj`` rows of ``qkv_proj``, ...).

        For a projection held packed, the :class:`kernels.Int4Weight` of those rows (views of the
        packed tensors; :func:`kernels.dequantize_int4` gives the float weight); for a weight held
        int8, its :class:`kernels.Int8Weight` (:func:`kernels.dequantize_int8`).
        """
        index, attr, rows = self._locate(name)
        w = getattr(self if index < 0 else self.layers[index], attr)
        if w is None:
            raise ValueError(f"tensor {name}: {attr} is to be loaded packed and is not loaded yet")
        if rows is None:
            return w
        lo, hi = rows
        if isinstance(w, Int4Weight):
            return Int4Weight(*(None if t is None else t[lo:hi] for t in w[:4]), w.group_size)
        return w[lo:hi]
