"""`kernels serve`'s life: /health, a shutdown signal with requests in flight, the scheduler
process killed under the server, a model that cannot load, and --help.

Nothing may hang: every wait here has a deadline, and a server that outlives its test is killed
by the fixture (and the test fails)."""

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import aiohttp

from kernels.serve.server.args import ServerArgs, build_parser

SHUTDOWN_LIMIT_S = 10
# Requests that cannot finish by themselves while a test looks at them.
LONG_COMPLETION = {"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True, "temperature": 0.8}
LONG_CHAT = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1000,
             "ignore_eos": True, "temperature": 0.8}


# ---- helpers --------------------------------------------------------------------------------------


async def _stream(session, url: str, body: dict, first_event: asyncio.Event):
    """``(status, data payloads)`` of a streamed request, read to its end; ``first_event`` is set
    on the first payload."""
    async with session.post(url, json={**body, "stream": True}) as resp:
        events = []
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[len(b"data: "):].strip().decode())
                first_event.set()
        return resp.status, events


async def _whole(session, url: str, body: dict):
    """``(status, parsed JSON body)`` of a request answered whole."""
    async with session.post(url, json=body) as resp:
        return resp.status, json.loads(await resp.read())


async def _until(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _running(server) -> float:
    m = server.metrics()
    return m["kernels_num_requests_running"] + m["kernels_num_requests_waiting"]


def _ipc_dir(pid: int) -> str:
    """The scheduler's ZeroMQ folder, from its command line (``... ipc://DIR/in ipc://DIR/out``)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    return os.path.dirname(argv[-2].removeprefix("ipc://"))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_exit(proc: subprocess.Popen, since: float) -> tuple[int, float]:
    """``(exit status, seconds since since)``; fails if it takes longer than SHUTDOWN_LIMIT_S."""
    try:
        rc = proc.wait(timeout=max(SHUTDOWN_LIMIT_S - (time.monotonic() - since), 0.1))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"kernels serve still running {SHUTDOWN_LIMIT_S} s after the signal") from None
    return rc, time.monotonic() - since


def _in_flight(server, signal_it):
    """Start one streamed and one whole request, wait until both run in the scheduler, await
    ``signal_it(session)``, and return ``((stream status, payloads), (whole status, body), what
    signal_it returned)`` once both requests have ended."""

    async def scenario():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            started = asyncio.Event()
            stream = asyncio.create_task(_stream(session, server.base_url + "/v1/completions", LONG_COMPLETION,
                                                 started))
            whole = asyncio.create_task(_whole(session, server.base_url + "/v1/chat/completions", LONG_CHAT))
            await asyncio.wait_for(started.wait(), 60)
            await _until(lambda: _running(server) >= 2, "both requests to run")
            extra = await signal_it(session)
            return await stream, await whole, extra

    return asyncio.run(scenario())


def _check_stream_failed(status: int, events: list[str], message: str) -> None:
    """A stream that ran, then ended with the error event and [DONE]."""
    assert status == 200, events
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])
    assert set(error) == {"error"} and message in error["error"]["message"], error
    chunks = [json.loads(e) for e in events[:-2]]
    assert chunks and all("choices" in c and "error" not in c for c in chunks), events[:3]


# ---- the tests ------------------------------------------------------------------------------------


def test_health_while_alive(server):
    assert server.request("GET", "/health") == (200, {"status": "ok"})


def test_sigterm_fails_requests_in_flight_then_exits(start_server):
    with start_server("--threads", "2") as server:
        [scheduler] = server.scheduler_pids
        ipc_dir = _ipc_dir(scheduler)
        sent = []

        async def sigterm(session):
            server.proc.send_signal(signal.SIGTERM)
            sent.append(time.monotonic())

        (s_status, events), (w_status, body), _ = _in_flight(server, sigterm)
        rc, took = _wait_exit(server.proc, sent[0])
        print(f"\nSIGTERM: the server exited with status {rc} after {took:.2f} s")
        _check_stream_failed(s_status, events, "shutting down")
        assert w_status == 503, body
        assert body["error"]["message"] == "the server is shutting down" and body["error"]["type"] == "server_error"
        assert rc == 0, f"exit status {rc} after SIGTERM\n{server.log()[-3000:]}"
        assert _gone(scheduler), "the scheduler process outlived the server"
        assert not os.path.exists(ipc_dir), f"{ipc_dir} left behind"


def test_scheduler_killed_fails_requests_then_sigint(start_server):
    with start_server("--threads", "2") as server:
        [scheduler] = server.scheduler_pids
        ipc_dir = _ipc_dir(scheduler)
        url = server.base_url + "/v1/completions"

        async def kill_scheduler(session):
            os.kill(scheduler, signal.SIGKILL)
            # Requests every 20 ms, some before the server notices (it looks every 0.5 s), some
            # after the scheduler's sockets are gone but before it notices: each refused, none
            # stuck (nor the server with it).
            requests = []
            for _ in range(50):
                requests.append(asyncio.create_task(_whole(session, url, {"prompt": "Hi", "max_tokens": 4})))
                await asyncio.sleep(0.02)
            return await asyncio.wait_for(asyncio.gather(*requests), 20)

        (s_status, events), (w_status, body), right_after = _in_flight(server, kill_scheduler)
        _check_stream_failed(s_status, events, "scheduler process")
        assert w_status == 503 and "scheduler process" in body["error"]["message"], body
        assert all(status == 503 for status, _ in right_after), right_after

        status, health = server.request("GET", "/health", timeout=10)
        assert status == 503 and "scheduler process" in health["error"]["message"], health
        for path, body in (("/v1/completions", {"prompt": "Hi", "max_tokens": 4}),
                           ("/v1/completions", {"prompt": "Hi", "max_tokens": 4, "stream": True}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})):
            status, answer = server.request("POST", path, body, timeout=10)
            assert status == 503 and answer["error"]["code"] == "service_unavailable", (path, body, answer)
        assert server.metrics()["kernels_scheduler_alive"] == 0

        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        rc, took = _wait_exit(server.proc, t0)
        print(f"\nSIGINT after the scheduler died: the server exited with status {rc} after {took:.2f} s")
        assert rc == 0, f"exit status {rc} after SIGINT\n{server.log()[-3000:]}"
        assert not os.path.exists(ipc_dir), f"{ipc_dir} left behind"


def test_missing_model_fails_with_one_line():
    model = f"/no/such/{uuid.uuid4().hex}/model.gguf"
    cmd = [sys.executable, "-m", "kernels.cli", "serve", model, "--port", "0"]
    t0 = time.monotonic()
    # A session of its own: its process group tells whether any of its processes is left.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("kernels serve with a missing model still running after 60 s") from None
    took = time.monotonic() - t0
    print(f"\nmissing model: exit status {proc.returncode} after {took:.1f} s; stderr:\n{err}")
    assert proc.returncode not in (0, None)
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0] == f"kernels serve: loading {model} ...", err
    assert lines[1].startswith("kernels serve: ") and model in lines[1], err
    assert "does not exist" in lines[1] or "No such file" in lines[1], err
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("a process of kernels serve outlived it")
        time.sleep(0.1)


def test_help_mentions_every_flag():
    r = subprocess.run([sys.executable, "-m", "kernels.cli", "serve", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: kernels serve")
    actions = build_parser()._actions
    # Every setting has a flag (the model is the positional argument) ...
    assert {a.dest for a in actions} >= {f.name for f in dataclasses.fields(ServerArgs)}
    # ... and the help names each flag, and the model.
    assert "model" in r.stdout and "SmolLM2" in r.stdout
    flags = [s for a in actions for s in a.option_strings]
    missing = [f for f in flags if f not in r.stdout]
    assert not missing, missing
