"""Fake (meta) implementations of the native schemas, so that torch.compile can trace them."""

from __future__ import annotations

import torch


def register_fakes() -> None:
    @torch.library.register_fake("kernels::rms_norm")
    def _(x, weight, eps):
        return x.new_empty(x.shape)

    @torch.library.register_fake("kernels::fused_add_rms_norm_")
    def _(x, residual, weight, eps):
        return None

    @torch.library.register_fake("kernels::rotary_embedding_")
    def _(positions, q, k, cos_sin_cache, is_neox):
        return None

    @torch.library.register_fake("kernels::silu_and_mul")
    def _(x):
        return x.new_empty(x.shape[0], x.shape[1] // 2)

    @torch.library.register_fake("kernels::gelu_and_mul")
    def _(x, tanh):
        return x.new_empty(x.shape[0], x.shape[1] // 2)
