"""``kernels bench serve``: load on a running ``kernels serve`` server, measured from the client side.

The workload is the one of ``kernels bench offline``: ``N`` requests of ``IN`` random prompt token
ids (seeded, :func:`kernels.serve.bench.offline.make_prompts`), each generating ``OUT`` tokens
(greedy, ``ignore_eos``). With ``--random-range-ratio R`` below 1 each request's lengths are drawn
uniformly from ``[max(1, int(R * len)), len]`` instead. The requests are sent over HTTP, streamed,
either all at once (``--request-rate inf``, the default) or with Poisson arrivals at a given rate,
optionally at most ``C`` in flight (``--max-concurrency``).

What is measured, per request, on the client's clock:

- TTFT: the request sent -> the first streamed event that carries at least one token;
- ITL: the gaps between successive token-carrying events. A server may coalesce several tokens into
  one event (``output_ids`` of length k > 1); such an event counts one gap, not k, and is counted
  in ``coalesced_events`` so that a reader knows the ITL list is coarser than per-token;
- E2E latency: the request sent -> the end of its stream (``data: [DONE]``);
- TPOT: ``(latency - TTFT) / (output_tokens - 1)``, for requests with more than one output token.

Over the run: duration = the first request sent -> the last one finished; output tokens/s (the
headline ``tokens_per_s``), input and total tokens/s and requests/s count the completed requests
only. The highest number of requests in flight at once is computed from the requests' intervals.

Two wire formats (``--backend``): ``generate``, the native ``POST /generate`` (token ids in, token
ids out: works for models without a tokenizer, and counts output tokens exactly from
``output_ids``), and ``openai``, ``POST /v1/completions`` with a token-id prompt (one token per
non-empty chunk, totals from the final ``usage`` chunk).

With ``--offline-result`` (a ``serve_offline`` file of the same run and workload) the record gets
that file's device, dtype and token roofline, and its tokens/s as the peer ``serve_offline``: what
the HTTP layer and the arrival pattern cost against the engine driven in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiohttp
import numpy
import torch

from kernels.bench import report
from kernels.serve.bench.offline import UsageError, _round, format_number, json_path, make_prompts

OP = "serve_online"
PEER = "serve_offline"
BACKENDS = ("generate", "openai")
DEFAULT_VOCAB_SIZE = 1000
WARMUP_OUTPUT_LEN = 4
ERRORS_PRINTED = 5

DESCRIPTION = """\
Load on a running kernels serve server, measured from the client: N requests of IN random prompt
token ids (seeded), each generating OUT tokens (greedy, ignore_eos), streamed over HTTP, sent all at
once or with Poisson arrivals (--request-rate), at most C in flight (--max-concurrency). A short
untimed warm-up request goes first.

Per request: TTFT (sent -> first event carrying a token), ITL (gaps between token-carrying events;
an event of k > 1 tokens, coalesced by the server, is one gap), TPOT ((latency - TTFT) / (tokens -
1)) and end-to-end latency. Over the run (first send -> last finish): output tokens/s (the headline),
input and total tokens/s, requests/s, mean / median / p99 of each latency, the most requests seen in
flight at once, and the failed requests with their errors.

--offline-result merges the serve_offline file of `kernels bench offline` on the same workload:
its tokens/s becomes the peer (vs_peer = ours / its) and its roofline this record's ceiling.
--json writes the result file (the layout of every kernels bench file, op serve_online, shape
NxINxOUT). Exit status: 0 all requests completed, 1 any failed or the server is unreachable, 2 bad
arguments.
"""

EPILOG = """\
examples:
  kernels serve llama-3-8b --load-format dummy &                # the server, on port 30000; then
  kernels bench serve                                           # 64 x 128 x 128, all at once
  kernels bench offline --model llama-3-8b --load-format dummy --json benchmarks/results/h100/
  kernels bench serve --offline-result benchmarks/results/h100/serve_offline.json \\
      --vocab-size 128256 --json benchmarks/results/h100/      # against the offline number
  kernels bench serve --request-rate 8 --num-requests 256 --max-concurrency 32
  kernels bench serve --backend openai --base-url http://gpu-box:8000 --api-key "$KEY"
  kernels bench serve --num-requests 4 --input-len 16 --output-len 8   # a quick smoke run
"""


# ---------------------------------------------------------------------------------------------
# The workload


@dataclass(frozen=True)
class RequestSpec:
    """One request of the workload: its prompt token ids and the tokens it must generate."""

    prompt: list[int]
    output_len: int


def sampled_lengths(count: int, length: int, range_ratio: float, rng: random.Random) -> list[int]:
    """``count`` lengths: all ``length`` when ``range_ratio`` is 1, else uniform in
    ``[max(1, int(range_ratio * length)), length]`` (SGLang's random dataset)."""
    if range_ratio >= 1.0:
        return [length] * count
    low = max(1, int(range_ratio * length))
    return [rng.randint(low, length) for _ in range(count)]


def make_workload(num_requests: int, input_len: int, output_len: int, range_ratio: float, vocab_size: int,
                  seed: int) -> list[RequestSpec]:
    """The seeded requests: offline's prompts (the same ids for the same seed), cut to the sampled lengths."""
    rng = random.Random(f"lengths-{seed}")
    input_lens = sampled_lengths(num_requests, input_len, range_ratio, rng)
    output_lens = sampled_lengths(num_requests, output_len, range_ratio, rng)
    prompts = make_prompts(num_requests, input_len, vocab_size, seed)
    return [RequestSpec(p[:i], o) for p, i, o in zip(prompts, input_lens, output_lens)]


def arrival_offsets(num_requests: int, request_rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request is sent: all 0 for an infinite rate, else a
    Poisson process (exponential gaps of mean ``1 / request_rate``) whose first arrival is at 0."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(f"arrivals-{seed}")
    offsets, t = [], 0.0
    for _ in range(num_requests):
        offsets.append(t)
        t += rng.expovariate(request_rate)
    return offsets


# ---------------------------------------------------------------------------------------------
# The wire: server-sent events and the two APIs


class SSEParser:
    """Incremental server-sent-events parser: bytes in as they arrive, whole events' data out.

    Reads may split a line (or a UTF-8 character) anywhere, so only complete lines are decoded;
    a blank line ends an event; comment lines (``:``, keep-alives) and fields other than ``data``
    are skipped; several ``data`` lines of one event are joined with newlines (the SSE rule).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The data of every event completed by ``chunk``."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")  # a bad byte fails the event, not the run
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[len("data:"):]
                self._data.append(value[1:] if value.startswith(" ") else value)
        return events

    def close(self) -> list[str]:
        """The last event when the stream ended without its blank line."""
        return self.feed(b"\n\n")


@dataclass
class Event:
    """What one streamed JSON object says, whichever API sent it."""

    tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    usage_tokens: int | None = None


def error_text(error) -> str:
    """The message of an ``{"error": {...}}`` body (or whatever the server put there)."""
    if isinstance(error, dict):
        kind = f" ({error['type']})" if error.get("type") else ""
        return f"{error.get('message', error)}{kind}"
    return str(error)


def generate_payload(spec: RequestSpec, model: str | None) -> dict:
    """The native request: token ids in; ``model`` is not part of it (one model per server)."""
    return {
        "input_ids": spec.prompt,
        "sampling_params": {"max_tokens": spec.output_len, "temperature": 0.0, "ignore_eos": True},
        "stream": True,
    }


def generate_event(obj: dict) -> Event:
    """A ``/generate`` stream event: ``output_ids`` is the increment, so its length is exact."""
    if "error" in obj:
        return Event(error=error_text(obj["error"]))
    meta = obj.get("meta_info") or {}
    return Event(tokens=len(obj.get("output_ids") or ()), finish_reason=meta.get("finish_reason"))


def openai_payload(spec: RequestSpec, model: str | None) -> dict:
    """``ignore_eos`` is the server's extension of the OpenAI request (as in SGLang and vLLM)."""
    return {
        "model": model,
        "prompt": spec.prompt,
        "max_tokens": spec.output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def openai_event(obj: dict) -> Event:
    """A ``/v1/completions`` chunk: text only, so one token per non-empty chunk; the final chunk's
    ``usage`` has the true total."""
    if "error" in obj:
        return Event(error=error_text(obj["error"]))
    choices = obj.get("choices") or [{}]
    usage = obj.get("usage") or {}
    return Event(tokens=1 if choices[0].get("text") else 0, finish_reason=choices[0].get("finish_reason"),
                 usage_tokens=usage.get("completion_tokens"))


@dataclass(frozen=True)
class Api:
    """One wire format: where to post, the request body of a spec, the reading of a stream event."""

    path: str
    payload: Callable[[RequestSpec, str | None], dict]
    parse: Callable[[dict], Event]


APIS = {
    "generate": Api("/generate", generate_payload, generate_event),
    "openai": Api("/v1/completions", openai_payload, openai_event),
}


# ---------------------------------------------------------------------------------------------
# One request


@dataclass
class RequestResult:
    """What the client saw of one request; times are ``time.perf_counter`` seconds."""

    prompt_len: int
    start_s: float = 0.0
    finish_s: float = 0.0
    output_tokens: int = 0
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    coalesced_events: int = 0
    finish_reason: str | None = None
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.start_s

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


def record_event(result: RequestResult, event: Event, now: float, last_token_at: float | None) -> float | None:
    """Account one event in ``result``; returns the time of the latest token-carrying event."""
    if event.finish_reason is not None:
        result.finish_reason = event.finish_reason
    if event.usage_tokens is not None:
        result.output_tokens = event.usage_tokens
    if event.tokens == 0:
        return last_token_at
    if event.usage_tokens is None:
        result.output_tokens += event.tokens
    if last_token_at is None:
        result.ttft_s = now - result.start_s
    else:
        result.itl_s.append(now - last_token_at)
    if event.tokens > 1:
        result.coalesced_events += 1
    return now


class StreamConsumer:
    """Accounts the events of one streamed answer in its :class:`RequestResult`."""

    def __init__(self, parse: Callable[[dict], Event], result: RequestResult) -> None:
        self.parse = parse
        self.result = result
        self.last_token_at: float | None = None

    def take(self, events: list[str], now: float) -> bool:
        """Account ``events``, all received at ``now``; True once the stream is over (``[DONE]``, an
        error event, or an event that cannot be read: ``result.error`` then says why)."""
        for data in events:
            if data == "[DONE]":
                check_finished(self.result)
                return True
            try:
                event = self.parse(json.loads(data))
            except (ValueError, AttributeError, TypeError, IndexError):
                self.result.error = f"unreadable event: {data[:200]!r}"
                return True
            if event.error is not None:
                self.result.error = f"error event in the stream: {event.error}"
                return True
            self.last_token_at = record_event(self.result, event, now, self.last_token_at)
        return False


def check_finished(result: RequestResult) -> None:
    """A stream that reached ``[DONE]`` is complete only with a finish reason other than abort."""
    if result.finish_reason is None:
        result.error = "the stream ended without a finish_reason"
    elif result.finish_reason == "abort":
        result.error = "the server aborted the request (finish_reason abort)"


async def read_stream(response: aiohttp.ClientResponse, parse: Callable[[dict], Event], result: RequestResult) -> None:
    """Consume one streamed answer into ``result``; ``result.error`` is set unless it was complete."""
    parser = SSEParser()
    consumer = StreamConsumer(parse, result)
    async for chunk in response.content.iter_any():
        if consumer.take(parser.feed(chunk), time.perf_counter()):
            return
    if not consumer.take(parser.close(), time.perf_counter()):
        result.error = "the stream ended without data: [DONE]"


async def http_error(response: aiohttp.ClientResponse) -> str:
    """``HTTP 400: message (type)`` from the error body, or the start of the body if it is not one."""
    body = await response.text()
    try:
        message = error_text(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body.strip()[:200] or response.reason
    return f"HTTP {response.status}: {message}"


async def send_request(session: aiohttp.ClientSession, base_url: str, api: Api, spec: RequestSpec,
                       model: str | None, timeout_s: float) -> RequestResult:
    """Send one streamed request and time it; failures end up in ``error``, never raised."""
    result = RequestResult(prompt_len=len(spec.prompt))
    result.start_s = time.perf_counter()
    try:
        async with session.post(base_url + api.path, json=api.payload(spec, model),
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status >= 300:
                result.error = await http_error(response)
            else:
                await read_stream(response, api.parse, result)
    except asyncio.TimeoutError:
        result.error = f"no complete answer within --timeout {timeout_s:g} s"
    except aiohttp.ClientError as e:
        result.error = f"{type(e).__name__}: {e}"
    result.finish_s = time.perf_counter()
    return result


# ---------------------------------------------------------------------------------------------
# The run


class ServerNotUsable(RuntimeError):
    """The server cannot be reached, refuses the key, or fails the warm-up: the timed run would only
    collect the same error N times, so the benchmark stops with one line instead."""


async def fetch_model(session: aiohttp.ClientSession, base_url: str) -> str | None:
    """The served model's id from ``GET /v1/models``: also the check that the server answers (and
    that the API key is accepted) before any timed request."""
    url = base_url + "/v1/models"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
            if response.status >= 300:
                raise ServerNotUsable(f"GET {url} answered {await http_error(response)}")
            models = (await response.json(content_type=None)).get("data") or [{}]
            return models[0].get("id")
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError) as e:
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise ServerNotUsable(f"cannot reach the server: GET {url} failed: {detail}") from None


async def run_requests(session: aiohttp.ClientSession, base_url: str, api: Api, specs: list[RequestSpec],
                       offsets: list[float], max_concurrency: int | None, model: str | None,
                       timeout_s: float) -> list[RequestResult]:
    """Send each request at its arrival offset (at most ``max_concurrency`` in flight: a request
    that arrives at a full gate waits, and its TTFT counts from when it is actually sent)."""
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    start = time.perf_counter()

    async def one(spec: RequestSpec, offset: float) -> RequestResult:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        if gate is None:
            return await send_request(session, base_url, api, spec, model, timeout_s)
        async with gate:
            return await send_request(session, base_url, api, spec, model, timeout_s)

    return list(await asyncio.gather(*(one(s, o) for s, o in zip(specs, offsets))))


async def benchmark(args) -> tuple[str | None, list[RequestResult]]:
    """Ask the model id, run the warm-up requests one by one (stop if one fails: the timed run
    would fail the same way), then the timed workload. The connection pool is unbounded (aiohttp's
    default of 100 would cap the concurrency silently)."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    api = APIS[args.backend]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as session:
        model = await fetch_model(session, args.base_url)
        warmups = make_workload(args.warmup_requests, args.input_len, min(args.output_len, WARMUP_OUTPUT_LEN), 1.0,
                                args.vocab_size, args.seed + 1)
        if warmups:
            print(f"warm-up: {len(warmups)} request(s) of {args.input_len} in x {warmups[0].output_len} out ...",
                  flush=True)
        for spec in warmups:
            got = await send_request(session, args.base_url, api, spec, model, args.timeout)
            if got.error is not None:
                raise ServerNotUsable(f"the warm-up request to {args.base_url + api.path} failed: {got.error}")
        specs = make_workload(args.num_requests, args.input_len, args.output_len, args.random_range_ratio,
                              args.vocab_size, args.seed)
        offsets = arrival_offsets(args.num_requests, args.request_rate, args.seed)
        print("timed run ...", flush=True)
        results = await run_requests(session, args.base_url, api, specs, offsets, args.max_concurrency, model,
                                     args.timeout)
    return model, results


# ---------------------------------------------------------------------------------------------
# Statistics


def distribution_ms(values_s: list[float]) -> dict:
    """Mean, median and 99th percentile (linear interpolation) in milliseconds; None when empty."""
    if not values_s:
        return {"mean": None, "median": None, "p99": None}
    ms = numpy.asarray(values_s) * 1e3
    return {"mean": _round(float(ms.mean())), "median": _round(float(numpy.median(ms))),
            "p99": _round(float(numpy.percentile(ms, 99)))}


def peak_concurrency(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one that ends when another starts does not overlap it)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = open_now = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


def summarize(results: list[RequestResult]) -> dict:
    """The run's numbers: rates over the duration (first send -> last finish, failures included),
    tokens and latencies of the completed requests only."""
    done = [r for r in results if r.error is None]
    duration = max(r.finish_s for r in results) - min(r.start_s for r in results)
    input_tokens = sum(r.prompt_len for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    return {
        "wall_s": duration,
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": [r.error for r in results if r.error is not None],
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tokens_per_s": output_tokens / duration,
        "input_tokens_per_s": input_tokens / duration,
        "total_tokens_per_s": (input_tokens + output_tokens) / duration,
        "requests_per_s": len(done) / duration,
        "ttft_ms": distribution_ms([r.ttft_s for r in done if r.ttft_s is not None]),
        "itl_ms": distribution_ms([gap for r in done for gap in r.itl_s]),
        "tpot_ms": distribution_ms([r.tpot_s for r in done if r.tpot_s is not None]),
        "e2e_ms": distribution_ms([r.latency_s for r in done]),
        "max_concurrency_observed": peak_concurrency([(r.start_s, r.finish_s) for r in results]),
        "coalesced_events": sum(r.coalesced_events for r in done),
    }


# ---------------------------------------------------------------------------------------------
# The offline result (peer and roofline)


def shape_of(num_requests: int, input_len: int, output_len: int) -> str:
    return f"{num_requests}x{input_len}x{output_len}"


def load_offline_result(path: str, shape: str) -> dict:
    """The ``serve_offline`` file's document and its record of ``shape``; :class:`UsageError` when the
    file is unreadable, not a serve_offline result, or measured another workload (the ratio would
    compare different things)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--offline-result {path}: cannot read it ({e})") from None
    records = [r for r in doc.get("results", []) if isinstance(r, dict) and r.get("op") == PEER] \
        if isinstance(doc, dict) else []
    if not records:
        raise UsageError(f"--offline-result {path}: no {PEER} record in it (a file of kernels bench offline --json)")
    for record in records:
        if record.get("shape") == shape:
            if not isinstance(record.get("tokens_per_s"), (int, float)):
                raise UsageError(f"--offline-result {path}: its {shape} record has no tokens_per_s")
            return {"doc": doc, "record": record}
    found = ", ".join(sorted({str(r.get("shape")) for r in records}))
    raise UsageError(f"--offline-result {path}: its workload is {found}, this run's is {shape} (NxINxOUT); "
                     f"run both on the same workload")


def offline_fields(offline: dict | None, tokens_per_s: float) -> dict:
    """The record's peer and ceiling fields from the offline result (None / empty without one)."""
    if offline is None:
        return {"ceiling": None, "roofline_tokens_per_s": None, "fraction": None, "peers": {}, "vs_peer": None}
    record = offline["record"]
    peer_tps = record["tokens_per_s"]
    roof = record.get("roofline_tokens_per_s")
    fields = {
        "ceiling": "roofline_tokens_per_s" if roof else None,
        "roofline_tokens_per_s": roof,
        "fraction": _round(tokens_per_s / roof, 3) if roof else None,
        "peers": {PEER: peer_tps},
        "vs_peer": _round(tokens_per_s / peer_tps, 3) if peer_tps else None,
    }
    if record.get("roofline"):
        fields["roofline"] = record["roofline"]
    return fields


# ---------------------------------------------------------------------------------------------
# The record and the result file


def variant_of(args) -> str:
    """What tells two serve_online records of one shape apart: the API, the sampling, the spread of
    lengths and the arrival pattern."""
    parts = [args.backend, "greedy", "ignore_eos"]
    if args.random_range_ratio < 1.0:
        parts.append(f"range{args.random_range_ratio:g}")
    if not math.isinf(args.request_rate):
        parts.append(f"rate{args.request_rate:g}")
    if args.max_concurrency:
        parts.append(f"conc{args.max_concurrency}")
    return "+".join(parts)


def build_record(args, model: str | None, stats: dict, offline: dict | None) -> dict:
    """The serve_online record (DESIGN.md "Measuring"), with the notes a reader needs before trusting
    its latencies (coalesced events, tokens the client could not see, token counts off the request)."""
    notes = []
    if stats["coalesced_events"]:
        notes.append(f"{stats['coalesced_events']} streamed events carried more than one token (the server "
                     "coalesced them); each counts as one ITL gap")
    if stats["output_tokens"] and stats["ttft_ms"]["mean"] is None:
        notes.append("no streamed event carried a token the client could see, so TTFT, ITL and TPOT are not "
                     "measured (--backend openai counts non-empty text: a model without a tokenizer streams "
                     "none; --backend generate counts token ids)")
    expected = args.output_len * stats["completed"]
    if args.random_range_ratio >= 1.0 and stats["output_tokens"] != expected:
        notes.append(f"completed requests generated {stats['output_tokens']} tokens, expected {expected} "
                     f"({stats['completed']} x {args.output_len}, ignore_eos)")
    record = {
        "op": OP,
        "backend": "kernels.serve",
        "variant": variant_of(args),
        "shape": shape_of(args.num_requests, args.input_len, args.output_len),
        "dtype": offline["record"].get("dtype") if offline else None,
        "model": model,
        "api": args.backend,
        "request_rate": None if math.isinf(args.request_rate) else args.request_rate,
        "max_concurrency": args.max_concurrency,
        "random_range_ratio": args.random_range_ratio,
        "tokens_per_s": _round(stats["tokens_per_s"]),
        "input_tokens_per_s": _round(stats["input_tokens_per_s"]),
        "total_tokens_per_s": _round(stats["total_tokens_per_s"]),
        "requests_per_s": _round(stats["requests_per_s"]),
        "wall_s": _round(stats["wall_s"]),
        "input_tokens": stats["input_tokens"],
        "output_tokens": stats["output_tokens"],
        "ttft_ms": stats["ttft_ms"],
        "itl_ms": stats["itl_ms"],
        "tpot_ms": stats["tpot_ms"],
        "e2e_ms": stats["e2e_ms"],
        "completed": stats["completed"],
        "failed": stats["failed"],
        "errors": stats["errors"],
        "max_concurrency_observed": stats["max_concurrency_observed"],
        "coalesced_events": stats["coalesced_events"],
        "gbps": None,
        "tflops": None,
        **offline_fields(offline, stats["tokens_per_s"]),
        "warmup_requests": args.warmup_requests,
    }
    if notes:
        record["notes"] = notes
    return record


def build_doc(args, record: dict, offline: dict | None) -> dict:
    """The result file. The client cannot see the server's device: it is the offline result's (same
    run, same machine) when given, else "unknown"; torch likewise, else this process's."""
    source = offline["doc"] if offline else {}
    return {
        "name": OP,
        "device": source.get("device", "unknown"),
        "commit": report.commit(),
        "torch": source.get("torch", torch.__version__),
        "command": command_line(args),
        "server": args.base_url,
        "ceilings": source.get("ceilings", {}),
        "timing": {
            "method": "wall_clock",
            "what": f"client side: the first request sent to the last one finished, after "
                    f"{args.warmup_requests} untimed warm-up request(s)",
        },
        "results": [record],
    }


def command_line(args) -> str:
    """The command that reproduces the run; the API key's value is left out (a secret)."""
    parts = ["kernels", "bench", "serve", "--base-url", args.base_url, "--backend", args.backend,
             "--num-requests", str(args.num_requests), "--input-len", str(args.input_len),
             "--output-len", str(args.output_len)]
    if args.random_range_ratio < 1.0:
        parts += ["--random-range-ratio", f"{args.random_range_ratio:g}"]
    if not math.isinf(args.request_rate):
        parts += ["--request-rate", f"{args.request_rate:g}"]
    if args.max_concurrency:
        parts += ["--max-concurrency", str(args.max_concurrency)]
    parts += ["--seed", str(args.seed), "--vocab-size", str(args.vocab_size),
              "--warmup-requests", str(args.warmup_requests), "--timeout", f"{args.timeout:g}"]
    if args.api_key:
        parts += ["--api-key", "KEY"]
    if args.offline_result:
        parts += ["--offline-result", args.offline_result]
    if args.json:
        parts += ["--json", args.json]
    return shlex.join(parts)


def format_table(record: dict, doc: dict) -> str:
    r = record
    num = format_number

    def dist(d):
        return f"mean {num(d['mean'])}, median {num(d['median'])}, p99 {num(d['p99'])}"

    rate = "all at once" if r["request_rate"] is None else f"Poisson, {r['request_rate']:g} requests/s"
    rows = [
        ("server", f"{doc['server']} ({r['api']}), model {r['model']}"),
        ("workload", f"{r['shape']} (requests x in x out), greedy, ignore_eos, {rate}, "
                     f"max concurrency {r['max_concurrency'] or 'unlimited'}"),
        ("completed / failed", f"{r['completed']} / {r['failed']}"),
        ("duration", num(r["wall_s"], " s")),
        ("output tokens/s", num(r["tokens_per_s"])),
        ("input tokens/s", num(r["input_tokens_per_s"])),
        ("total tokens/s", num(r["total_tokens_per_s"])),
        ("requests/s", num(r["requests_per_s"])),
        ("TTFT (ms)", dist(r["ttft_ms"])),
        ("ITL (ms)", dist(r["itl_ms"])),
        ("TPOT (ms)", dist(r["tpot_ms"])),
        ("E2E latency (ms)", dist(r["e2e_ms"])),
        ("max concurrency observed", num(r["max_concurrency_observed"])),
    ]
    for peer, tps in r["peers"].items():
        rows.append((f"{peer} tokens/s", num(tps)))
    if r["peers"]:
        rows.append(("vs_peer (ours / offline)", num(r["vs_peer"])))
    if r["ceiling"]:
        rows += [("roofline tokens/s", num(r["roofline_tokens_per_s"])), ("fraction of roofline", num(r["fraction"]))]
    width = max(len(k) for k, _ in rows)
    lines = [f"{OP} on {doc['device']}"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"  note: {note}" for note in r.get("notes", [])]
    lines += [f"  failed: {error}" for error in r["errors"][:ERRORS_PRINTED]]
    if len(r["errors"]) > ERRORS_PRINTED:
        lines.append(f"  ... and {len(r['errors']) - ERRORS_PRINTED} more failures (all in the JSON record)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kernels bench serve", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="the server's host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=30000, help="the server's port (default 30000)")
    p.add_argument("--base-url", metavar="URL", help="the server's URL, e.g. http://gpu-box:30000; overrides "
                   "--host and --port")
    p.add_argument("--backend", choices=BACKENDS, default="generate",
                   help="generate: the native POST /generate, token ids in and out, exact token counts "
                        "(default; works without a tokenizer); openai: POST /v1/completions with a token-id "
                        "prompt, one token per non-empty chunk, totals from the usage chunk")
    p.add_argument("--api-key", metavar="KEY", help="sent as 'Authorization: Bearer KEY' (for a server started "
                   "with --api-key); not written to the result file")
    p.add_argument("--num-requests", type=int, default=64, metavar="N", help="requests in the timed run (default 64)")
    p.add_argument("--input-len", type=int, default=128, metavar="IN", help="prompt tokens per request (default 128)")
    p.add_argument("--output-len", type=int, default=128, metavar="OUT",
                   help="tokens generated per request: max_tokens, with ignore_eos (default 128)")
    p.add_argument("--random-range-ratio", type=float, default=1.0, metavar="R",
                   help="1 (default): every request has IN and OUT tokens; R in [0, 1): each request's lengths "
                        "uniform in [max(1, int(R*len)), len] (SGLang's random dataset)")
    p.add_argument("--request-rate", type=float, default=math.inf, metavar="RATE",
                   help="requests per second, Poisson arrivals seeded by --seed (default inf: all at once)")
    p.add_argument("--max-concurrency", type=int, metavar="C",
                   help="at most C requests in flight; the others wait to be sent (default: unlimited)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts, lengths and arrivals (default 0; "
                   "the prompts are kernels bench offline's for the same seed and vocabulary)")
    p.add_argument("--vocab-size", type=int, metavar="V",
                   help=f"prompt token ids are drawn from [0, V) (default {DEFAULT_VOCAB_SIZE}: ids every model "
                        "has; give the model's vocabulary size for the prompts of kernels bench offline)")
    p.add_argument("--warmup-requests", type=int, default=1, metavar="W",
                   help=f"untimed requests sent one by one first, IN tokens in and at most {WARMUP_OUTPUT_LEN} "
                        "out (default 1; 0 for none); a failed warm-up stops the run")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="the most one request may take, from sent to its last event (default 600)")
    p.add_argument("--offline-result", metavar="FILE",
                   help=f"the {PEER}.json of kernels bench offline on the same machine and workload: its "
                        "tokens/s becomes the peer and its roofline this record's ceiling; its device and dtype "
                        "are this record's (the client cannot see the server's)")
    p.add_argument("--json", metavar="PATH", help="write the result file: a .json path, or a directory that "
                   f"gets {OP}.json")
    return p


def _check(parser, ok: bool, message: str) -> None:
    if not ok:
        parser.error(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("num_requests", "input_len", "output_len", "max_concurrency", "vocab_size"):
        value = getattr(args, name)
        _check(parser, value is None or value >= 1, f"--{name.replace('_', '-')} must be at least 1, got {value}")
    _check(parser, 0 <= args.warmup_requests, f"--warmup-requests must be 0 or more, got {args.warmup_requests}")
    _check(parser, 0.0 <= args.random_range_ratio <= 1.0,
           f"--random-range-ratio must be in [0, 1], got {args.random_range_ratio:g}")
    _check(parser, args.request_rate > 0,
           f"--request-rate must be above 0 (inf: all at once), got {args.request_rate:g}")
    _check(parser, args.timeout > 0, f"--timeout must be above 0, got {args.timeout:g}")
    _check(parser, 1 <= args.port <= 65535, f"--port must be in [1, 65535], got {args.port}")
    args.base_url = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    _check(parser, args.base_url.startswith(("http://", "https://")),
           f"--base-url must start with http:// or https://, got {args.base_url}")
    args.vocab_size = args.vocab_size or DEFAULT_VOCAB_SIZE
    args.offline = None
    if args.offline_result:
        try:
            args.offline = load_offline_result(args.offline_result,
                                               shape_of(args.num_requests, args.input_len, args.output_len))
        except UsageError as e:
            parser.error(str(e))
    return args


def run(args) -> int:
    rate = "all at once" if math.isinf(args.request_rate) else f"{args.request_rate:g} requests/s (Poisson)"
    print(f"{OP}: {args.num_requests} requests x {args.input_len} in x {args.output_len} out, greedy, ignore_eos, "
          f"{rate}; {args.base_url} ({args.backend})")
    try:
        model, results = asyncio.run(benchmark(args))
    except ServerNotUsable as e:
        print(f"kernels bench serve: error: {e}", file=sys.stderr)
        return 1
    record = build_record(args, model, summarize(results), args.offline)
    doc = build_doc(args, record, args.offline)
    print()
    print(format_table(record, doc))
    if args.json:
        path = json_path(args.json, OP)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")
    if record["failed"]:
        print(f"kernels bench serve: {record['failed']} of {args.num_requests} requests failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``kernels bench serve [options]``; returns the exit status (0 every request completed, 1 some
    failed or the server could not be reached, 2 bad arguments: argparse exits with 2 itself)."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
