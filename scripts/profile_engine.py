"""Where a batch-64 decode step of the engine goes (dummy Llama-3-8B, bf16, CUDA).

Prints the mean step time of steady decoding with overlap scheduling, then torch-profiler tables of
10 such steps, by device time and by host time, then the device's idle time between kernels and
the device work between one step's LM head and the next step's first kernel (the step boundary). Run on the GPU machine (benchmarks/NOTES.md has
the numbers): ``python3 scripts/profile_engine.py``.
"""

import json
import random
import tempfile
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
    print_device_timeline(prof)


def print_device_timeline(prof) -> None:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))["traceEvents"]
    device = sorted((e for e in trace if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    idle, end = 0.0, device[0]["ts"]
    for e in device:
        idle += max(0.0, e["ts"] - end)
        end = max(end, e["ts"] + e["dur"])
    print(f"device: {len(device)} kernels and copies over {end - device[0]['ts']:.0f} us, idle {idle:.0f} us")
    # The LM head is the one GEMM of a step with a 128256-row weight: the widest kernel after it ends a step.
    heads = [e for e in device if e.get("cat") == "kernel" and e["dur"] > 200]
    if len(heads) > 3:
        start = heads[2]["ts"] + heads[2]["dur"]
        boundary = [e for e in device if start <= e["ts"] and "rms_norm" not in e["name"]]
        stop = next((e["ts"] for e in device if e["ts"] > start and "rms_norm" in e["name"]), start)
        print(f"step boundary: {stop - start:.1f} us")
        for e in boundary:
            if e["ts"] >= stop:
                break
            print(f"  {e['ts'] - start:8.1f} +{e['dur']:6.1f} us  {e['name'][:100]}")


if __name__ == "__main__":
    main()
