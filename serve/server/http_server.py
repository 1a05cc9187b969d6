"""The HTTP API (FastAPI): routes, authentication, body limits, errors, and the running of a
validated job against the engine client, whole or streamed as server-sent events.

Every failure leaves as OpenAI's nested error object with a 4xx status for the client's mistakes
(400 invalid, 401 key, 404 unknown model or route, 405 method, 413 body too large) and 503 when
the server cannot take the request now; a 500 means a bug here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine_client import EngineClient, Increment, RequestStream, ServiceUnavailable
from .metrics import CONTENT_TYPE
from .openai_format import Formatter, generate_answer, sse, usage_dict
from .protocol import APIError, Job, ModelLimits, parse_chat, parse_completion, parse_generate, parse_json

log = logging.getLogger("kernels.serve")



def build_app(client: EngineClient, model_id: str) -> FastAPI:
    args = client.args
    info = client.info
    limits = ModelLimits(model_id, info.context_length, info.vocab_size, info.max_total_tokens)
    # Checked per route rather than by an HTTP middleware: Starlette's middleware would relay
    # every event of every stream through a task of its own.
    auth = [Depends(_require_key(args.api_key))] if args.api_key is not None else []
    app = FastAPI(title="kernels serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = f"{request.method} {request.url.path}: {e.detail}"
        response = _error(APIError(e.status_code, message))
        response.headers.update(e.headers or {})  # 405's Allow
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _error(APIError(500, f"internal server error: {type(e).__name__}: {e}"))

    @app.get("/health")
    async def health():
        if client.healthy:
            return JSONResponse({"status": "ok"})
        return _error(APIError(503, client.failure or "not ready"))

    @app.get("/metrics")
    async def metrics():
        return Response(client.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "kernels",
                                            "max_model_len": info.context_length}]}

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request):
        job = parse_completion(await _read_json(request, args.max_request_bytes), client.tokenizer, limits)
        return await _run(client, request, job, Formatter("completion", client.new_request_id("cmpl"), model_id,
                                                          client.tokenizer))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(request: Request):
        job = parse_chat(await _read_json(request, args.max_request_bytes), client.tokenizer, limits)
        return await _run(client, request, job, Formatter("chat", client.new_request_id("chatcmpl"), model_id,
                                                          client.tokenizer))

    @app.post("/generate", dependencies=auth)
    async def generate(request: Request):
        job = parse_generate(await _read_json(request, args.max_request_bytes), client.tokenizer, limits)
        return await _run(client, request, job, Formatter("generate", client.new_request_id("gen"), model_id,
                                                          client.tokenizer))

    return app


def _require_key(api_key: str):
    expected = api_key.encode()

    def check(request: Request) -> None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), expected):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")

    return check


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def _read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object; 413 as soon as it passes ``limit`` bytes (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body ({declared} bytes) exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def _submit_all(client: EngineClient, job: Job, fmt: Formatter) -> list[RequestStream]:
    """One engine request per (prompt, sample); sample ``i`` of a seeded request uses seed + i, so
    the ``n`` samples differ and each stays reproducible."""
    streams = []
    try:
        for p, ids in enumerate(job.prompts):
            for i in range(job.n):
                params = job.params
                if job.n > 1 and params.seed is not None:
                    params = dataclasses.replace(params, seed=(params.seed + i) % 2**64)
                streams.append(client.submit(f"{fmt.id}-{p}-{i}", ids, params))
    except ServiceUnavailable as e:
        for s in streams:
            client.abort(s.request_id)
        client.metrics.rejected.labels(status="503").inc()
        raise APIError(503, str(e)) from None
    return streams


async def _run(client: EngineClient, request: Request, job: Job, fmt: Formatter):
    streams = _submit_all(client, job, fmt)
    if job.stream:
        return StreamingResponse(_stream(client, job, fmt, streams), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await _whole(client, request, job, fmt, streams)


async def _whole(client: EngineClient, request: Request, job: Job, fmt: Formatter, streams: list[RequestStream]):
    """Wait for every choice, or for the client to leave (then abort them all)."""
    collect = asyncio.ensure_future(asyncio.gather(*(_collect(s) for s in streams)))
    left = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait({collect, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not collect.done():
            collect.cancel()
            for s in streams:
                client.abort(s.request_id)
    if not collect.done() or collect.cancelled():
        return Response(status_code=499)  # nobody is listening
    results = collect.result()
    failed = next((r for r in results if r.error is not None), None)
    if failed is not None:
        for s in streams:
            client.abort(s.request_id)
        raise APIError(failed.error_status, failed.error)
    if job.kind == "generate":
        r = results[0]
        return generate_answer(fmt.id, r.text, r.token_ids, r.finish_reason, r.usage, r.logprobs)
    choices = [fmt.choice(i, r.text, r.logprobs, r.finish_reason) for i, r in enumerate(results)]
    return fmt.completion(choices, usage_dict([r.usage for r in results], len(job.prompts)))


async def _collect(stream: RequestStream) -> Increment:
    """All of a request's increments joined into one (the first error, if any, instead)."""
    total = Increment([], "", None if stream.params.logprobs is None else [], None, None)
    async for inc in stream:
        if inc.error is not None:
            return inc
        total.token_ids += inc.token_ids
        total.text += inc.text
        if inc.logprobs is not None:
            total.logprobs += inc.logprobs
        total.finish_reason, total.usage = inc.finish_reason, inc.usage
    return total


async def _client_left(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(client: EngineClient, job: Job, fmt: Formatter, streams: list[RequestStream]):
    """Server-sent events of every choice as its tokens come, then usage if asked, then [DONE].
    A client that leaves closes this generator: the requests still running are aborted."""
    pumps, events = _merge(streams)
    open_choices = len(streams)
    offsets = [0] * len(streams)
    first = [True] * len(streams)
    usages = [None] * len(streams)
    try:
        while open_choices:
            index, inc = await events()
            if inc.error is not None:
                yield sse(APIError(inc.error_status, inc.error).body())
                break
            if inc.finished:
                open_choices -= 1
                usages[index] = inc.usage
            if job.kind == "generate":
                yield sse(generate_answer(fmt.id, inc.text, inc.token_ids, inc.finish_reason, inc.usage,
                                          inc.logprobs))
                continue
            if not (inc.text or inc.finished or inc.logprobs or first[index]):
                continue  # tokens whose text is not complete yet, and nothing else to say
            choice = fmt.delta(index, inc.text, inc.logprobs, inc.finish_reason, first[index], offsets[index])
            first[index] = False
            offsets[index] += len(inc.text)
            yield sse(fmt.chunk([choice], job.include_usage))
        else:
            if job.include_usage:
                yield sse(fmt.usage_chunk(usage_dict(usages, len(job.prompts))))
        yield sse("[DONE]")
    finally:
        for p in pumps:
            p.cancel()
        for s in streams:
            client.abort(s.request_id)  # a no-op for the finished ones


def _merge(streams: list[RequestStream]):
    """``(tasks, next_event)``: ``await next_event()`` gives ``(choice index, increment)`` of
    whichever stream has one. One stream is read directly (the common case: no task per event)."""
    if len(streams) == 1:
        stream = streams[0]
        return [], lambda: _indexed(0, stream)
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        async for inc in stream:
            merged.put_nowait((index, inc))

    return [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)], merged.get


async def _indexed(index: int, stream: RequestStream) -> tuple[int, Increment]:
    return index, await stream.__anext__()
