"""The scheduler process: the engine's loop, fed and drained over ZeroMQ.

Started by the main process as ``python -m kernels.serve.server.scheduler_process ARGS_JSON
IN_ADDR OUT_ADDR``. It loads the model, says :class:`~.ipc.Ready`, then loops: take every message
waiting (new requests, aborts), run one engine step, send its outputs. Idle, it blocks on the
socket for at most ``HEARTBEAT_S`` and then sends an empty :class:`~.ipc.Outputs`, the heartbeat
that ``/health`` watches. Detokenization is the main process's job (``detokenize=False``).

It exits when told to (:class:`~.ipc.Shutdown`), when its parent dies (no orphan keeps a GPU),
and on any error, after sending :class:`~.ipc.Fatal` with the traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import zmq

from . import ipc
from .args import ServerArgs

HEARTBEAT_S = 0.5


def serve_loop(args: ServerArgs, in_addr: str, out_addr: str) -> int:
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    inbox.connect(in_addr)
    outbox = ctx.socket(zmq.PUSH)
    outbox.connect(out_addr)
    parent = os.getppid()
    try:
        engine = _build_engine(args)
        outbox.send_pyobj(_ready(engine))
        while os.getppid() == parent:
            busy = engine.has_unfinished()
            if not busy and not inbox.poll(HEARTBEAT_S * 1000):
                outbox.send_pyobj(ipc.Outputs([], engine.load()))
                continue
            if _drain(inbox, engine, outbox):
                return 0
            outputs = engine.step() if engine.has_unfinished() else []
            outbox.send_pyobj(ipc.Outputs(outputs, engine.load()))
        return 0
    except BaseException:
        outbox.send_pyobj(ipc.Fatal(traceback.format_exc()))
        return 1
    finally:
        outbox.close(linger=1000)
        inbox.close(linger=0)
        ctx.term()


def _build_engine(args: ServerArgs):
    import torch

    from ..engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    return Engine(args.model, device=args.device, dtype=args.dtype, load_format=args.load_format,
                  quantized_weights=args.quantized_weights,
                  page_size=args.page_size, max_total_tokens=args.max_total_tokens,
                  memory_fraction=args.memory_fraction, max_batch_tokens=args.max_batch_tokens,
                  max_running_requests=args.max_running_requests, enable_prefix_cache=args.prefix_cache,
                  cuda_graph=args.cuda_graph, detokenize=False)


def _ready(engine) -> ipc.Ready:
    c = engine.config
    return ipc.Ready(engine.name, str(engine.device), str(engine.model.dtype).removeprefix("torch."),
                     c.max_position, c.vocab_size, engine.pool.max_tokens)


def _drain(inbox, engine, outbox) -> bool:
    """Apply every message waiting; ``True`` when told to shut down."""
    while True:
        try:
            msg = inbox.recv_pyobj(zmq.NOBLOCK)
        except zmq.Again:
            return False
        if isinstance(msg, ipc.AddRequest):
            try:
                engine.add_request(msg.request_id, msg.prompt_ids, msg.params)
            except (ValueError, TypeError) as e:
                outbox.send_pyobj(ipc.Rejected(msg.request_id, str(e)))
        elif isinstance(msg, ipc.AbortRequest):
            engine.abort(msg.request_id)
        elif isinstance(msg, ipc.Shutdown):
            return True


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group; the main process decides when this one stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = ServerArgs.from_dict(json.loads(argv[0]))
    return serve_loop(args, argv[1], argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
