"""`kernels serve`: start the scheduler process, then the HTTP server, and shut both down cleanly.

SIGINT and SIGTERM first fail the requests in flight (streams get an error event and [DONE]),
then stop uvicorn, then the scheduler process. The startup line ``kernels serve: ... listening on
http://HOST:PORT`` is printed once the server accepts connections (with ``--port 0``, the port
picked).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvicorn

from .args import ServerArgs, parse_args
from .engine_client import EngineClient
from .http_server import build_app
from .metrics import ServerMetrics


class _Server(uvicorn.Server):
    """uvicorn, with the requests in flight failed as soon as a shutdown signal arrives (uvicorn
    alone would wait for open streams to end)."""

    def __init__(self, config: uvicorn.Config, client: EngineClient):
        super().__init__(config)
        self.client = client

    def handle_exit(self, sig, frame) -> None:
        self.client.fail_all("the server is shutting down")
        super().handle_exit(sig, frame)


async def serve(args: ServerArgs, ready_line=print) -> None:
    metrics = ServerMetrics()
    client = EngineClient(args, metrics)
    print(f"kernels serve: loading {args.model or 'the default model (SmolLM2-135M-Instruct)'} ...",
          file=sys.stderr, flush=True)
    try:
        info = await client.start()
        model_id = args.served_model_name or info.model_name
        metrics.info.labels(model=model_id).set(1)
        app = build_app(client, model_id)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                timeout_graceful_shutdown=5, access_log=args.log_level in ("debug", "info"))
        server = _Server(config, client)
        startup = asyncio.create_task(_announce(server, info, model_id, args, ready_line))
        # Once stopped, uvicorn raises the signal that stopped it again, under the handler found
        # when it started: the default one would kill this process (SIGTERM) or cancel this
        # coroutine (SIGINT) before client.close() stops the scheduler process. Ignored instead,
        # the shutdown ends below, and main() returns 0.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        await server.serve()
        startup.cancel()
    finally:
        await client.close()


async def _announce(server: uvicorn.Server, info, model_id: str, args: ServerArgs, ready_line) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    ready_line(f"kernels serve: {model_id} on {info.device} ({info.dtype}), context {info.context_length}, "
               f"KV pool {info.max_total_tokens} tokens; listening on http://{host}:{port}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except RuntimeError as e:  # the scheduler process could not start: its reason is the message
        print(f"kernels serve: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while loading: client.close() has stopped the scheduler
        return 130
    print("kernels serve: stopped", file=sys.stderr)
    return 0
