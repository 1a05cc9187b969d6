"""`kernels bench serve`: the load generator against a fake server that speaks the wire format of
`kernels serve` (native /generate and OpenAI /v1/completions, server-sent events) with known delays,
so that the latencies, the counts, the record and the exit statuses can be checked by hand."""

import asyncio
import json
import random
import socket
import threading
import time

import pytest
from aiohttp import web

from kernels import cli
from kernels.serve.bench import offline, online

MODEL = "fake-model"
FIRST_DELAY_S = 0.08  # the fake server's wait before the first event of a stream
EVENT_GAP_S = 0.04  # and between successive events
# Tokens per event: one, two (coalesced), none (an empty event), two again. For 5 tokens the
# token-carrying events come at 80, 120 and 200 ms: TTFT 80 ms, ITL 40 and 80 ms, end at 200 ms,
# TPOT (200 - 80) / (5 - 1) = 30 ms, two coalesced events per request.
PATTERN = (1, 2, 0, 2)


class FakeServer:
    """A stand-in for `kernels serve` on 127.0.0.1 (a free port), in a thread with its own event loop.

    ``fail_http`` / ``fail_stream``: numbers (in arrival order, warm-up included) of the requests
    answered with a 400 error body / with an error event after their first tokens. Records every
    request's arrival time and body, and the most streams it served at once.
    """

    def __init__(self, fail_http=(), fail_stream=(), api_key=None):
        self.fail_http = set(fail_http)
        self.fail_stream = set(fail_stream)
        self.api_key = api_key
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.loop = asyncio.new_event_loop()
        self.url = ""

    # -- lifecycle

    def start(self) -> "FakeServer":
        app = web.Application(middlewares=[self.check_key])
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/v1/completions", self.completions)
        ready = threading.Event()
        self.thread = threading.Thread(target=self.serve, args=(app, ready), daemon=True)
        self.thread.start()
        assert ready.wait(10), "the fake server did not start"
        return self

    def serve(self, app: web.Application, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.loop.run_until_complete(web.SockSite(runner, sock).start())
        ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # -- handlers

    @web.middleware
    async def check_key(self, request, handler):
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return error_response(401, "invalid API key", "authentication_error")
        return await handler(request)

    async def models(self, request):
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    def admit(self, body: dict) -> int:
        self.arrivals.append(time.perf_counter())
        self.bodies.append(body)
        return len(self.bodies) - 1

    async def generate(self, request):
        body = await request.json()
        number = self.admit(body)
        if number in self.fail_http:
            return error_response(400, "prompt too long", "invalid_request_error")
        max_tokens = body["sampling_params"]["max_tokens"]

        def event(ids, finish):
            return {"id": str(number), "text": "t" * len(ids), "output_ids": ids,
                    "meta_info": {"finish_reason": finish, "prompt_tokens": len(body["input_ids"]),
                                  "completion_tokens": ids[-1] + 1 if ids else None, "cached_tokens": 0}}

        return await self.stream(request, number, max_tokens, event)

    async def completions(self, request):
        """One chunk per event whose text holds its tokens (a 2-token event is one chunk of 2 characters,
        so chunk counting undercounts), then the usage chunk."""
        body = await request.json()
        number = self.admit(body)

        def chunk(ids, finish):
            return {"id": str(number), "object": "text_completion", "model": MODEL,
                    "choices": [{"index": 0, "text": "t" * len(ids), "finish_reason": finish}]}

        usage = {"id": str(number), "object": "text_completion", "choices": [],
                 "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}}
        return await self.stream(request, number, body["max_tokens"], chunk, last=usage)

    async def stream(self, request, number: int, max_tokens: int, make_event, last=None):
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(FIRST_DELAY_S)
            sent, step = 0, 0
            while sent < max_tokens:
                if number in self.fail_stream and sent:
                    error = {"error": {"message": "out of KV cache", "type": "server_error", "param": None,
                                       "code": 500}}
                    await response.write(f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode())
                    return response
                k = min(PATTERN[step % len(PATTERN)], max_tokens - sent)
                ids = list(range(sent, sent + k))
                sent, step = sent + k, step + 1
                line = f"data: {json.dumps(make_event(ids, 'length' if sent == max_tokens else None))}\n\n".encode()
                await response.write(line[:7])  # a line split across writes
                await response.write(line[7:])
                if sent < max_tokens:
                    await asyncio.sleep(EVENT_GAP_S)
            if last is not None:
                await response.write(f"data: {json.dumps(last)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            return response
        finally:
            self.in_flight -= 1


def error_response(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": status}},
                             status=status)


@pytest.fixture
def server():
    """A factory of started fake servers, all stopped after the test."""
    started = []

    def make(**kw) -> FakeServer:
        started.append(FakeServer(**kw).start())
        return started[-1]

    yield make
    for s in started:
        s.stop()


def bench(capsys, tmp_path, fake: FakeServer, *args: str):
    """Run the command against ``fake`` on a small workload; the exit status, the result file, stdout, stderr."""
    argv = ["--base-url", fake.url, "--num-requests", "4", "--input-len", "8", "--output-len", "5",
            "--warmup-requests", "0", "--json", str(tmp_path), *args]
    rc = online.main(argv)
    out, err = capsys.readouterr()
    path = tmp_path / "serve_online.json"
    doc = json.loads(path.read_text()) if path.exists() else None
    return rc, doc, out, err


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Pure parts: the SSE parser, the workload, the statistics


def test_sse_parser_reassembles_split_lines_and_skips_comments():
    stream = ": keep-alive\r\n\r\ndata: {\"a\": \"é\"}\r\n\r\nevent: x\ndata: line1\ndata:line2\n\ndata: [DONE]"
    parser = online.SSEParser()
    events = []
    for byte in stream.encode():  # one byte per read: lines and the UTF-8 character split everywhere
        events += parser.feed(bytes([byte]))
    assert events == ['{"a": "é"}', "line1\nline2"]
    assert parser.close() == ["[DONE]"]  # the last event had no blank line after it
    assert parser.close() == []


def test_sampled_lengths_and_workload_are_seeded_and_bounded():
    assert online.sampled_lengths(5, 10, 1.0, random.Random(0)) == [10] * 5
    lengths = online.sampled_lengths(200, 10, 0.5, random.Random(0))
    assert min(lengths) == 5 and max(lengths) == 10
    assert online.sampled_lengths(50, 3, 0.0, random.Random(0)).count(0) == 0  # the low end is at least 1
    specs = online.make_workload(6, 32, 16, 0.25, 100, seed=3)
    assert specs == online.make_workload(6, 32, 16, 0.25, 100, seed=3)
    assert len({len(s.prompt) for s in specs}) > 1 and all(8 <= len(s.prompt) <= 32 for s in specs)
    assert all(4 <= s.output_len <= 16 for s in specs)
    full = offline.make_prompts(6, 32, 100, 3)  # the offline benchmark's prompts, cut to length
    assert [s.prompt for s in specs] == [p[:len(s.prompt)] for p, s in zip(full, specs)]


def test_arrival_offsets_are_poisson_at_the_rate():
    assert online.arrival_offsets(3, float("inf"), 0) == [0.0, 0.0, 0.0]
    offsets = online.arrival_offsets(4000, 50.0, seed=1)
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    assert offsets == online.arrival_offsets(4000, 50.0, seed=1)
    assert offsets[-1] / (len(offsets) - 1) == pytest.approx(1 / 50, rel=0.05)  # mean gap 1 / rate


def generate_event(ids, finish=None) -> str:
    return json.dumps({"id": "0", "text": "", "output_ids": ids, "meta_info": {"finish_reason": finish}})


def test_stream_consumer_times_token_events_and_counts_a_coalesced_one_once():
    result = online.RequestResult(prompt_len=3, start_s=10.0)
    consumer = online.StreamConsumer(online.generate_event, result)
    assert not consumer.take([generate_event([])], 10.05)  # no token yet: not the first token
    assert not consumer.take([generate_event([7])], 10.1)
    assert not consumer.take([generate_event([8, 9, 10]), generate_event([])], 10.4)  # coalesced: one gap
    assert not consumer.take([generate_event([11], "length")], 10.5)
    assert consumer.take(["[DONE]", generate_event([12])], 10.6)  # nothing after [DONE] counts
    result.finish_s = 10.6
    assert result.error is None and result.finish_reason == "length"
    assert result.output_tokens == 5 and result.coalesced_events == 1
    assert result.ttft_s == pytest.approx(0.1)
    assert result.itl_s == pytest.approx([0.3, 0.1])
    assert result.tpot_s == pytest.approx(0.5 / 4)


@pytest.mark.parametrize("events, error", [
    ([generate_event([1]), "[DONE]"], "the stream ended without a finish_reason"),
    ([generate_event([1], "abort"), "[DONE]"], "the server aborted the request"),
    (['{"error": {"message": "boom", "type": "server_error"}}', "[DONE]"],
     "error event in the stream: boom (server_error)"),
    (["{not json", "[DONE]"], "unreadable event"),
])
def test_stream_consumer_rejects_incomplete_streams(events, error):
    result = online.RequestResult(prompt_len=3)
    assert online.StreamConsumer(online.generate_event, result).take(events, 1.0)
    assert result.error.startswith(error)


def result(start, ttft, itl, end, tokens, error=None, coalesced=0):
    return online.RequestResult(prompt_len=10, start_s=start, finish_s=end, output_tokens=tokens, ttft_s=ttft,
                                itl_s=list(itl), coalesced_events=coalesced, error=error)


def test_summarize_hand_computed():
    results = [
        result(0.0, 0.1, [0.1, 0.3], 0.5, 3, coalesced=1),  # TPOT (0.5 - 0.1) / 2 = 0.2
        result(0.2, 0.3, [0.1], 0.7, 2),  # TPOT (0.5 - 0.3) / 1 = 0.2
        result(0.5, None, [], 1.0, 0, error="HTTP 400: bad"),  # counts in the duration only
    ]
    s = online.summarize(results)
    assert s["wall_s"] == pytest.approx(1.0)
    assert (s["completed"], s["failed"], s["errors"]) == (2, 1, ["HTTP 400: bad"])
    assert (s["input_tokens"], s["output_tokens"]) == (20, 5)
    assert s["tokens_per_s"] == pytest.approx(5.0)
    assert s["input_tokens_per_s"] == pytest.approx(20.0)
    assert s["total_tokens_per_s"] == pytest.approx(25.0)
    assert s["requests_per_s"] == pytest.approx(2.0)
    assert s["ttft_ms"] == {"mean": 200.0, "median": 200.0, "p99": pytest.approx(298.0)}
    assert s["itl_ms"] == {"mean": pytest.approx(166.7, rel=1e-3), "median": 100.0, "p99": pytest.approx(296.0)}
    assert s["tpot_ms"] == {"mean": 200.0, "median": 200.0, "p99": 200.0}
    assert s["e2e_ms"] == {"mean": 500.0, "median": 500.0, "p99": 500.0}
    assert s["max_concurrency_observed"] == 2  # [0, .5] and [.2, .7] overlap; [.5, 1] starts as the first ends
    assert s["coalesced_events"] == 1


def test_record_notes_a_stream_without_visible_tokens():
    args = online.parse_args(["--num-requests", "1", "--output-len", "5", "--backend", "openai"])
    stats = online.summarize([result(0.0, None, [], 1.0, 5)])  # usage said 5 tokens, no chunk had text
    (note,) = online.build_record(args, MODEL, stats, None)["notes"]
    assert "TTFT, ITL and TPOT are not measured" in note
    stats = online.summarize([result(0.0, 0.2, [0.2] * 3, 1.0, 4)])
    (note,) = online.build_record(args, MODEL, stats, None)["notes"]
    assert note == "completed requests generated 4 tokens, expected 5 (1 x 5, ignore_eos)"


def test_peak_concurrency():
    assert online.peak_concurrency([(0, 1), (1, 2), (2, 3)]) == 1
    assert online.peak_concurrency([(0, 3), (1, 2), (1.5, 4), (3.5, 5)]) == 3


# ---------------------------------------------------------------------------------------------
# Against the fake server


def test_latencies_counts_and_record(server, capsys, tmp_path):
    fake = server()
    # a warm-up request takes the client's first-call costs (lazy imports, first connection) out of timing
    rc, doc, out, err = bench(capsys, tmp_path, fake, "--warmup-requests", "1")
    assert rc == 0, err
    assert doc["name"] == "serve_online" and doc["device"] == "unknown" and doc["server"] == fake.url
    for key in ("commit", "torch", "command", "ceilings", "timing", "results"):
        assert key in doc, key
    assert doc["command"].startswith("kernels bench serve --base-url " + fake.url)
    assert "--num-requests 4 --input-len 8 --output-len 5" in doc["command"]
    (rec,) = doc["results"]
    assert (rec["op"], rec["backend"], rec["variant"], rec["shape"]) == (
        "serve_online", "kernels.serve", "generate+greedy+ignore_eos", "4x8x5")
    assert (rec["model"], rec["dtype"], rec["completed"], rec["failed"], rec["errors"]) == (MODEL, None, 4, 0, [])
    assert (rec["input_tokens"], rec["output_tokens"], rec["coalesced_events"]) == (32, 20, 8)
    assert rec["max_concurrency_observed"] == 4 and fake.peak_in_flight == 4  # all sent at once
    assert rec["tokens_per_s"] == pytest.approx(20 / rec["wall_s"], rel=2e-3)
    assert rec["total_tokens_per_s"] == pytest.approx(52 / rec["wall_s"], rel=2e-3)
    assert rec["requests_per_s"] == pytest.approx(4 / rec["wall_s"], rel=2e-3)
    # The fake server's timeline (see PATTERN): TTFT 80 ms, ITL 40 / 80 ms, TPOT 30 ms, E2E 200 ms.
    assert rec["ttft_ms"]["mean"] == pytest.approx(80, abs=25)
    assert rec["itl_ms"]["median"] == pytest.approx(60, abs=15)
    assert rec["itl_ms"]["p99"] == pytest.approx(80, abs=20)
    assert rec["tpot_ms"]["mean"] == pytest.approx(30, abs=8)
    assert rec["e2e_ms"]["median"] == pytest.approx(200, abs=40)
    assert rec["wall_s"] == pytest.approx(0.2, abs=0.08)
    assert (rec["ceiling"], rec["fraction"], rec["peers"], rec["vs_peer"]) == (None, None, {}, None)
    for row in ("output tokens/s", "TTFT (ms)", "ITL (ms)", "TPOT (ms)", "E2E latency (ms)", "coalesced"):
        assert row in out, row
    body = fake.bodies[1]
    assert len(body["input_ids"]) == 8 and all(0 <= t < online.DEFAULT_VOCAB_SIZE for t in body["input_ids"])
    assert body["sampling_params"] == {"max_tokens": 5, "temperature": 0.0, "ignore_eos": True}
    assert body["stream"] is True


def test_warmup_request_is_short_and_untimed(server, capsys, tmp_path):
    fake = server()
    rc, doc, _, _ = bench(capsys, tmp_path, fake, "--warmup-requests", "1", "--output-len", "6")
    assert rc == 0
    assert len(fake.bodies) == 5
    assert fake.bodies[0]["sampling_params"]["max_tokens"] == online.WARMUP_OUTPUT_LEN
    assert [b["sampling_params"]["max_tokens"] for b in fake.bodies[1:]] == [6] * 4
    (rec,) = doc["results"]
    assert rec["completed"] == 4 and rec["output_tokens"] == 24 and rec["warmup_requests"] == 1


def test_failures_are_reported_and_exit_1(server, capsys, tmp_path):
    fake = server(fail_http={1}, fail_stream={2})
    rc, doc, out, err = bench(capsys, tmp_path, fake)
    assert rc == 1
    (rec,) = doc["results"]
    assert (rec["completed"], rec["failed"]) == (2, 2)
    assert sorted(rec["errors"]) == ["HTTP 400: prompt too long (invalid_request_error)",
                                     "error event in the stream: out of KV cache (server_error)"]
    assert rec["output_tokens"] == 10  # the completed requests' tokens only
    assert "failed: HTTP 400: prompt too long" in out and "failed: error event in the stream" in out
    assert "2 of 4 requests failed" in err


def test_failed_warmup_stops_the_run(server, capsys, tmp_path):
    fake = server(fail_http={0})
    rc, doc, _, err = bench(capsys, tmp_path, fake, "--warmup-requests", "1")
    assert rc == 1 and doc is None
    assert len(fake.bodies) == 1
    assert "warm-up request" in err and "HTTP 400: prompt too long" in err and "Traceback" not in err


def test_max_concurrency_is_respected(server, capsys, tmp_path):
    fake = server()
    rc, doc, _, _ = bench(capsys, tmp_path, fake, "--num-requests", "6", "--max-concurrency", "2")
    assert rc == 0
    (rec,) = doc["results"]
    assert fake.peak_in_flight == 2 and rec["max_concurrency_observed"] == 2
    assert rec["variant"] == "generate+greedy+ignore_eos+conc2" and rec["max_concurrency"] == 2
    assert rec["wall_s"] >= 3 * 0.2  # three waves of two requests


def test_request_rate_spaces_arrivals_as_poisson(server, capsys, tmp_path):
    fake = server()
    rc, doc, _, _ = bench(capsys, tmp_path, fake, "--num-requests", "5", "--request-rate", "10", "--seed", "5")
    assert rc == 0
    expected = online.arrival_offsets(5, 10.0, seed=5)
    assert expected[-1] > 0.2  # a spread that all-at-once sending could not match
    observed = [t - fake.arrivals[0] for t in fake.arrivals]
    assert observed == pytest.approx(expected, abs=0.03)
    (rec,) = doc["results"]
    assert rec["variant"] == "generate+greedy+ignore_eos+rate10" and rec["request_rate"] == 10.0
    assert "--request-rate 10" in doc["command"]


def test_openai_backend_counts_chunks_and_takes_usage_totals(server, capsys, tmp_path):
    fake = server()
    rc, doc, _, _ = bench(capsys, tmp_path, fake, "--backend", "openai", "--warmup-requests", "1")
    assert rc == 0
    body = fake.bodies[1]
    assert (body["model"], body["max_tokens"], body["temperature"], body["ignore_eos"]) == (MODEL, 5, 0.0, True)
    assert len(body["prompt"]) == 8 and body["stream_options"] == {"include_usage": True}
    (rec,) = doc["results"]
    assert rec["variant"] == "openai+greedy+ignore_eos"
    assert rec["output_tokens"] == 20  # from usage; counting chunks would give 3 per request
    assert rec["coalesced_events"] == 0  # a chunk is one token to this backend
    assert rec["ttft_ms"]["mean"] == pytest.approx(80, abs=25)
    assert rec["itl_ms"]["median"] == pytest.approx(60, abs=15)


def test_api_key_is_sent_and_a_refused_key_is_one_line(server, capsys, tmp_path):
    fake = server(api_key="sesame")
    rc, doc, _, _ = bench(capsys, tmp_path, fake, "--api-key", "sesame")
    assert rc == 0 and doc["results"][0]["completed"] == 4
    assert "sesame" not in doc["command"] and "--api-key KEY" in doc["command"]
    (tmp_path / "serve_online.json").unlink()
    rc, doc, _, err = bench(capsys, tmp_path, fake, "--api-key", "wrong")
    assert rc == 1 and doc is None
    assert f"GET {fake.url}/v1/models answered HTTP 401: invalid API key" in err


def test_unreachable_server_is_one_clear_line(capsys):
    port = free_port()
    rc = online.main(["--port", str(port), "--num-requests", "2"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("kernels bench serve: error: cannot reach the server")
    assert f"http://127.0.0.1:{port}/v1/models" in lines[0]


# ---------------------------------------------------------------------------------------------
# The offline result: peer, roofline, and refusal of another workload


def write_offline(tmp_path, shape: str) -> str:
    doc = {"name": "serve_offline", "device": "NVIDIA H100 80GB HBM3", "commit": "abc", "torch": "2.11.0+cu130",
           "command": "kernels bench offline ...", "ceilings": {"read_gbps": 3044.0},
           "results": [{"op": "serve_offline", "backend": "kernels.serve", "shape": shape, "dtype": "bfloat16",
                        "tokens_per_s": 50.0, "roofline_tokens_per_s": 400.0,
                        "roofline": {"read_gbps": 3044.0, "tokens_per_s": 400.0}}]}
    path = tmp_path / "offline" / "serve_offline.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    return str(path)


def test_offline_result_gives_peer_roofline_and_device(server, capsys, tmp_path):
    fake = server()
    path = write_offline(tmp_path, "4x8x5")
    rc, doc, out, _ = bench(capsys, tmp_path, fake, "--offline-result", path)
    assert rc == 0
    assert (doc["device"], doc["torch"], doc["ceilings"]) == ("NVIDIA H100 80GB HBM3", "2.11.0+cu130",
                                                              {"read_gbps": 3044.0})
    (rec,) = doc["results"]
    assert rec["dtype"] == "bfloat16"
    assert rec["peers"] == {"serve_offline": 50.0}
    assert rec["vs_peer"] == pytest.approx(rec["tokens_per_s"] / 50.0, rel=1e-2)  # both rounded
    assert rec["ceiling"] == "roofline_tokens_per_s" and rec["roofline_tokens_per_s"] == 400.0
    assert rec["fraction"] == pytest.approx(rec["tokens_per_s"] / 400.0, rel=1e-2)
    assert rec["roofline"] == {"read_gbps": 3044.0, "tokens_per_s": 400.0}
    assert "serve_offline tokens/s" in out and "fraction of roofline" in out


def test_offline_result_of_another_workload_is_refused(server, capsys, tmp_path):
    fake = server()
    path = write_offline(tmp_path, "64x128x128")
    with pytest.raises(SystemExit) as exit_info:
        online.main(["--base-url", fake.url, "--num-requests", "4", "--input-len", "8", "--output-len", "5",
                     "--offline-result", path])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "its workload is 64x128x128, this run's is 4x8x5" in err
    assert fake.bodies == []  # refused before sending anything


# ---------------------------------------------------------------------------------------------
# Arguments and the CLI hook


@pytest.mark.parametrize("argv, message", [
    (["--num-requests", "0"], "--num-requests must be at least 1"),
    (["--max-concurrency", "0"], "--max-concurrency must be at least 1"),
    (["--random-range-ratio", "1.5"], "--random-range-ratio must be in [0, 1]"),
    (["--request-rate", "0"], "--request-rate must be above 0"),
    (["--warmup-requests", "-1"], "--warmup-requests must be 0 or more"),
    (["--backend", "grpc"], "invalid choice: 'grpc'"),
    (["--base-url", "localhost:30000"], "--base-url must start with http://"),
    (["--offline-result", "/nonexistent/serve_offline.json"], "cannot read it"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        online.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_hook_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kernels bench serve")
    for flag in ("--base-url", "--backend", "--request-rate", "--max-concurrency", "--offline-result", "examples:"):
        assert flag in out, flag
    assert "kernels bench serve --help" in cli.build_parser().epilog
