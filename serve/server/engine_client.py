"""The main process's side of the engine: starts the scheduler process, submits requests,
detokenizes their tokens as they come back, and fails them cleanly when anything goes wrong.

Everything here runs on the server's event loop. Each submitted request gets a
:class:`RequestStream` of :class:`Increment` s; the receive task routes the scheduler's outputs
to them. Text is made here, not in the scheduler (its loop only computes): a request with stop
strings is the exception, its text comes from the scheduler, which needs it to find the stop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from ..loader import load_tokenizer
from ..outputs import StepOutput, TokenLogprob, Usage
from ..sampling import SamplingParams
from ..tokenizer import IncrementalDetokenizer, Tokenizer
from . import ipc
from .args import ServerArgs
from .metrics import ServerMetrics

log = logging.getLogger("kernels.serve")

# The scheduler is declared dead when it has said nothing for this long (it sends a heartbeat
# every HEARTBEAT_S when idle, and outputs after every step when busy).
SILENCE_LIMIT_S = 60.0


class ServiceUnavailable(Exception):
    """The request cannot be taken now (queue full, scheduler down, shutting down): HTTP 503."""


@dataclass
class Increment:
    """New tokens of one request since its last increment; ``error`` set means it failed."""

    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None
    usage: Usage | None
    error: str | None = None
    error_status: int = 503  # 400 when the scheduler refused the request as invalid

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(eq=False)
class RequestStream:
    """One request's increments, in order, until the one that finishes it."""

    request_id: str
    params: SamplingParams
    detokenizer: IncrementalDetokenizer | None
    created: float = field(default_factory=time.monotonic)
    last_token: float | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Increment:
        if self.queue is None:
            raise StopAsyncIteration
        item = await self.queue.get()
        if item.finished:
            self.queue = None
        return item


class EngineClient:
    """Owns the scheduler process and the requests in flight.

    Parameters
    ----------
    args : ServerArgs
    metrics : ServerMetrics
    """

    def __init__(self, args: ServerArgs, metrics: ServerMetrics):
        self.args = args
        self.metrics = metrics
        self.info: ipc.Ready | None = None
        self.tokenizer: Tokenizer | None = None
        self.failure: str | None = None  # why the scheduler is gone, once it is
        self._streams: dict[str, RequestStream] = {}
        self._ids = itertools.count()
        self._proc: subprocess.Popen | None = None
        self._tasks: list[asyncio.Task] = []
        self._last_heard = time.monotonic()
        self._closing = False

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> ipc.Ready:
        """Start the scheduler process, load the tokenizer meanwhile, and wait until the model is
        loaded. ``RuntimeError`` with the scheduler's own message if it fails to start."""
        self._dir = tempfile.mkdtemp(prefix="kernels-serve-")
        to_addr, from_addr = (f"ipc://{os.path.join(self._dir, n)}" for n in ("in", "out"))
        self._ctx = zmq.Context()
        self._actx = zmq.asyncio.Context()
        self._to_scheduler = self._ctx.socket(zmq.PUSH)
        self._to_scheduler.setsockopt(zmq.SNDHWM, 0)  # no limit: _send's only refusal is no scheduler
        self._to_scheduler.bind(to_addr)
        self._from_scheduler = self._actx.socket(zmq.PULL)
        self._from_scheduler.bind(from_addr)
        cmd = [sys.executable, "-m", "kernels.serve.server.scheduler_process", json.dumps(self.args.to_dict()),
               to_addr, from_addr]
        self._proc = subprocess.Popen(cmd)
        tokenizer = asyncio.get_running_loop().run_in_executor(
            None, load_tokenizer, self.args.model, self.args.load_format)
        msg = await self._first_message()
        if not isinstance(msg, ipc.Ready):
            # The tokenizer fails too on a model that cannot load: its error, never retrieved,
            # would be logged with a traceback; the scheduler's says the same.
            await asyncio.gather(tokenizer, return_exceptions=True)
            await self.close()
            raise RuntimeError(f"the scheduler process failed to start: {msg}")
        self.info = msg
        self.tokenizer = await tokenizer
        self._last_heard = time.monotonic()
        self.metrics.alive.set(1)
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._watch())]
        return msg

    async def _first_message(self):
        """The scheduler's first word, or why there will be none (one line: the traceback's last,
        the whole of it logged at debug level)."""
        while True:
            if await self._from_scheduler.poll(200):
                msg = await self._from_scheduler.recv_pyobj()
                if isinstance(msg, ipc.Fatal):
                    log.debug("scheduler process failed to start:\n%s", msg.message)
                    return msg.message.strip().splitlines()[-1]
                return msg
            if self._proc.poll() is not None:
                return f"it exited with status {self._proc.returncode} before saying it was ready"

    async def close(self) -> None:
        """Fail what is in flight, stop the scheduler process (politely, then not), clean up."""
        self._closing = True
        self.fail_all("the server is shutting down")
        for task in self._tasks:
            task.cancel()
        if self._proc is not None and self._proc.poll() is None:
            self._send(ipc.Shutdown())
            for signal_it in (None, self._proc.terminate, self._proc.kill):
                if signal_it is not None:
                    signal_it()
                try:
                    await asyncio.wait_for(asyncio.to_thread(self._proc.wait), timeout=10)
                    break
                except asyncio.TimeoutError:
                    continue
        self._to_scheduler.close(linger=0)
        self._from_scheduler.close(linger=0)
        self._ctx.term()
        self._actx.term()
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def healthy(self) -> bool:
        return self.info is not None and self.failure is None and not self._closing

    # ---- requests ------------------------------------------------------------------------------

    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> RequestStream:
        """Send a request to the scheduler; its increments arrive on the returned stream.
        ``ServiceUnavailable`` when the server cannot take it now."""
        if not self.healthy:
            raise ServiceUnavailable(self.failure or "the server is not ready or is shutting down")
        limit = self.args.max_running_requests + self.args.max_queued_requests
        if len(self._streams) >= limit:
            raise ServiceUnavailable(f"the server's queue is full ({limit} requests in flight); retry later")
        detok = None
        if self.tokenizer is not None and not params.stop:
            detok = IncrementalDetokenizer(self.tokenizer, prompt_ids)
        if not self._send(ipc.AddRequest(request_id, prompt_ids, params)):
            raise ServiceUnavailable(self.failure)
        stream = RequestStream(request_id, params, detok)
        self._streams[request_id] = stream
        return stream

    def abort(self, request_id: str) -> None:
        """Stop a request (its client left): the scheduler frees its pages."""
        if self._streams.pop(request_id, None) is None:
            return
        self.metrics.requests.labels(finish_reason="abort").inc()
        if self.healthy:
            self._send(ipc.AbortRequest(request_id))

    def _send(self, msg) -> bool:
        """Send to the scheduler without ever blocking the event loop: with no scheduler connected
        (killed a moment ago, before the watch noticed; or exiting after a failed start), a
        blocking send would wait forever. ``False`` then, and the scheduler is declared gone."""
        try:
            self._to_scheduler.send_pyobj(msg, zmq.NOBLOCK)
        except zmq.Again:
            self._scheduler_gone("the scheduler process is gone (not connected)")
            return False
        return True

    def fail_all(self, message: str) -> None:
        """End every request in flight with ``message`` (503)."""
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self.metrics.requests.labels(finish_reason="error").inc()
            stream.queue.put_nowait(Increment([], "", None, None, None, error=message))

    # ---- the scheduler's messages --------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            msg = await self._from_scheduler.recv_pyobj()
            self._last_heard = time.monotonic()
            if isinstance(msg, ipc.Outputs):
                self.metrics.update_load(msg.load)
                now = time.monotonic()
                for out in msg.outputs:
                    self._deliver(out, now)
            elif isinstance(msg, ipc.Rejected):
                stream = self._streams.pop(msg.request_id, None)
                if stream is not None:
                    self.metrics.rejected.labels(status="400").inc()
                    stream.queue.put_nowait(Increment([], "", None, None, None, error=msg.message, error_status=400))
            elif isinstance(msg, ipc.Fatal):
                self._scheduler_gone(f"the scheduler process failed: {msg.message.strip().splitlines()[-1]}")
                log.error("scheduler process failed:\n%s", msg.message)
                return

    async def _watch(self) -> None:
        """Notice a scheduler that died without a word (killed) or stopped answering."""
        while self.failure is None:
            await asyncio.sleep(0.5)
            if self._proc.poll() is not None:
                self._scheduler_gone(f"the scheduler process exited (status {self._proc.returncode})")
            elif time.monotonic() - self._last_heard > SILENCE_LIMIT_S:
                self._scheduler_gone(f"the scheduler process has not answered for {SILENCE_LIMIT_S:.0f} s")

    def _scheduler_gone(self, why: str) -> None:
        if self.failure is None and not self._closing:
            log.error("%s; failing the requests in flight", why)
            self.failure = why
            self.metrics.alive.set(0)
            self.fail_all(why)

    def _deliver(self, out: StepOutput, now: float) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            return  # aborted meanwhile
        m = self.metrics
        if out.queue_time is not None:
            m.queue_time.observe(out.queue_time)
        if out.token_ids:
            if stream.last_token is None:
                m.ttft.observe(now - stream.created)
            else:
                m.itl.observe(now - stream.last_token)
            stream.last_token = now
            m.generation_tokens.inc(len(out.token_ids))
        text = out.text if stream.detokenizer is None else self._detokenize(stream, out)
        usage = out.usage if out.finished else None
        stream.queue.put_nowait(Increment(out.token_ids, text, out.logprobs, out.finish_reason, usage))
        if out.finished:
            del self._streams[out.request_id]
            m.requests.labels(finish_reason=out.finish_reason).inc()
            m.prompt_tokens.inc(out.usage.prompt_tokens)
            m.e2e.observe(now - stream.created)

    @staticmethod
    def _detokenize(stream: RequestStream, out: StepOutput) -> str:
        ids = out.token_ids
        # A request without stop strings stops on a stop token (or EOS), whose text is left out.
        if out.finish_reason == "stop":
            ids = ids[:-1]
        return "".join(stream.detokenizer.add(t) for t in ids)
