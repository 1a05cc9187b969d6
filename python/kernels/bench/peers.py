"""The peers each op is compared against in the same run.

- ``torch_eager``: the torch composite (``kernels.composite``), called directly: what model code
  writes without a kernel library.
- ``torch_compile``: ``torch.compile`` of that same composite (``dynamic=False``: code specialised to
  each shape, its best case), compiled and warmed up before any timing.
- ``liger``: Liger-Kernel's Triton kernels when ``liger_kernel`` is importable (NVIDIA only; it has
  no CPU kernels). Its functions are bound by inspecting the signature found at run time, and a
  peer that cannot be imported or called is skipped with a printed note, never faked.
- ``bf16_matmul`` (GPU), ``fp32_matmul`` (CPU), for ``w4a16_gemm`` and ``w8a16_gemm``:
  ``torch.matmul`` by the weight dequantised to that dtype ahead of time.
- ``scaled_mm_tensor``, ``scaled_mm_rowwise``, ``scaled_mm_rowwise_fast``, ``scaled_mm_blockwise`` for ``fp8_gemm``
  (``peers_fp8``): torch's scaled FP8 GEMMs on cuBLAS, each for its granularity.
- Attention (``peers_attention``): ``sdpa`` (CPU: torch's default SDPA), ``sdpa_cudnn`` and
  ``sdpa_flash`` (GPU: SDPA restricted to one backend) on the same data laid out contiguously, and
  ``triton`` (our own Triton backend, forced through ``kernels.backend("triton")``).

Which peers an op has, per device, is the spec's ``peers_for_device``.

A peer takes the same input set as our backends; ``prepare`` turns it into the peer's own layout
(outside timing) and ``outputs`` extracts what to compare with the reference.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from .specs import OpSpec


@dataclass
class Peer:
    name: str
    fn: Callable
    # input set of the public op -> the peer's arguments (run outside timing)
    prepare: Callable[[tuple], tuple] = field(default=lambda args: args)
    # (peer args, peer result) -> tensors in the order of OpSpec.outputs
    outputs: Callable[[tuple, object], list[torch.Tensor]] | None = None
    # entered around the check, warm-up, capture and timing of this peer (an SDPA backend, ...)
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


class PeerUnavailable(RuntimeError):
    """This peer cannot run here (not installed, no kernel for this variant or device, API changed)."""


def torch_eager(spec: OpSpec) -> Peer:
    if spec.composite is None:
        raise PeerUnavailable(f"{spec.name} has no torch composite")
    return Peer("torch_eager", spec.composite, outputs=spec.outputs)


def unfused(spec: OpSpec) -> Peer:
    if spec.unfused is None:
        raise PeerUnavailable(f"{spec.name} is not a fusion of other ops")
    return Peer("unfused", spec.unfused, outputs=spec.outputs)


def torch_compile(spec: OpSpec) -> Peer:
    """A fresh compile of the composite (compiled lazily by the first, untimed, call)."""
    import torch._dynamo

    if spec.composite is None:
        raise PeerUnavailable(f"{spec.name} has no torch composite")

    # Every shape gets its own compile: a fresh cache keeps dynamo from switching to dynamic
    # shapes or hitting its recompile limit after a few shapes.
    torch._dynamo.reset()
    compiled = torch.compile(spec.composite, dynamic=False, fullgraph=False)
    return Peer("torch_compile", compiled, outputs=spec.outputs)


# ---------------------------------------------------------------------------------------------
# Liger-Kernel


def _liger_function(module: str, name: str):
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # ImportError, or a Triton / CUDA error raised at import
        raise PeerUnavailable(f"cannot import {module}: {type(e).__name__}: {e}") from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise PeerUnavailable(f"{module} has no {name} in the installed liger_kernel")
    return fn


def _bind_positional(function_cls, ours: tuple[str, ...], extras: dict[str, object]) -> Callable[..., object]:
    """A caller of ``function_cls.apply(*ours)`` that orders the arguments by the run-time signature.

    ``autograd.Function.apply`` takes positional arguments only, and Liger's forward signatures
    differ across releases (optional ``offset``, ``casting_mode``, ``in_place``, ``row_mode``...). The
    forward found at run time decides the order: each parameter named in ``ours`` or ``extras``
    (compared case-insensitively) is filled, the first other parameter with a default ends the
    list (defaults apply from there on), and another parameter without a default, or one of
    ``ours`` missing, means the API changed: the peer is skipped, never guessed.
    """
    try:
        params = list(inspect.signature(function_cls.forward).parameters.values())[1:]  # drop ctx
    except (TypeError, ValueError) as e:
        raise PeerUnavailable(f"cannot inspect {function_cls.__name__}.forward: {e}") from None
    shown = f"{function_cls.__name__}.forward({', '.join(p.name for p in params)})"
    order: list[str] = []
    for p in params:
        key = p.name.lower()
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        if key in ours or key in extras:
            order.append(key)
        elif p.default is p.empty:
            raise PeerUnavailable(f"{shown} needs {p.name!r}, which the bench does not know")
        else:
            break
    missing = [k for k in ours if k not in order]
    if missing:
        raise PeerUnavailable(f"{shown} takes no {', '.join(missing)}")

    def call(*tensors):
        values = dict(extras)
        values.update(zip(ours, tensors))
        return function_cls.apply(*(values[k] for k in order))

    return call


def _liger_rms_norm(spec: OpSpec, variant: str) -> Peer:
    fn = _liger_function("liger_kernel.ops.rms_norm", "LigerRMSNormFunction")
    # casting_mode "llama" is Llama's: normalise in float32, round, then multiply by the weight.
    call = _bind_positional(fn, ("x", "w", "eps"), {"offset": 0.0, "casting_mode": "llama"})
    return Peer("liger", call, outputs=lambda args, out: [out])


def _liger_fused_add_rms_norm(spec: OpSpec, variant: str) -> Peer:
    # Out of place: returns (normed, residual_sum); the same bytes move as in our in-place op.
    fn = _liger_function("liger_kernel.ops.fused_add_rms_norm", "LigerFusedAddRMSNormFunction")
    call = _bind_positional(fn, ("x", "r", "w", "eps"), {"offset": 0.0, "casting_mode": "llama"})

    def outputs(args, out):
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise PeerUnavailable("LigerFusedAddRMSNormFunction did not return (normed, residual)")
        return [out[0], out[1]]

    return Peer("liger", call, outputs=outputs)


def _split_halves(args: tuple) -> tuple:
    # Liger's gated activations take gate and up as two tensors (two projections in HF models) and
    # make non-contiguous inputs contiguous, a copy that is not part of the op. They get the two
    # halves as contiguous tensors, built outside timing: the same bytes read and written.
    x = args[0]
    d = x.shape[1] // 2
    return (x[:, :d].contiguous(), x[:, d:].contiguous())


def _liger_gated(module: str, name: str) -> Peer:
    fn = _liger_function(module, name)
    call = _bind_positional(fn, ("a", "b"), {})
    return Peer("liger", call, prepare=_split_halves, outputs=lambda args, out: [out])


def _liger_silu_and_mul(spec: OpSpec, variant: str) -> Peer:
    return _liger_gated("liger_kernel.ops.swiglu", "LigerSiLUMulFunction")


def _liger_gelu_and_mul(spec: OpSpec, variant: str) -> Peer:
    if variant != "tanh":
        raise PeerUnavailable("Liger's GEGLU implements only the tanh approximation")
    return _liger_gated("liger_kernel.ops.geglu", "LigerGELUMulFunction")


# rotary_embedding_: no Liger peer (its RoPE takes [batch, heads, seq, head_dim] q/k and cos/sin
# tensors per position, not positions into a cache; converting would time a different op).
_LIGER = {
    "rms_norm": _liger_rms_norm,
    "fused_add_rms_norm_": _liger_fused_add_rms_norm,
    "silu_and_mul": _liger_silu_and_mul,
    "gelu_and_mul": _liger_gelu_and_mul,
}


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger(spec: OpSpec, variant: str, device: torch.device) -> Peer:
    if not liger_installed():
        raise PeerUnavailable("liger_kernel is not installed")
    if device.type != "cuda":
        raise PeerUnavailable("liger_kernel has Triton kernels for GPUs only")
    make = _LIGER.get(spec.name)
    if make is None:
        raise PeerUnavailable(f"liger_kernel has no kernel with {spec.name}'s layout")
    return make(spec, variant)


# ---------------------------------------------------------------------------------------------
# Dense matmul of the dequantised weight (the quantised GEMMs)

DENSE_MATMUL = {"bf16_matmul": torch.bfloat16, "fp32_matmul": torch.float32}


def _dequantizers() -> dict[str, Callable[[tuple], torch.Tensor]]:
    """Quantised GEMM -> (its arguments after ``a``) -> the float32 weight ``[N, K]``."""
    from ..reference import quant

    return {"w4a16_gemm": lambda w: quant.dequantize(*w), "w8a16_gemm": lambda w: quant.dequantize_int8(*w)}


def dense_matmul(spec: OpSpec, name: str) -> Peer:
    """``torch.matmul(a, W.T)`` with ``W`` dequantised to the peer's dtype outside timing: what an
    unquantised model of that dtype runs, reading 4x (bf16) or 8x (fp32) the weight bytes of INT4
    (2x or 4x those of INT8)."""
    dequantize = _dequantizers().get(spec.name)
    if dequantize is None:
        raise PeerUnavailable(f"{name} is a peer of the quantised GEMMs, not of {spec.name}")
    dtype = DENSE_MATMUL[name]

    def prepare(args):
        return (args[0].to(dtype), dequantize(args[1:]).to(dtype).T)

    return Peer(name, torch.matmul, prepare=prepare, outputs=lambda args, out: [out])


PEER_NAMES = (
    "torch_eager", "torch_compile", "unfused", "liger", "sdpa", "sdpa_cudnn", "sdpa_flash", "triton", "bf16_matmul", "fp32_matmul",
    "scaled_mm_tensor", "scaled_mm_rowwise", "scaled_mm_rowwise_fast", "scaled_mm_blockwise",
)  # fmt: skip


def peers_for(
    spec: OpSpec, variant: str, device: torch.device, notes: list[str], wanted=PEER_NAMES, args: tuple | None = None
) -> list[Peer]:
    """The peers of one (op, variant) on ``device`` among ``wanted``; why one is missing goes to ``notes``.

    ``args`` is an input set of the case (the attention peers look at its sizes and probe the
    SDPA backends with small tensors of the same heads and dtype).
    """
    from . import peers_attention, peers_fp8

    found = []
    what = spec.name + ("/" + variant if variant else "")
    for name in spec.peers_for_device(device.type):
        if name not in wanted:
            continue
        if name == "liger" and not (liger_installed() or device.type == "cuda"):
            continue  # not installed on a CPU machine: nothing to say
        try:
            if name == "torch_eager":
                found.append(torch_eager(spec))
            elif name == "torch_compile":
                found.append(torch_compile(spec))
            elif name == "unfused":
                found.append(unfused(spec))
            elif name == "liger":
                found.append(liger(spec, variant, device))
            elif name in DENSE_MATMUL:
                found.append(dense_matmul(spec, name))
            elif name in peers_fp8.NAMES:
                found.append(peers_fp8.make(name, spec, variant, device))
            else:
                found.append(peers_attention.make(name, spec, variant, device, args, notes))
        except PeerUnavailable as e:
            notes.append(f"peer {name} skipped for {what}: {e}")
    return found
