"""Where a batch-64 decode step of the engine goes (dummy Llama-3-8B, bf16, CUDA).

Prints the mean step time of steady decoding with overlap scheduling, then torch-profiler tables of
10 such steps, by device time and by host time. Run on the GPU machine (benchmarks/NOTES.md has
the numbers): ``python3 scripts/profile_engine.py``.
"""

import random
import time

import torch
from torch.profiler import ProfilerActivity, profile

from kernels.serve.engine import Engine
from kernels.serve.sampling import SamplingParams

NUM_REQUESTS, INPUT_LEN, OUTPUT_LEN, TIMED_STEPS = 64, 128, 128, 40


def main() -> None:
    engine = Engine("llama-3-8b", device="cuda", dtype="bfloat16", load_format="dummy")
    rng = random.Random(0)
    params = SamplingParams(max_tokens=OUTPUT_LEN, temperature=0, ignore_eos=True)

    def prompts():
        return [[rng.randrange(1000) for _ in range(INPUT_LEN)] for _ in range(NUM_REQUESTS)]

    engine.generate(prompts(), params)  # warm-up: every CUDA graph captured
    for i, p in enumerate(prompts()):
        engine.add_request(f"r{i}", p, params)
    sched = engine.scheduler
    while sched.waiting or any(r.num_computed < len(r.prompt_ids) for r in sched.running):
        engine.step()
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        engine.step()
    torch.cuda.synchronize()
    print(f"decode step with overlap: {(time.perf_counter() - start) / TIMED_STEPS * 1e3:.3f} ms")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            engine.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
