import torch


def w4a16_gemm(a, qweight, scales, zero_points, mins, group_size):
    """Dequantise the whole weight in ``a``'s dtype with tensor ops, then one matmul."""
    n, k = qweight.shape[0], qweight.shape[1] * 8
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=qweight.device)
    q = ((qweight[:, :, None] >> shifts) & 0xF).view(n, k // group_size, group_size)
    s = scales.to(a.dtype)[:, :, None]
    if zero_points is not None:
        w = (q - zero_points[:, :, None].to(torch.int32)).to(a.dtype) * s
    elif mins is not None:
        w = q.to(a.dtype) * s + mins.to(a.dtype)[:, :, None]
    else:
        w = (q - 8).to(a.dtype) * s
    return a @ w.view(n, k).T
