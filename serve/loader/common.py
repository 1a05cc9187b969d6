"""What every loader does once it knows the config and can list the checkpoint's tensors."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm

from ..model import CausalLM, ModelConfig


def build_model(
    config: ModelConfig,
    dtype: torch.dtype,
    device,
    shapes: dict[str, tuple[int, ...]],
    read: Callable[[str], torch.Tensor],
    desc: str,
    int4=(),
    int8=(),
) -> CausalLM:
    """Check a checkpoint's tensor names and shapes, then allocate the model and fill it.

    The check runs on a meta-device model before any real memory is taken, so a checkpoint with
    missing, unexpected or misshapen tensors fails at once. ``read(name)`` returns one tensor in
    the Hugging Face layout; it runs under a progress bar. ``int4``: the names for which ``read``
    returns a packed ``kernels.Int4Weight`` (see :class:`CausalLM`); the projections they make up
    whole are not allocated as float tensors. ``int8``: likewise, the LM head's weight when ``read``
    returns it as a ``kernels.Int8Weight``.
    """
    CausalLM(config, dtype, "meta").load_weights((n, torch.empty(s, device="meta")) for n, s in shapes.items())
    model = CausalLM(config, dtype, device, int4=int4, int8=int8)
    names = list(shapes)
    model.load_weights(_progress(names, read, desc))
    return model


def _progress(names: list[str], read: Callable[[str], torch.Tensor], desc: str) -> Iterable[tuple[str, torch.Tensor]]:
    for name in tqdm(names, desc=desc, unit="tensor"):
        yield name, read(name)


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` is bfloat16 on accelerators and float32 on CPU; names like ``"bfloat16"`` map to dtypes."""
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str) and dtype in names:
        return names[dtype]
    if dtype in names.values():
        return dtype
    raise ValueError(f"dtype must be 'auto', float32, float16 or bfloat16; got {dtype!r}")


def resolve_device(device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto' or a torch device; got {device!r}") from e
