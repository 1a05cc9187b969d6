"""The server's Prometheus metrics (``GET /metrics``), kept in a registry of their own.

Latencies are measured in the main process when the increments arrive (what a client sees, less
the network); the queue time comes from the scheduler (arrival to first admission), the load
gauges from the scheduler's snapshot after each step.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from ..engine import EngineLoad

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self, model_name: str = ""):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("kernels_requests", "Requests finished, by finish reason "
                                "(stop, length, abort: the client left or the server shut down; error)",
                                ["finish_reason"], registry=r)
        self.rejected = Counter("kernels_rejected_requests", "Requests refused before they ran, by HTTP status",
                                ["status"], registry=r)
        self.prompt_tokens = Counter("kernels_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("kernels_generation_tokens", "Tokens generated", registry=r)
        self.queue_time = Histogram("kernels_request_queue_seconds", "Arrival at the scheduler to first admission",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("kernels_time_to_first_token_seconds", "Request accepted to its first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("kernels_inter_token_latency_seconds", "Gap between successive tokens of a request",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("kernels_e2e_request_latency_seconds", "Request accepted to its last token",
                             buckets=_E2E_BUCKETS, registry=r)
        self.running = Gauge("kernels_num_requests_running", "Requests holding KV pages in the scheduler", registry=r)
        self.waiting = Gauge("kernels_num_requests_waiting", "Requests queued in the scheduler", registry=r)
        self.pages_total = Gauge("kernels_kv_pages_total", "Pages of the KV pool", registry=r)
        self.pages_free = Gauge("kernels_kv_pages_free", "Pages in no one's hands", registry=r)
        self.pages_cached = Gauge("kernels_kv_pages_cached", "Pages held by the prefix cache", registry=r)
        self.pages_evictable = Gauge("kernels_kv_pages_evictable",
                                     "Cached pages no request uses (free for the asking)", registry=r)
        self.pages_in_use = Gauge("kernels_kv_pages_in_use",
                                  "Pages held by requests: total - free - evictable", registry=r)
        self.kv_usage = Gauge("kernels_kv_usage", "pages_in_use / pages_total", registry=r)
        self.cache_hit_rate = Gauge("kernels_prefix_cache_hit_rate",
                                    "Prompt tokens served from the prefix cache over prompt tokens admitted, "
                                    "since start", registry=r)
        self.alive = Gauge("kernels_scheduler_alive", "1 while the scheduler loop answers, else 0", registry=r)
        self.info = Gauge("kernels_model_info", "The served model (value 1)", ["model"], registry=r)
        if model_name:
            self.info.labels(model=model_name).set(1)

    def update_load(self, load: EngineLoad) -> None:
        self.running.set(load.running)
        self.waiting.set(load.waiting)
        self.pages_total.set(load.pages_total)
        self.pages_free.set(load.pages_free)
        self.pages_cached.set(load.pages_cached)
        self.pages_evictable.set(load.pages_evictable)
        self.pages_in_use.set(load.pages_in_use)
        self.kv_usage.set(load.pages_in_use / load.pages_total if load.pages_total else 0.0)
        admitted = load.prompt_tokens_cached + load.prompt_tokens_computed
        self.cache_hit_rate.set(load.prompt_tokens_cached / admitted if admitted else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
