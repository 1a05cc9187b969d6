"""`kernels serve` started for real, as a user would: a child process on 127.0.0.1, a free port.

``server`` is one SmolLM2 server shared by the tests of a session (a start costs ~10 s: the model
in the scheduler process, the tokenizer in the main one); ``start_server`` starts one with
flags of its own, for the tests that stop it, kill its scheduler or need other limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

START_TIMEOUT_S = 180
_LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass
class RunningServer:
    proc: subprocess.Popen
    base_url: str
    log_path: str

    @property
    def scheduler_pids(self) -> list[int]:
        """The scheduler process (the server's children)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 60):
        """``(status, parsed JSON or text)``; ``body``: a dict (sent as JSON) or raw bytes."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers or {})
        if data is not None and "Content-Type" not in (headers or {}):
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{"name{labels}": value}`` (comment lines dropped)."""
        status, text = self.request("GET", "/metrics")
        assert status == 200, text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


@contextlib.contextmanager
def running_server(*flags: str):
    """A `kernels serve --port 0 FLAGS` process until the block ends, then SIGTERM and a check
    that it and its scheduler exited."""
    log = tempfile.NamedTemporaryFile("w+", prefix="kernels-serve-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "kernels.cli", "serve", "--port", "0", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    server = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while server is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"kernels serve exited ({proc.wait()}) before listening:\n{open(log.name).read()}")
            m = _LISTENING.search(line)
            if m:
                server = RunningServer(proc, m.group(1), log.name)
            elif time.monotonic() > deadline:
                raise RuntimeError("kernels serve did not start in time")
        yield server
    finally:
        children = server.scheduler_pids if server else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("kernels serve ignored SIGTERM for 30 s")
        for pid in children:
            _wait_gone(pid)
        os.unlink(log.name)


def _wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"the scheduler process {pid} outlived the server")


@pytest.fixture(scope="session")
def server():
    with running_server("--threads", "2") as s:
        yield s


@pytest.fixture
def start_server():
    return running_server
