"""Where the offline workload's wall time goes (dummy Llama-3-8B, bf16, CUDA).

Runs `kernels bench offline`'s workload (64 requests x 128 tokens in x 128 out, greedy,
ignore_eos) twice with per-step wall times, each step labelled by the prompt and decode tokens of
the batch it reported, then once under the torch profiler and prints the device time by kernel.
Run on the GPU machine (benchmarks/NOTES.md has the numbers): ``python3 scripts/profile_offline.py``.
"""

import collections
import json
import random
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from kernels.serve.engine import Engine
from kernels.serve.sampling import SamplingParams

NUM_REQUESTS, INPUT_LEN, OUTPUT_LEN = 64, 128, 128


def main() -> None:
    engine = Engine("llama-3-8b", device="cuda", dtype="bfloat16", load_format="dummy")
    params = SamplingParams(max_tokens=OUTPUT_LEN, temperature=0, ignore_eos=True)
    rng = random.Random(0)

    def prompts():
        return [[rng.randrange(128000) for _ in range(INPUT_LEN)] for _ in range(NUM_REQUESTS)]

    engine.generate(prompts(), params)  # warm-up: every CUDA graph captured
    kinds = []  # (prompt tokens, decode rows) of each reported batch
    process = engine._process

    def labelled(launched):
        new = launched.batch.num_new
        kinds.append((sum(n for n in new if n > 1), sum(1 for n in new if n == 1)))
        return process(launched)

    engine._process = labelled

    def run(tag: str):
        kinds.clear()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i, p in enumerate(prompts()):
            engine.add_request(f"{tag}{i}", p, params)
        stamps = []
        while engine.has_unfinished():
            engine.step()
            stamps.append(time.perf_counter())
        torch.cuda.synchronize()
        steps = [b - a for a, b in zip([start, *stamps], stamps)]
        return time.perf_counter() - start, steps, list(kinds)

    for rep in range(2):
        wall, steps, ks = run(f"run{rep}-")
        print(f"run {rep}: {wall * 1e3:.1f} ms, {len(steps)} steps, {NUM_REQUESTS * OUTPUT_LEN / wall:.0f} output tok/s")
        for (prompt, decode), dt in zip(ks, steps):
            if prompt:
                print(f"  step with {prompt} prompt tokens + {decode} decode rows: {dt * 1e3:.2f} ms")
        decode = [dt for (prompt, _), dt in zip(ks, steps) if not prompt]
        print(f"  {len(decode)} decode steps: {sum(decode) * 1e3:.1f} ms, mean {sum(decode) / len(decode) * 1e3:.3f}")

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run("profiled-")
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))["traceEvents"]
    device = [e for e in trace if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    span = max(e["ts"] + e["dur"] for e in device) - min(e["ts"] for e in device)
    print(f"device: {len(device)} kernels and copies, busy {sum(e['dur'] for e in device) / 1e3:.1f} of {span / 1e3:.1f} ms")
    total, calls = collections.Counter(), collections.Counter()
    for e in device:
        total[e["name"][:100]] += e["dur"]
        calls[e["name"][:100]] += 1
    for name, us in total.most_common(20):
        print(f"  {us / 1e3:8.2f} ms  {calls[name]:6d}x  {name}")


if __name__ == "__main__":
    main()
