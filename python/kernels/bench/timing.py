"""How one callable is timed. One method for every implementation of a run, ours and the peers'.

GPU (``cuda_graph_replay``): the inputs rotate among independent sets whose total size exceeds
twice the L2 cache, so every call reads from DRAM as it would in a model. One pass over the sets
(K calls, at least ``GPU_MIN_CALLS``) is captured into a CUDA graph after a warm-up on a side stream;
each replay is bracketed by CUDA events and one sample is replay time / K: the Python and launch
overhead of microsecond kernels stays out, as it does in a serving engine that replays graphs. The
result is the median over the replays. Should capture fail for any callable of a shape, every
callable of that shape is timed instead with events around a plain back-to-back loop
(``cuda_event_loop``), so that the numbers compared in one row come from one method.

CPU (``perf_counter``): wall-clock of back-to-back calls cycling through the input sets (sized past
the last-level cache, up to 1 GiB) after a warm-up; one sample is the mean of enough consecutive
calls to last ~20 ms, the result is the median of the samples. The Python cost of each call is
included, as it is in an eager CPU model.

In-place ops run as they are: values drift from call to call (the caller restores the inputs
before each callable and checks them finite afterwards).
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

GPU_MIN_CALLS = 20  # calls per captured pass, so that one graph launch is a small part of a replay
GPU_TARGET_S = 0.25  # timed replays per callable, at least MIN_SAMPLES of them
CPU_TARGET_S = 0.3
CPU_SAMPLE_S = 0.02  # one CPU sample: consecutive calls lasting about this long
MIN_SAMPLES = 10
MAX_SAMPLES = 200
MAX_SETS = 8192
CPU_SETS_BYTES_CAP = 1 << 30  # "where cheap": rotation stops growing at 1 GiB of inputs on CPU
GPU_SETS_BYTES_CAP = 2 << 30  # sets beyond the 2x L2 rule (for GPU_MIN_CALLS) stop at 2 GiB

GRAPH_METHOD = "cuda_graph_replay"
LOOP_METHOD = "cuda_event_loop"
CPU_METHOD = "perf_counter"


class TimingError(RuntimeError):
    """A callable raised while being warmed up or timed (not a capture failure)."""


class _CaptureFailed(RuntimeError):
    pass


@dataclass
class Timed:
    name: str
    fn: Callable
    sets: list[tuple]
    # entered around the warm-up, capture and timing of this item (e.g. forcing a backend)
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def cpu_cache_bytes() -> int:
    """Size of the last-level cache of CPU 0 (sysfs), 32 MiB if unknown."""
    best_level, best = -1, 32 << 20
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for entry in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            level = int((entry / "level").read_text())
            text = (entry / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * scale
        except ValueError:
            continue
        if level > best_level:
            best_level, best = level, size
    return best


def gpu_cache_bytes(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or (50 << 20))


class Timer:
    def __init__(self, device: torch.device, reps: int | None = None):
        self.device = torch.device(device)
        self.reps = reps
        self.is_gpu = self.device.type == "cuda"
        self.cache_bytes = gpu_cache_bytes(self.device) if self.is_gpu else cpu_cache_bytes()
        self.fallbacks: list[str] = []  # "<what>: <why>" for each group timed with the loop method

    # -- planning ------------------------------------------------------------------------------

    def num_sets(self, set_bytes: int) -> int:
        """Independent input sets so that their total exceeds twice the cache."""
        set_bytes = max(set_bytes, 1)
        want = math.floor(2 * self.cache_bytes / set_bytes) + 1
        if self.is_gpu:
            # Up to GPU_MIN_CALLS sets where memory is cheap, so that each replay calls each set
            # once or a few times (in-place ops drift less between restores).
            want = max(want, min(GPU_MIN_CALLS, GPU_SETS_BYTES_CAP // set_bytes))
        else:
            want = min(want, max(2, CPU_SETS_BYTES_CAP // set_bytes))
        return max(2, min(want, MAX_SETS))

    def describe(self) -> dict:
        """The ``timing`` field of the result file."""
        if self.is_gpu:
            info = {
                "gpu": GRAPH_METHOD,
                "l2_bytes": self.cache_bytes,
                "rotation": "input sets totalling > 2x L2",
                "min_calls_per_replay": GPU_MIN_CALLS,
            }
        else:
            info = {"cpu": CPU_METHOD, "llc_bytes": self.cache_bytes, "rotation": "input sets totalling > 2x LLC, at most 1 GiB"}
        info["statistic"] = "median"
        if self.fallbacks:
            info["fallbacks"] = list(self.fallbacks)
        return info

    # -- measuring -----------------------------------------------------------------------------

    def measure(self, items: list[Timed], before_each: Callable[[], None] = lambda: None, what: str = "") -> dict[str, float]:
        """Median microseconds per call of each item, all by one method; ``before_each`` restores inputs."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if not self.is_gpu:
                out = {}
                for item in items:
                    before_each()
                    with item.context():
                        out[item.name] = self._cpu(item)
                return out
            try:
                out = {}
                for item in items:
                    before_each()
                    with item.context():
                        out[item.name] = self._graph(item)
                return out
            except _CaptureFailed as e:
                self.fallbacks.append(f"{what}: {LOOP_METHOD} for every implementation ({e})")
                print(f"note: {what}: CUDA graph capture failed ({e}); timing every implementation of it with {LOOP_METHOD}")
                out = {}
                for item in items:
                    before_each()
                    with item.context():
                        out[item.name] = self._loop(item)
                return out
        finally:
            if gc_was_enabled:
                gc.enable()

    def _samples(self, one_sample_s: float, target_s: float) -> int:
        if self.reps is not None:
            return self.reps
        return max(MIN_SAMPLES, min(MAX_SAMPLES, int(target_s / max(one_sample_s, 1e-9))))

    def _warm(self, item: Timed) -> None:
        try:
            for args in item.sets:
                item.fn(*args)
        except Exception as e:
            error = TimingError(f"{item.name} raised during warm-up: {type(e).__name__}: {e}")
            error.name = item.name
            raise error from e

    def _cpu(self, item: Timed) -> float:
        # Calls cycle through the sets; one sample is the mean of m consecutive calls, m chosen so
        # that a sample lasts about CPU_SAMPLE_S (a full pass over thousands of tiny sets would not
        # fit the budget, and rotation only needs consecutive calls to touch different sets).
        sets = item.sets
        try:
            item.fn(*sets[0])
        except Exception as e:
            error = TimingError(f"{item.name} raised during warm-up: {type(e).__name__}: {e}")
            error.name = item.name
            raise error from e
        cursor = 0

        def run(m: int) -> float:
            nonlocal cursor
            t0 = time.perf_counter()
            for _ in range(m):
                cursor = (cursor + 1) % len(sets)
                item.fn(*sets[cursor])
            return (time.perf_counter() - t0) / m

        per_call = run(1)
        calls = 1
        while per_call * calls < CPU_SAMPLE_S and calls < len(sets):  # warm-up and estimate
            calls = min(2 * calls, len(sets))
            per_call = run(calls)
        m = max(1, min(len(sets), math.ceil(CPU_SAMPLE_S / max(per_call, 1e-9))))
        n = self._samples(per_call * m, CPU_TARGET_S)
        return statistics.median(run(m) for _ in range(n)) * 1e6

    def _calls(self, item: Timed) -> list[tuple]:
        passes = math.ceil(GPU_MIN_CALLS / len(item.sets))
        return item.sets * passes

    def _graph(self, item: Timed) -> float:
        dev = self.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
            self._warm(item)
        torch.cuda.current_stream(dev).wait_stream(side)
        torch.cuda.synchronize(dev)

        calls = self._calls(item)
        graph = torch.cuda.CUDAGraph()
        keep = []  # outputs stay allocated, so that every captured call writes its own memory
        try:
            with torch.cuda.graph(graph):
                for args in calls:
                    keep.append(item.fn(*args))
        except Exception as e:
            del graph, keep
            torch.cuda.synchronize(dev)
            raise _CaptureFailed(f"{item.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        try:
            graph.replay()  # the first replay uploads the graph
            torch.cuda.synchronize(dev)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            n = self._samples(start.elapsed_time(end) / 1e3, GPU_TARGET_S)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            for s, e in zip(starts, ends):
                s.record()
                graph.replay()
                e.record()
            torch.cuda.synchronize(dev)
            per_call_ms = [s.elapsed_time(e) / len(calls) for s, e in zip(starts, ends)]
        finally:
            del graph, keep
        return statistics.median(per_call_ms) * 1e3

    def _loop(self, item: Timed) -> float:
        dev = self.device
        self._warm(item)
        torch.cuda.synchronize(dev)
        calls = self._calls(item)

        def bracket(n: int) -> list[float]:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            for s, e in zip(starts, ends):
                s.record()
                for args in calls:
                    item.fn(*args)
                e.record()
            torch.cuda.synchronize(dev)
            return [s.elapsed_time(e) / len(calls) for s, e in zip(starts, ends)]

        first = bracket(1)[0]
        n = self._samples(first * len(calls) / 1e3, GPU_TARGET_S)
        return statistics.median(bracket(n)) * 1e3

