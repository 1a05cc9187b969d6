"""Issue 7, acceptance 3: 100 streams cut off by their clients part-way are every one aborted, and
afterwards no page is held by any request (cached prefix pages that can be evicted count as
free), checked through /metrics. The same for a request answered whole whose client leaves.

On the shared server: its counters are compared before and after, never read as absolute."""

import asyncio
import json
import random
import socket
import time
from urllib.parse import urlsplit

import aiohttp

STREAMS = 100
AT_ONCE = 20
ABORTED = 'kernels_requests_total{finish_reason="abort"}'
FINISHED = ('kernels_requests_total{finish_reason="stop"}', 'kernels_requests_total{finish_reason="length"}',
            'kernels_requests_total{finish_reason="error"}')
TOPICS = ["the sea", "a mountain", "the city at night", "an old clock", "a red fox", "the first snow", "a library",
          "a lighthouse", "the desert", "a violin"]


def _body(i: int) -> tuple[str, dict]:
    """Request ``i``: a completion or a chat, its own prompt, far from done when it is cut off."""
    common = {"max_tokens": 1000, "ignore_eos": True, "temperature": 0.8, "stream": True}
    topic = f"{TOPICS[i % len(TOPICS)]} (story {i})"
    if i % 2:
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": f"Write about {topic}."}], **common}
    return "/v1/completions", {"prompt": f"Once upon a time, {topic}", **common}


def _text(event: dict) -> str:
    choice = event["choices"][0]
    return choice.get("text") or choice.get("delta", {}).get("content") or ""


async def _cut_off(session, base_url: str, i: int, rng: random.Random) -> int:
    """Stream request ``i``, read 1 to 5 events with text, then drop the connection; the number of
    text events read."""
    path, body = _body(i)
    want = rng.randint(1, 5)
    resp = await session.post(base_url + path, json=body)
    assert resp.status == 200, await resp.text()
    seen = 0
    async for line in resp.content:
        if not line.startswith(b"data: "):
            continue
        event = json.loads(line[len(b"data: "):])
        assert "error" not in event and _text(event) is not None, event
        assert event["choices"][0]["finish_reason"] is None, event  # cut off before its end
        seen += bool(_text(event))
        if seen == want:
            break
    # Abruptly: the connection is closed, not returned to the pool, and nothing more is read.
    resp.close()
    return seen


def _counts(metrics: dict) -> dict:
    return {k: metrics.get(k, 0.0) for k in (ABORTED, *FINISHED)}


def _settled(server, aborted_before: float, aborts: int, timeout: float = 30) -> dict:
    """The metrics once ``aborts`` more requests are counted aborted and none runs or waits."""
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        if (m.get(ABORTED, 0) - aborted_before >= aborts and m["kernels_num_requests_running"] == 0
                and m["kernels_num_requests_waiting"] == 0):
            return m
        assert time.monotonic() < deadline, (
            f"not settled after {timeout} s: aborted {m.get(ABORTED, 0) - aborted_before} of {aborts}, "
            f"running {m['kernels_num_requests_running']}, waiting {m['kernels_num_requests_waiting']}")
        time.sleep(0.1)


def _assert_no_page_held(m: dict) -> None:
    total, free = m["kernels_kv_pages_total"], m["kernels_kv_pages_free"]
    evictable, in_use = m["kernels_kv_pages_evictable"], m["kernels_kv_pages_in_use"]
    pages = f"total {total}, free {free}, evictable {evictable}, in use {in_use}"
    assert total > 0 and in_use == 0, pages
    assert free + evictable == total, pages


def test_streams_cut_off_are_aborted_and_free_their_pages(server):
    before = _counts(server.metrics())
    rng = random.Random(7)

    async def run_all() -> list[int]:
        gate = asyncio.Semaphore(AT_ONCE)
        # force_close: no connection is reused, each cut-off is a connection of its own going away
        connector = aiohttp.TCPConnector(limit=AT_ONCE, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            async def one(i: int) -> int:
                async with gate:
                    return await _cut_off(session, server.base_url, i, rng)

            return await asyncio.gather(*(one(i) for i in range(STREAMS)))

    t0 = time.monotonic()
    seen = asyncio.run(run_all())
    took = time.monotonic() - t0
    m = _settled(server, before[ABORTED], STREAMS)
    after = _counts(m)
    print(f"\n{STREAMS} streams cut off in {took:.1f} s after {sum(seen)} text events; aborted "
          f"{after[ABORTED] - before[ABORTED]:.0f}; pages total {m['kernels_kv_pages_total']:.0f}, free "
          f"{m['kernels_kv_pages_free']:.0f}, evictable {m['kernels_kv_pages_evictable']:.0f}, in use "
          f"{m['kernels_kv_pages_in_use']:.0f}")
    assert all(n >= 1 for n in seen)
    assert after[ABORTED] - before[ABORTED] == STREAMS
    assert all(after[k] == before[k] for k in FINISHED), (before, after)  # none ended otherwise
    _assert_no_page_held(m)


def test_whole_request_whose_client_leaves_is_aborted(server):
    before = _counts(server.metrics())
    url = urlsplit(server.base_url)
    body = json.dumps({"prompt": "A long letter to my friend:", "max_tokens": 1000, "ignore_eos": True,
                       "temperature": 0.8}).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        # Running (and generating) in the scheduler before the client leaves.
        deadline = time.monotonic() + 30
        while server.metrics()["kernels_num_requests_running"] < 1:
            assert time.monotonic() < deadline, "the request never ran"
            time.sleep(0.05)
        time.sleep(0.3)
    m = _settled(server, before[ABORTED], 1)
    after = _counts(m)
    assert after[ABORTED] - before[ABORTED] == 1
    assert all(after[k] == before[k] for k in FINISHED), (before, after)
    _assert_no_page_held(m)
