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

    @torch.library.register_fake("kernels::store_kv_cache")
    def _(k, v, k_cache, v_cache, slot_mapping):
        return None

    @torch.library.register_fake("kernels::rotary_embedding_and_store_kv_")
    def _(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, is_neox):
        return None

    @torch.library.register_fake("kernels::paged_decode_attention")
    def _(q, k_cache, v_cache, page_table, seq_lens, scale, window, soft_cap):
        return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)

    @torch.library.register_fake("kernels::paged_decode_attention_with_rope_")
    def _(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, page_table, seq_lens, scale, window,
          soft_cap, is_neox):
        return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)

    @torch.library.register_fake("kernels::paged_prefill_attention")
    def _(q, k_cache, v_cache, page_table, qo_indptr, kv_lens, scale, causal, window, soft_cap):
        return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)

    @torch.library.register_fake("kernels::merge_attention_states")
    def _(v_a, lse_a, v_b, lse_b):
        return v_a.new_empty(v_a.shape), lse_a.new_empty(lse_a.shape)

    @torch.library.register_fake("kernels::w4a16_gemm")
    def _(a, qweight, scales, zero_points, mins, group_size):
        return a.new_empty(a.shape[0], qweight.shape[0])

    @torch.library.register_fake("kernels::w8a16_gemm")
    def _(a, qweight, scales, group_size):
        return a.new_empty(a.shape[0], qweight.shape[0])

    @torch.library.register_fake("kernels::quantize_fp8")
    def _(x, granularity, scale, column_major_scales):
        m, k = x.shape
        q = x.new_empty((m, k), dtype=torch.float8_e4m3fn)
        if granularity != 2:
            return q, x.new_empty((1,) if granularity == 0 else (m,), dtype=torch.float32)
        groups = -(-k // 128)
        if column_major_scales:
            return q, x.new_empty((groups, m), dtype=torch.float32).T
        return q, x.new_empty((m, groups), dtype=torch.float32)

    @torch.library.register_fake("kernels::fp8_gemm")
    def _(a, b, scale_a, scale_b, out_dtype, bias, use_fast_accum):
        return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)
