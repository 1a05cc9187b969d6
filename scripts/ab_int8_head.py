"""SmolLM2-135M single-request CPU decode with its Q8_0 LM head kept int8 (w8a16_gemm) against the
same model with that head dequantised to float32 (what the loader did before), in one process.

The two variants alternate, round after round, so that whatever else runs on a shared machine
weighs on both alike; the medians are printed. Then the LM head alone (1 x 576 @ 576 x 49152):
``torch.matmul`` by the float32 table against ``w8a16_gemm`` by the int8 one, also alternating.
``python3 scripts/ab_int8_head.py [--threads 2] [--rounds 5]`` (benchmarks/NOTES.md has numbers).
"""

import argparse
import random
import statistics
import time

import torch
from torch import nn

import kernels
from kernels.serve.bench.offline import run_engine
from kernels.serve.engine import Engine
from kernels.serve.loader import load_model

INPUT_LEN, OUTPUT_LEN = 128, 128


def float_head_copy():
    """The default model as loaded on CPU, but with the tied embedding / head a float32 table."""
    loaded = load_model(None, device="cpu", dtype="float32")
    model = loaded.model
    table = kernels.dequantize_int8(model.embed_tokens)
    for field in ("qweight", "scales"):
        delattr(model, f"embed_tokens_{field}")
    del model.embed_tokens  # the plain attribute holding the Int8Weight
    model.embed_tokens = nn.Parameter(table, requires_grad=False)
    model.lm_head = model.embed_tokens
    return loaded


def decode_tokens_per_s(engine: Engine, rng: random.Random) -> float:
    prompt = [rng.randrange(1000, 40000) for _ in range(INPUT_LEN)]
    return 1.0 / run_engine(engine, [prompt], OUTPUT_LEN, "ab")["mean_tpot_s"]


def median_ms(fn, reps: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    engines = {"int8 head": Engine(load_model(None, device="cpu", dtype="float32")), "fp32 head": Engine(float_head_copy())}
    assert isinstance(engines["int8 head"].model.lm_head, kernels.Int8Weight)
    assert isinstance(engines["fp32 head"].model.lm_head, nn.Parameter)
    rng = random.Random(0)
    for engine in engines.values():  # warm-up
        decode_tokens_per_s(engine, rng)
    speeds = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            speeds[name].append(decode_tokens_per_s(engine, rng))
    print(f"decode tok/s, 1 request x {INPUT_LEN} in x {OUTPUT_LEN} out, {args.threads} threads, {args.rounds} rounds")
    for name, values in speeds.items():
        print(f"  {name}: median {statistics.median(values):.1f} (rounds: {', '.join(f'{v:.1f}' for v in values)})")

    head8 = engines["int8 head"].model.lm_head
    head32 = engines["fp32 head"].model.lm_head
    x = torch.randn(1, head8.shape[1])
    times = {"fp32 matmul": [], "w8a16_gemm": []}
    for _ in range(args.rounds):
        times["fp32 matmul"].append(median_ms(lambda: x @ head32.T))
        times["w8a16_gemm"].append(median_ms(lambda: head8.gemm(x)))
    print(f"LM head alone, 1 x {head8.shape[1]} @ {head8.shape[1]} x {head8.shape[0]}, ms (median of rounds' medians)")
    for name, values in times.items():
        print(f"  {name}: {statistics.median(values):.2f} (rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
