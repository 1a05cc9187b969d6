"""Benchmark specs: for each op, the shapes users run, the bytes a call moves, and its inputs.

The elementwise ops here are memory-bound: their roofline is the device copy bandwidth
(``copy_gbps``) and their ``flops`` are ``None``. ``bytes_moved`` counts the compulsory traffic of
one call: each tensor the op reads, once, plus each tensor it writes, once. The attention ops
(``specs_attention``) also count flops: decode is bound by reading the KV cache (``read_gbps``),
prefill by the matmul peak (``bf16_tflops``). The INT4 GEMM has its own (``specs_quant``).

Shape strings follow DESIGN.md: ``TOKENSxHIDDEN`` for norms, RoPE and activations, where HIDDEN is
the normalised width for norms, the output width ``d`` for gated activations (the input is
``[TOKENS, 2 * d]``), and ``num_heads * head_dim`` of the queries for RoPE; the attention ops have
their own (``specs_attention``).

A benchmark case is (variant, shape). By default every variant of an op runs with every default
shape; an op may instead list its default cases (paged prefill: a single sequence, and a ragged
batch whose shape is not a single sequence's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .. import composite, reference
from ..ops import activation as _activation
from ..ops import norm as _norm
from ..ops import rope as _rope

EPS = 1e-6

# RoPE geometry of Llama-3-8B: head_dim 128, 32 query heads and 8 KV heads (4 queries per KV head),
# rope_theta 500000, max_position_embeddings 8192.
ROPE_HEAD_DIM = 128
ROPE_QUERIES_PER_KV_HEAD = 4
ROPE_THETA = 500000.0
ROPE_MAX_POSITION = 8192


class ShapeError(ValueError):
    """A shape string that does not describe a valid problem of the op."""


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _parse_dims(op: str, text: str, layout: str) -> tuple[int, ...]:
    parts = text.lower().split("x")
    want = layout.count("x") + 1
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != want or any(d <= 0 for d in dims):
        raise ShapeError(f"bad shape {text!r} for {op}: expected {layout} with positive integers, e.g. 128x4096")
    return dims


def _normal(shape, dtype, device, gen, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    t = torch.randn(shape, dtype=torch.float32, device=device, generator=gen)
    if std != 1.0 or mean != 0.0:
        t = t * std + mean
    return t.to(dtype)


def _norm_weight(hidden, dtype, device, gen) -> torch.Tensor:
    # Trained RMSNorm weights sit near 1. N(1, 0.1^2) also keeps the in-place fused_add_rms_norm_
    # finite over the thousands of back-to-back calls of a timing run (each call adds the normalised
    # x into the residual; with N(0, 1) weights a float16 residual overflows within a few hundred).
    return _normal((hidden,), dtype, device, gen, mean=1.0, std=0.1)


# ---------------------------------------------------------------------------------------------
# The spec type


ELEMENTWISE_PEERS = ("torch_eager", "torch_compile", "liger")


@dataclass(frozen=True)
class OpSpec:
    name: str
    summary: str
    layout: str  # the shape string's fields, e.g. "TOKENSxHIDDEN"
    layout_doc: str  # what the fields mean for this op
    variants: tuple[str, ...]  # "" when one op call has no variants
    default_shapes: dict[str, tuple[str, ...]]  # device type -> shapes
    inplace: bool
    public: Callable  # the public op (kernels.<op>), dispatching through the registry
    composite: Callable | None  # the torch composite (the torch_eager peer; compiled: torch_compile)
    reference: Callable  # float32 reference, called with the same arguments as ``public``
    _bytes: Callable[..., int]  # (dims, dtype[, variant]) -> bytes
    _inputs: Callable[[tuple[int, ...], torch.dtype, torch.device, str, torch.Generator], tuple]
    _outputs: Callable[[tuple, object], list[torch.Tensor]]
    _validate: Callable[[str, tuple[int, ...]], None] = lambda text, dims: None
    ceiling: str = "copy_gbps"
    # (dims, dtype, variant) -> flops of one call; None: memory-bound, no flops reported
    _flops: Callable[[tuple[int, ...], torch.dtype, str], int] | None = None
    # device type -> peers compared against, in table order (names of peers.PEER_NAMES)
    peers: dict[str, tuple[str, ...]] | None = None
    # variant text -> canonical variant, raising ShapeError; None: one of ``variants``
    _parse_variant: Callable[[str], str] | None = None
    # (variant, dims) -> None when the pair is a valid case, else why not
    _check_case: Callable[[str, tuple[int, ...]], str | None] = lambda variant, dims: None
    # device type -> [(variant, shape)]; None: every variant with every default shape
    default_cases: dict[str, tuple[tuple[str, str], ...]] | None = None
    # public-op arguments -> the arguments the registry's implementations see (for registry.select)
    _dispatch_args: Callable[[tuple], tuple] = lambda args: args
    # A single input set larger than this many times the last-level cache / L2 is timed alone
    # (no rotation among several: it already streams from DRAM; two would not fit in memory).
    single_set_over_cache: float | None = None
    # A fused op's work done by the separate public ops it replaces (the ``unfused`` peer)
    unfused: Callable | None = None

    def parse_shape(self, text: str) -> tuple[int, ...]:
        dims = _parse_dims(self.name, text, self.layout)
        self._validate(text, dims)
        return dims

    def parse_variant(self, text: str) -> str:
        text = text.strip()
        if self._parse_variant is not None:
            return self._parse_variant(text)
        if text not in self.variants:
            shown = ", ".join(repr(v) for v in self.variants)
            raise ShapeError(f"bad variant {text!r} for {self.name}: choose from {shown}")
        return text

    def check_case(self, variant: str, dims: tuple[int, ...]) -> str | None:
        return self._check_case(variant, dims)

    def shapes_for(self, device_type: str) -> tuple[str, ...]:
        if self.default_cases is not None:
            cases = self.cases_for(device_type)
            return tuple(dict.fromkeys(shape for _, shape in cases))
        return self.default_shapes["cuda" if device_type == "cuda" else "cpu"]

    def cases_for(self, device_type: str) -> tuple[tuple[str, str], ...]:
        """The default (variant, shape) cases on this device, in table order."""
        key = "cuda" if device_type == "cuda" else "cpu"
        if self.default_cases is not None:
            return self.default_cases[key]
        return tuple((v, s) for v in self.variants for s in self.default_shapes[key])

    def peers_for_device(self, device_type: str) -> tuple[str, ...]:
        if self.peers is None:
            return ELEMENTWISE_PEERS
        return self.peers["cuda" if device_type == "cuda" else "cpu"]

    def bytes_moved(self, dims: tuple[int, ...], dtype: torch.dtype, variant: str = "") -> int:
        if self._flops is None:  # the elementwise ops: bytes do not depend on the variant
            return self._bytes(dims, dtype)
        return self._bytes(dims, dtype, variant)

    def flops(self, dims: tuple[int, ...], dtype: torch.dtype, variant: str = "") -> int | None:
        """Flops of one call, or None for the memory-bound ops (their roofline is bandwidth)."""
        return None if self._flops is None else self._flops(dims, dtype, variant)

    def dispatch_args(self, args: tuple) -> tuple:
        """``args`` of the public op as the registry's implementations receive them."""
        return self._dispatch_args(args)

    def make_inputs(self, dims, dtype, device, variant: str, gen: torch.Generator) -> tuple:
        """Fresh random arguments of the public op, in its positional order."""
        return self._inputs(dims, dtype, torch.device(device), variant, gen)

    def outputs(self, args: tuple, result) -> list[torch.Tensor]:
        """What a call produced: the returned tensor, or the tensors an in-place op modified."""
        return self._outputs(args, result)


def clone_tensor(t: torch.Tensor) -> torch.Tensor:
    """A copy with the same sizes and strides (a strided view stays strided, so its kernel path and
    torch.compile's guards stay the same)."""
    out = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device)
    return out.copy_(t)


def clone_args(args: tuple) -> tuple:
    return tuple(clone_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)


# ---------------------------------------------------------------------------------------------
# rms_norm


def _rms_norm_inputs(dims, dtype, device, variant, gen):
    tokens, hidden = dims
    return (_normal((tokens, hidden), dtype, device, gen), _norm_weight(hidden, dtype, device, gen), EPS)


def _rms_norm_bytes(dims, dtype):
    tokens, hidden = dims
    # read x, write out, read weight once
    return (2 * tokens * hidden + hidden) * dtype_size(dtype)


# ---------------------------------------------------------------------------------------------
# fused_add_rms_norm_


def _fused_add_inputs(dims, dtype, device, variant, gen):
    tokens, hidden = dims
    x = _normal((tokens, hidden), dtype, device, gen)
    residual = _normal((tokens, hidden), dtype, device, gen)
    return (x, residual, _norm_weight(hidden, dtype, device, gen), EPS)


def _fused_add_bytes(dims, dtype):
    tokens, hidden = dims
    # read x and residual, write both back, read weight once
    return (4 * tokens * hidden + hidden) * dtype_size(dtype)


# ---------------------------------------------------------------------------------------------
# gated activations


def _gated_inputs(dims, dtype, device, variant, gen):
    tokens, d = dims
    x = _normal((tokens, 2 * d), dtype, device, gen)
    return (x,) if variant == "" else (x, variant)


def _gated_bytes(dims, dtype):
    tokens, d = dims
    # read gate and up (2d per token), write d per token
    return 3 * tokens * d * dtype_size(dtype)


# ---------------------------------------------------------------------------------------------
# rotary_embedding_


def rope_heads(hidden: int) -> tuple[int, int, int]:
    """(num_heads, num_kv_heads, head_dim) of a RoPE shape's HIDDEN."""
    num_heads = hidden // ROPE_HEAD_DIM
    return num_heads, num_heads // ROPE_QUERIES_PER_KV_HEAD, ROPE_HEAD_DIM


def rope_validate(text, dims, op="rotary_embedding_"):
    hidden = dims[1]
    unit = ROPE_HEAD_DIM * ROPE_QUERIES_PER_KV_HEAD
    if hidden % unit:
        raise ShapeError(
            f"bad shape {text!r} for {op}: HIDDEN (= num_heads * head_dim of q) must be a "
            f"multiple of {unit} (head_dim {ROPE_HEAD_DIM}, {ROPE_QUERIES_PER_KV_HEAD} query heads per KV "
            f"head, as Llama-3-8B's 32/8 heads), e.g. 128x4096"
        )


def rope_cos_sin_cache(max_position: int, rotary_dim: int, dtype, device) -> torch.Tensor:
    """Row p = [cos(p * inv_freq), sin(p * inv_freq)], the standard RoPE frequencies (Llama 3's theta)."""
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim))
    angles = torch.arange(max_position, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype).contiguous()


def _rope_positions(tokens: int, max_position: int, device, gen) -> torch.Tensor:
    # Distinct positions while they last (a prefill, or a batch of decodes at different lengths);
    # past max_position, whole further permutations (several sequences in one batch).
    rounds = math.ceil(tokens / max_position)
    perms = [torch.randperm(max_position, device=device, generator=gen) for _ in range(rounds)]
    return torch.cat(perms)[:tokens].contiguous()


def rope_qkv(dims, dtype, device, gen):
    """positions, q, k, v and the cos / sin cache of a RoPE shape: q, k and v are views of one fused
    qkv projection output, as a serving engine passes them."""
    tokens, hidden = dims
    num_heads, num_kv_heads, head_dim = rope_heads(hidden)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = _normal((tokens, width), dtype, device, gen)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=1)
    q, k, v = (t.view(tokens, -1, head_dim) for t in (q, k, v))
    max_position = ROPE_MAX_POSITION
    positions = _rope_positions(tokens, max_position, device, gen)
    return positions, q, k, v, _rope_cache(max_position, head_dim, dtype, device)


def _rope_inputs(dims, dtype, device, variant, gen):
    positions, q, k, _, cache = rope_qkv(dims, dtype, device, gen)
    return (positions, q, k, cache, variant == "neox")


_CACHES: dict[tuple, torch.Tensor] = {}


def _rope_cache(max_position, rotary_dim, dtype, device) -> torch.Tensor:
    # One cache per model: every input set shares it, as every layer of a model does.
    key = (max_position, rotary_dim, dtype, str(device))
    if key not in _CACHES:
        _CACHES.clear()
        _CACHES[key] = rope_cos_sin_cache(max_position, rotary_dim, dtype, device)
    return _CACHES[key]


def rope_bytes(dims, dtype):
    tokens, hidden = dims
    num_heads, num_kv_heads, head_dim = rope_heads(hidden)
    size = dtype_size(dtype)
    qk = 2 * tokens * (num_heads + num_kv_heads) * head_dim * size  # read and write q and k
    positions = tokens * 8
    rows = min(tokens, ROPE_MAX_POSITION)  # distinct cache rows read (cache in q's dtype)
    return qk + positions + rows * head_dim * size


# ---------------------------------------------------------------------------------------------
# The table

_NORM_SHAPES = {
    "cuda": ("1x4096", "128x4096", "4096x4096", "16384x8192"),
    "cpu": ("1x4096", "512x4096"),
}

SPECS: dict[str, OpSpec] = {
    "rms_norm": OpSpec(
        name="rms_norm",
        summary="out = x / rms(x) * weight",
        layout="TOKENSxHIDDEN",
        layout_doc="x is [TOKENS, HIDDEN]",
        variants=("",),
        default_shapes=_NORM_SHAPES,
        inplace=False,
        public=_norm.rms_norm,
        composite=composite.norm.rms_norm,
        reference=reference.rms_norm,
        _bytes=_rms_norm_bytes,
        _inputs=_rms_norm_inputs,
        _outputs=lambda args, result: [result],
    ),
    "fused_add_rms_norm_": OpSpec(
        name="fused_add_rms_norm_",
        summary="residual += x; x = rms_norm(residual), in place",
        layout="TOKENSxHIDDEN",
        layout_doc="x and residual are [TOKENS, HIDDEN]",
        variants=("",),
        default_shapes=_NORM_SHAPES,
        inplace=True,
        public=_norm.fused_add_rms_norm_,
        composite=composite.norm.fused_add_rms_norm_,
        reference=reference.fused_add_rms_norm_,
        _bytes=_fused_add_bytes,
        _inputs=_fused_add_inputs,
        _outputs=lambda args, result: [args[0], args[1]],
    ),
    "rotary_embedding_": OpSpec(
        name="rotary_embedding_",
        summary="RoPE on q and k, in place",
        layout="TOKENSxHIDDEN",
        layout_doc=(
            f"HIDDEN = num_heads * head_dim of q; head_dim {ROPE_HEAD_DIM}, num_kv_heads = num_heads / "
            f"{ROPE_QUERIES_PER_KV_HEAD} (Llama-3-8B: 4096 = 32 x 128, 8 KV heads); q and k are views of "
            f"a fused qkv tensor; cos_sin_cache [{ROPE_MAX_POSITION}, {ROPE_HEAD_DIM}] in q's dtype"
        ),
        variants=("neox",),
        default_shapes={
            "cuda": ("1x4096", "128x4096", "1024x4096", "4096x4096", "16384x4096"),
            "cpu": ("1x4096", "512x4096"),
        },
        inplace=True,
        public=_rope.rotary_embedding_,
        composite=composite.rope.rotary_embedding_,
        reference=reference.rotary_embedding_,
        _bytes=rope_bytes,
        _inputs=_rope_inputs,
        _outputs=lambda args, result: [args[1], args[2]],
        _validate=rope_validate,
    ),
    "silu_and_mul": OpSpec(
        name="silu_and_mul",
        summary="silu(x[:, :d]) * x[:, d:]",
        layout="TOKENSxHIDDEN",
        layout_doc="HIDDEN = d, the output width; x is [TOKENS, 2 * HIDDEN] (Llama-3-8B MLP: d = 14336)",
        variants=("",),
        default_shapes={
            "cuda": ("1x14336", "128x14336", "4096x14336", "16384x4096"),
            "cpu": ("1x4096", "512x4096"),
        },
        inplace=False,
        public=_activation.silu_and_mul,
        composite=composite.activation.silu_and_mul,
        reference=reference.silu_and_mul,
        _bytes=_gated_bytes,
        _inputs=_gated_inputs,
        _outputs=lambda args, result: [result],
    ),
    "gelu_and_mul": OpSpec(
        name="gelu_and_mul",
        summary="gelu(x[:, :d]) * x[:, d:] (variants: approximate='none' and 'tanh')",
        layout="TOKENSxHIDDEN",
        layout_doc="HIDDEN = d, the output width; x is [TOKENS, 2 * HIDDEN]",
        variants=("none", "tanh"),
        default_shapes={
            "cuda": ("1x14336", "128x14336", "4096x14336", "16384x4096"),
            "cpu": ("1x4096", "512x4096"),
        },
        inplace=False,
        public=_activation.gelu_and_mul,
        composite=composite.activation.gelu_and_mul,
        reference=reference.gelu_and_mul,
        _bytes=_gated_bytes,
        _inputs=_gated_inputs,
        _outputs=lambda args, result: [result],
    ),
}

# The attention specs build on the helpers above (imported here, at the end, for that reason).
from .specs_attention import ATTENTION_SPECS  # noqa: E402

SPECS.update(ATTENTION_SPECS)

from .specs_fp8 import FP8_SPECS  # noqa: E402
from .specs_quant import QUANT_SPECS  # noqa: E402
from .specs_quant_int8 import QUANT_INT8_SPECS  # noqa: E402

SPECS.update(QUANT_SPECS)
SPECS.update(QUANT_INT8_SPECS)
SPECS.update(FP8_SPECS)

OP_NAMES = tuple(SPECS)


def resolve_op(name: str) -> list[str]:
    """The op names an OP argument stands for: one op (trailing underscore optional) or ``all``."""
    if name == "all":
        return list(OP_NAMES)
    for op in OP_NAMES:
        if name == op or name == op.rstrip("_"):
            return [op]
    raise KeyError(f"unknown op {name!r}; choose one of: {', '.join(OP_NAMES)}, or all")
