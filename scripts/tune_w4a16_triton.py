"""Sweep the Triton W4A16 kernel's tile shapes on a GPU (N = K = 8192, group 128, bf16, symmetric)
against bf16 matmul, at M 1, 16 and 64; prints the six fastest (us, BLOCK_N, BLOCK_K, warps) per M.
The choice in kernels/triton/quant.py's ``config`` came from this (benchmarks/NOTES.md):
``python3 scripts/tune_w4a16_triton.py``."""

import itertools

import torch
import triton
import triton.testing

from kernels.ops.quant import pack_int4
from kernels.triton import quant

N = K = 8192
GROUP = 128


def main() -> None:
    torch.manual_seed(0)
    qweight = pack_int4(torch.randint(0, 16, (N, K), dtype=torch.uint8, device="cuda"))
    scales = (torch.rand(N, K // GROUP, device="cuda") * 0.01).to(torch.bfloat16)
    for m in (1, 16, 64):
        a = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(m, N, device="cuda", dtype=torch.bfloat16)
        dense = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        peer = triton.testing.do_bench(lambda: a @ dense.T, warmup=25, rep=200)
        block_m = quant.SMALL_M if m <= quant.SMALL_M else 64
        results = []
        for block_n, block_k, warps in itertools.product((16, 32, 64, 128), (64, 128), (2, 4, 8)):
            grid = (triton.cdiv(m, block_m), triton.cdiv(N, block_n))

            def run():
                quant.w4a16_gemm_kernel[grid](
                    a, qweight, scales, scales, out, m, N, K, GROUP=GROUP, MODE=quant.SYMMETRIC, IEEE=False,
                    BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
                )  # fmt: skip

            results.append((triton.testing.do_bench(run, warmup=25, rep=200), block_n, block_k, warps))
        results.sort()
        best = [(round(t * 1e3, 1), bn, bk, w) for t, bn, bk, w in results[:6]]
        print(f"M={m}: bf16 matmul {peer * 1e3:.1f} us; fastest {best}; slowest {results[-1][0] * 1e3:.1f} us")


if __name__ == "__main__":
    main()
