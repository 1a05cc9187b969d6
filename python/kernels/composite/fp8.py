"""FP8 GEMM as model code writes it with torch alone: ``torch._scaled_mm`` where the device has
FP8 tensor cores and the scales are per-tensor or row-wise, else dequantisation (correct
everywhere, not fast: the CPU's FP8 path)."""

import torch

from ..reference.fp8 import dequantize_a, dequantize_b


def _scaled_mm_ok(a, b, scale_a, scale_b, out_dtype) -> bool:
    # ROCm's FP8 GEMMs take the fnuz variant of e4m3, not this one.
    if a.device.type != "cuda" or torch.version.hip or scale_a.dim() == 2 or out_dtype == torch.float32:
        return False
    # cuBLAS wants K and N in whole 16-byte rows, and row-wise scales only with bfloat16 output.
    if a.shape[1] % 16 or b.shape[0] % 16:
        return False
    if (scale_a.numel() > 1 or scale_b.numel() > 1) and out_dtype != torch.bfloat16:
        return False
    return torch.cuda.get_device_capability(a.device) >= (8, 9)


def fp8_gemm(a, b, scale_a, scale_b, out_dtype, bias, use_fast_accum):
    m, n = a.shape[0], b.shape[0]
    if m and _scaled_mm_ok(a, b, scale_a, scale_b, out_dtype):
        # _scaled_mm wants both scales [1] (per tensor) or both row-wise ([M, 1], [1, N]).
        if scale_a.numel() == 1 and scale_b.numel() == 1:
            sa, sb = scale_a.view(()), scale_b.view(())
        else:
            sa, sb = scale_a.expand(m).reshape(m, 1), scale_b.expand(n).reshape(1, n)
        return torch._scaled_mm(a, b.T, scale_a=sa, scale_b=sb, bias=bias, out_dtype=out_dtype, use_fast_accum=use_fast_accum)
    out = dequantize_a(a, scale_a) @ dequantize_b(b, scale_b).T
    if bias is not None:
        out += bias
    return out.to(out_dtype)
