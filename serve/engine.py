"""The offline engine: a model, its KV pool, the scheduler and the sampler behind a small API.

``generate`` and ``stream`` serve a script; ``add_request`` / ``step`` / ``abort`` are the loop
the server drives. Everything runs in the caller's thread, one step at a time.

Overlap scheduling (``overlap=True``, the default): the host work of a step (scheduling and
building the next batch, processing the last one's tokens) runs while the device computes. Each
:meth:`Engine.step` launches the next batch before it waits for the tokens of the one it reports:
a decode request whose last token is still on the device gets a placeholder input id, resolved on
the device by a gather from that batch's sampled tokens. A request found finished then has one more
row in the batch in flight: its token is dropped and its pages are released as if that row had
not run (its K/V write lands in a page no one reads). A batch whose requests use penalties (which
need every output token on the host) waits for the one before it, as without overlap.
"""

from __future__ import annotations

import itertools
import numbers
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from .cuda_graph import MAX_CAPTURE_BATCH, CudaGraphRunner
from .forward_batch import ForwardBatch
from .loader import load_model
from .memory import KVPool
from .outputs import GenerationOutput, StepOutput, TokenLogprob, Usage
from .request import Request
from .sampling import Sampler, SamplingParams, make_generator
from .scheduler import ScheduledBatch, Scheduler, SchedulerStats
from .tokenizer import IncrementalDetokenizer


class Engine:
    """Generate text with continuous batching and prefix caching.

    Parameters
    ----------
    model : str, os.PathLike, LoadedModel or None
        A model path for :func:`kernels.serve.loader.load_model` (``None``: the default SmolLM2 GGUF), or
        an already loaded model (anything with ``model``, ``config`` and ``tokenizer``).
    device, dtype, load_format, quantized_weights
        Passed to ``load_model`` when it loads the model (a loaded model keeps its own).
        ``quantized_weights`` (``"auto"``, ``"int4"``, ``"dequantize"``) says whether 4-bit GGUF
        weights stay packed for the INT4 GEMM (and, on CPU, a Q8_0 LM head int8 for the INT8 GEMM);
        ``"auto"``: on CPU only.
    page_size : int
        Tokens per KV page.
    max_total_tokens : int, optional
        Cap on the KV pool in tokens; on CPU it sets the pool's size (default 16384).
    memory_fraction : float
        On CUDA, the fraction of the memory free after loading the weights given to the KV pool.
    max_batch_tokens : int
        Prompt tokens one step computes at most (prefill chunks); each decoding request's one
        token rides on top.
    max_running_requests : int
        Requests decoding at once at most.
    enable_prefix_cache : bool
        Reuse the K/V of prompt prefixes computed before (radix cache).
    cuda_graph : bool
        On CUDA, run decode steps by replaying CUDA graphs captured at start for bucketed batch
        sizes (see :mod:`kernels.serve.cuda_graph`); elsewhere every step runs eagerly regardless.
    cuda_graph_max_batch : int
        The largest decode batch captured (also capped by ``max_running_requests`` and 256);
        larger decode batches run eagerly.
    overlap : bool
        Overlap scheduling (see the module's notes): launch the next batch before waiting for the
        current one's tokens, so that the host's work hides behind the device's. ``False`` runs
        one batch at a time (for debugging); the tokens are the same either way.
    detokenize : bool
        Build each request's text as its tokens come. ``False`` (the server, which detokenizes
        in another process) leaves ``text`` empty except for requests with stop strings, whose
        matching needs the text.
    """

    def __init__(self, model=None, *, device="auto", dtype="auto", load_format="auto", quantized_weights="auto",
                 page_size: int = 16, max_total_tokens: int | None = None, memory_fraction: float = 0.85,
                 max_batch_tokens: int = 2048, max_running_requests: int = 256, enable_prefix_cache: bool = True,
                 cuda_graph: bool = True, cuda_graph_max_batch: int = MAX_CAPTURE_BATCH, overlap: bool = True,
                 detokenize: bool = True):
        if model is None or isinstance(model, (str, os.PathLike)):
            model = load_model(model, device=device, dtype=dtype, load_format=load_format,
                               quantized_weights=quantized_weights)
        self.model = model.model
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.name = getattr(model, "name", "model")
        self.device = self.model.device
        c = self.config
        num_pages = KVPool.num_pages_for(c.num_layers, c.num_kv_heads, c.head_dim, page_size, self.model.dtype,
                                         self.device, max_total_tokens=max_total_tokens,
                                         memory_fraction=memory_fraction)
        self.pool = KVPool(c.num_layers, c.num_kv_heads, c.head_dim, page_size, num_pages, self.model.dtype,
                           self.device)
        self.scheduler = Scheduler(self.pool, max_context=c.max_position, max_batch_tokens=max_batch_tokens,
                                   max_running=max_running_requests, enable_prefix_cache=enable_prefix_cache)
        self.sampler = Sampler()
        self.graph_runner: CudaGraphRunner | None = None
        if cuda_graph and self.device.type == "cuda":
            max_pages = min(-(-c.max_position // page_size), num_pages)
            self.graph_runner = CudaGraphRunner(self.model, self.pool.kv_caches, max_pages=max_pages,
                                                max_batch=min(cuda_graph_max_batch, max_running_requests))
        self.eos_token_ids = set(c.eos_token_ids) | (self.tokenizer.eos_token_ids if self.tokenizer else set())
        self._requests: dict[str, Request] = {}
        self._ids = itertools.count()
        self.overlap = bool(overlap)
        self.detokenize = bool(detokenize)
        self._ahead: _Launched | None = None  # the batch launched and not yet reported

    @property
    def stats(self) -> SchedulerStats:
        """Counters: prompt tokens computed and served from the cache, preemptions, steps."""
        return self.scheduler.stats

    # ---- the offline API -------------------------------------------------------------------

    def generate(self, prompts, sampling_params=None) -> list[GenerationOutput]:
        """Run prompts to completion, batched together.

        Parameters
        ----------
        prompts : str, list of str, list of int or list of list of int
            Text (needs a tokenizer) or token ids; one prompt or a list of them.
        sampling_params : SamplingParams, dict, or a list of either, optional
            One for all prompts, or one per prompt. Default: ``SamplingParams()``.

        Returns
        -------
        list of GenerationOutput
            One per prompt, in order.

        Raises
        ------
        ValueError
            A bad prompt or parameter, or a request that can never fit (prompt + ``max_tokens``
            beyond the context length or the KV pool); raised before anything runs.

        Notes
        -----
        ``generate`` and ``stream`` call :meth:`step` themselves: requests queued with
        :meth:`add_request` advance meanwhile, but their outputs are not reported to anyone.
        """
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], numbers.Integral)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError("prompts must be a str, a list of token ids, or a non-empty list of those")
        if sampling_params is None or isinstance(sampling_params, (SamplingParams, Mapping)):
            sampling_params = [sampling_params] * len(prompts)
        elif len(sampling_params) != len(prompts):
            raise ValueError(f"sampling_params has {len(sampling_params)} entries for {len(prompts)} prompts")
        requests = [self._make_request(f"gen-{next(self._ids)}", p, sp) for p, sp in zip(prompts, sampling_params)]
        for req in requests:
            self._submit(req)
        while not all(r.finished for r in requests):
            self.step()
        return [self._final_output(r) for r in requests]

    def stream(self, prompt, sampling_params=None) -> Iterator[StepOutput]:
        """Run one prompt, yielding its increments as they come; closing the iterator early
        aborts the request."""
        request_id = f"stream-{next(self._ids)}"
        self.add_request(request_id, prompt, sampling_params)
        finished = False
        try:
            while not finished:
                for out in self.step():
                    if out.request_id == request_id:
                        finished = out.finished
                        yield out
        finally:
            if not finished:
                self.abort(request_id)

    # ---- the loop a server drives ------------------------------------------------------------

    def add_request(self, request_id: str, prompt, sampling_params=None) -> None:
        """Queue a request; its outputs come from :meth:`step`. ``ValueError`` for a duplicate id,
        bad input, or a request that can never fit."""
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        self._submit(self._make_request(request_id, prompt, sampling_params))

    def step(self) -> list[StepOutput]:
        """Run one batch; return an output for each request that produced tokens or finished.

        With overlap on, the batch whose outputs come back may have been launched by the call
        before, and this call launches the next one before it waits; a request finishing here
        reports its last output here, as without overlap, and is never mentioned again. A request
        added meanwhile joins the batch after the one already launched: its first output can come
        one call later than without overlap.
        """
        if self._ahead is None:
            batch = self.scheduler.schedule()
            if batch is None:
                return []
            self._ahead = self._launch(batch, None)
        current, self._ahead = self._ahead, None
        if self.overlap and not current.needs_history:
            batch = self.scheduler.schedule()
            if batch is not None:
                self._ahead = self._launch(batch, current)
        return self._process(current)

    def abort(self, request_id: str) -> StepOutput | None:
        """Stop a request and free its pages. Returns its last output (finish reason
        ``"abort"``), or ``None`` if no such request is running or waiting; :meth:`step` will not
        mention it again."""
        req = self._requests.get(request_id)
        if req is None:
            return None
        self._finish(req)
        req.finish_reason = "abort"
        return self._step_output(req)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    def load(self) -> EngineLoad:
        """A snapshot of the queue and of the KV pool (what a server's metrics report)."""
        cache = self.scheduler.cache
        return EngineLoad(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            pages_total=self.pool.num_pages,
            pages_free=self.pool.num_free_pages,
            pages_cached=cache.num_pages if cache is not None else 0,
            pages_evictable=cache.evictable_pages if cache is not None else 0,
            prompt_tokens_computed=self.stats.prompt_tokens_computed,
            prompt_tokens_cached=self.stats.prompt_tokens_cached,
        )

    # ---- internals ---------------------------------------------------------------------------

    def _launch(self, batch: ScheduledBatch, previous: _Launched | None) -> _Launched:
        """Queue a batch's forward and sampling on the device and the copy of its tokens to the
        host; nothing waits. ``previous``: the batch launched before, whose tokens the
        placeholders of this one refer to."""
        forward = batch.forward
        if batch.placeholders_in_order:  # no kernel: most decode steps
            forward.input_ids = previous.token_ids[: forward.num_tokens]
        elif batch.has_placeholders:
            ids = forward.input_ids
            forward.input_ids = torch.where(ids >= 0, ids, previous.token_ids[(-1 - ids).clamp_min(0)])
        logits = self._forward(forward)
        self.scheduler.commit(batch)
        rows = batch.sample_rows
        if not rows:
            return _Launched(batch)
        if len(rows) < len(batch.requests):
            logits = logits[_to_device(rows, logits.device)]
        reqs = [batch.requests[i] for i in rows]
        sampled = self.sampler.sample(logits, [r.params for r in reqs], [r.prompt_ids for r in reqs],
                                      [r.output_ids for r in reqs], [r.generator for r in reqs])
        host, done = _start_to_host(sampled.token_ids, sampled.logprobs, sampled.top_ids, sampled.top_logprobs)
        needs_history = any(_has_penalties(r.params) for r in reqs)
        decodes = {batch.requests[i] for i in rows if batch.num_new[i] == 1}
        return _Launched(batch, reqs, sampled.token_ids, host, done, needs_history, decodes)

    def _process(self, launched: _Launched) -> list[StepOutput]:
        """Wait for a launched batch's tokens and hand them to their requests."""
        if not launched.requests:
            return []
        if launched.done is not None:
            launched.done.synchronize()  # the step's one wait on the device
        token_ids, chosen, top_ids, top_lps = (None if h is None else h.tolist() for h in launched.host)
        outputs = []
        for j in self.scheduler.add_tokens(launched.batch, token_ids):
            req = launched.requests[j]
            if req.logprobs is not None:
                n = req.params.logprobs
                top = list(zip(top_ids[j][:n], top_lps[j][:n])) if n else []
                req.logprobs.append(TokenLogprob(token_ids[j], chosen[j], top))
            self._check_stop(req, token_ids[j])
            if req.finished:
                self._finish(req)
            outputs.append(self._step_output(req))
        return outputs

    def _finish(self, req: Request) -> None:
        """Release a finished or aborted request. If the batch in flight computes a decode token
        for it, that token is forgotten first: the request's pages and the cache end up as if the
        batch had left it out."""
        if self._ahead is not None and req in self._ahead.decodes and req in self.scheduler.running:
            self.scheduler.rollback_decode(req)
        self.scheduler.finish(req)
        del self._requests[req.request_id]

    def _forward(self, batch: ForwardBatch) -> torch.Tensor:
        """The model's logits for one step: a CUDA graph's replay for a decode batch that has one,
        the model's forward otherwise."""
        if self.graph_runner is not None and self.graph_runner.can_run(batch):
            return self.graph_runner.run(batch)
        return self.model(batch, self.pool.kv_caches)

    def _make_request(self, request_id: str, prompt, sampling_params) -> Request:
        if sampling_params is None:
            params = SamplingParams()
        elif isinstance(sampling_params, SamplingParams):
            params = sampling_params
        elif isinstance(sampling_params, Mapping):
            params = SamplingParams.from_mapping(sampling_params)
        else:
            raise TypeError(f"sampling_params must be SamplingParams or a dict, got {type(sampling_params).__name__}")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: give the prompt as token ids")
            prompt_ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(type(t) is int for t in prompt):
            # Plain ints (the common case) skip the abstract-class check: ~1 us a token, which made
            # submitting 64 prompts of 128 tokens take milliseconds before the first step.
            prompt_ids = list(prompt)
        elif isinstance(prompt, (list, tuple)) and all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt
        ):
            prompt_ids = [int(t) for t in prompt]
        else:
            raise TypeError("prompt must be a str or a list of int token ids")
        if not prompt_ids:
            raise ValueError("prompt must hold at least one token")
        vocab = self.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError(f"prompt token ids must lie in [0, {vocab}) (the vocabulary)")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and this model has none: use stop_token_ids")
        self.scheduler.check_fits(len(prompt_ids), params.max_tokens)
        req = Request(request_id, prompt_ids, params)
        if params.seed is not None:
            req.generator = make_generator(params.seed, self.device)
        if self.tokenizer is not None and (self.detokenize or params.stop):
            req.detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_ids)
        if params.logprobs is not None:
            req.logprobs = []
        return req

    def _submit(self, req: Request) -> None:
        self.scheduler.add(req)
        self._requests[req.request_id] = req

    def _check_stop(self, req: Request, token: int) -> None:
        p = req.params
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_token_ids):
            req.finish_reason = "stop"  # the stop token's own text is left out
            return
        if req.detokenizer is not None:
            old = len(req.text)
            req.text += req.detokenizer.add(token)
            if p.stop:
                # Only a match ending in the new text is new; it starts at most len(stop) - 1 earlier.
                start = max(0, old - max(len(s) for s in p.stop) + 1)
                hits = [i for i in (req.text.find(s, start) for s in p.stop) if i >= 0]
                if hits:
                    req.text = req.text[: min(hits)]
                    req.finish_reason = "stop"
                    return
        if len(req.output_ids) >= p.max_tokens:
            req.finish_reason = "length"

    def _step_output(self, req: Request) -> StepOutput:
        end = len(req.text)
        if not req.finished and req.params.stop:
            # Hold back what could be the start of a stop string.
            end = max(req.sent_text, end - max(len(s) for s in req.params.stop) + 1)
        text = req.text[req.sent_text : end]
        tokens = req.output_ids[req.sent_tokens :]
        logprobs = req.logprobs[req.sent_tokens :] if req.logprobs is not None else None
        queue_time = None
        if req.sent_tokens == 0 and req.admitted_at is not None:
            queue_time = req.admitted_at - req.created_at
        req.sent_text, req.sent_tokens = end, len(req.output_ids)
        return StepOutput(req.request_id, tokens, text, logprobs, req.finished, req.finish_reason, self._usage(req),
                          queue_time)

    def _final_output(self, req: Request) -> GenerationOutput:
        return GenerationOutput(req.request_id, req.text, list(req.output_ids), req.finish_reason, self._usage(req),
                                req.logprobs)

    @staticmethod
    def _usage(req: Request) -> Usage:
        return Usage(len(req.prompt_ids), len(req.output_ids), req.cached_tokens or 0)


@dataclass
class EngineLoad:
    running: int  # requests holding pages
    waiting: int  # requests queued, preempted ones included
    pages_total: int
    pages_free: int  # in the allocator
    pages_cached: int  # held by the prefix cache
    pages_evictable: int  # of those, unlocked: free for the asking
    prompt_tokens_computed: int  # since start (cumulative, like the next)
    prompt_tokens_cached: int

    @property
    def pages_in_use(self) -> int:
        """Pages held by requests (a locked cached prefix counts; an evictable one does not)."""
        return self.pages_total - self.pages_free - self.pages_evictable


@dataclass(eq=False)
class _Launched:
    """A batch on its way through the device: its sampled tokens (``requests[j]``'s is row ``j``)
    and their copies to the host, complete once ``done`` has (``None``: nothing to wait for)."""

    batch: ScheduledBatch
    requests: list[Request] = field(default_factory=list)
    token_ids: torch.Tensor | None = None
    host: list = field(default_factory=list)
    done: torch.cuda.Event | None = None
    needs_history: bool = False  # a sampled request applies penalties: the next batch needs its token on the host
    decodes: set = field(default_factory=set)  # the sampled requests that compute one token


def _has_penalties(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """An int64 tensor of ``values`` on ``device``, copied without waiting (pinned) on CUDA."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=torch.int64, device=device)
    return torch.tensor(values, dtype=torch.int64).pin_memory().to(device, non_blocking=True)


def _start_to_host(*tensors: torch.Tensor | None) -> tuple[list, torch.cuda.Event | None]:
    """Queue copies of CUDA tensors to pinned host memory, without waiting: returns the host
    tensors (``None`` stays ``None``; tensors on the host are returned as they are) and an event
    recorded after the copies, ``None`` when nothing is on a CUDA device."""
    if not any(t is not None and t.device.type == "cuda" for t in tensors):
        return list(tensors), None
    host = []
    for t in tensors:
        if t is None:
            host.append(None)
            continue
        h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        h.copy_(t, non_blocking=True)
        host.append(h)
    done = torch.cuda.Event()
    done.record()
    return host, done
