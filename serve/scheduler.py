"""Continuous batching over the paged KV pool, with a radix prefix cache.

Each step runs every running request that has work, in one :class:`ForwardBatch`: a decoding
request computes its one new token, a prefilling one the next chunk of its prompt: the prompt
tokens of a step stay within a budget, and each decode row rides on top of it. Waiting requests are
admitted into what budget and pages remain,
longest cached prefix first while the queue is short, first come first served when it is long.
When pages run out, unlocked cached prefixes are evicted, then the newest running requests are
preempted: their pages go (computed pages into the cache), and they recompute later.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from .forward_batch import ForwardBatch
from .memory import KVPool, OutOfPagesError, RadixCache
from .request import Request

# A waiting request that shares at least this many more tokens with a request still prefilling
# than it finds in the cache waits a step: the other one's prefix will be cached by then.
SHARED_PREFIX_WAIT = 32


@dataclass
class ScheduledBatch:
    """One step's work: ``requests[i]`` computes ``num_new[i]`` tokens, the rows of ``forward``."""

    requests: list[Request]
    num_new: list[int]
    forward: ForwardBatch
    sample_rows: list[int]  # rows whose sequence reaches its end this step: they yield a token
    # Some input id is a placeholder -(j + 1): the token sampled for row j of the sampled tokens of
    # the batch launched before this one, still on the device (overlap scheduling).
    has_placeholders: bool = False
    # Every input id is a placeholder and row i's is sampled row i (a steady decode): the input ids
    # are the first rows of those sampled tokens as they are.
    placeholders_in_order: bool = False


@dataclass
class SchedulerStats:
    prompt_tokens_computed: int = 0  # prompt positions computed (again after a preemption)
    prompt_tokens_cached: int = 0  # prompt tokens served from the prefix cache at first admission
    tokens_computed: int = 0  # every position computed, prompt and output
    preemptions: int = 0
    steps: int = 0


class Scheduler:
    """Decides what runs each step and owns the requests' pages.

    Parameters
    ----------
    pool : KVPool
        The pages, shared with the radix cache.
    max_context : int
        The model's context length: prompt plus ``max_tokens`` may not exceed it.
    max_batch_tokens : int
        Prompt tokens one step computes at most (its prefill chunks); each decoding request's
        one token rides on top (at most ``max_running`` of them).
    max_running : int
        Most requests running at once.
    enable_prefix_cache : bool
        Reuse the K/V of cached prefixes (radix cache).
    lpm_queue_limit : int
        Order the waiting queue by longest cached prefix while it holds at most this many
        requests; first come first served beyond (the match costs a tree walk per request).
    """

    def __init__(self, pool: KVPool, *, max_context: int, max_batch_tokens: int = 2048, max_running: int = 256,
                 enable_prefix_cache: bool = True, lpm_queue_limit: int = 128):
        for name, value in (("max_context", max_context), ("max_batch_tokens", max_batch_tokens),
                            ("max_running", max_running)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.pool = pool
        self.page_size = pool.page_size
        self.max_context = max_context
        self.max_batch_tokens = max_batch_tokens
        self.max_running = max_running
        self.lpm_queue_limit = lpm_queue_limit
        self.cache = RadixCache(pool.page_size, pool.allocator) if enable_prefix_cache else None
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order: the newest is preempted first
        self.stats = SchedulerStats()
        self._device = pool.kv_caches[0][0].device

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Raise ``ValueError`` if a request of this size could never run, even alone."""
        total = num_prompt_tokens + max_tokens
        if total > self.max_context:
            raise ValueError(
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total} exceeds the model's "
                f"context length of {self.max_context} tokens"
            )
        # The last token's K/V are never computed.
        if total - 1 > self.pool.max_tokens:
            raise ValueError(
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total} exceeds the KV pool "
                f"of {self.pool.max_tokens} tokens: the request could never fit"
            )

    def add(self, req: Request) -> None:
        """Queue ``req``; ``ValueError`` (see :meth:`check_fits`) if it can never run."""
        if not req.prompt_ids:
            raise ValueError("prompt must hold at least one token")
        self.check_fits(len(req.prompt_ids), req.params.max_tokens)
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        """Pick this step's work and build its batch; ``None`` when nothing is left to run, or
        nothing can run before the tokens of the batch in flight are known (overlap scheduling)."""
        # Decode rows ride on top of the budget: a prefill step is compute-bound and its few decode
        # rows cost little, while taking them off the chunk leaves a small remainder for one more step.
        prefill_budget = self.max_batch_tokens
        work: list[tuple[Request, int]] = []
        queue = deque(self.running)
        self.running = []
        preempted = False
        while queue:
            req = queue.popleft()
            self.running.append(req)
            left = req.num_tokens - req.num_computed
            if req.num_pending and len(req.output_ids) + req.num_pending >= req.params.max_tokens:
                continue  # its pending token is its last: nothing more to compute
            n = min(left, prefill_budget) if left > 1 else 1
            if n == 0:
                continue
            # Out of pages: preempt the newest request not yet given work, this one last.
            while not self._grow(req, n):
                preempted = True
                victim = queue.pop() if queue else self.running.pop()
                self._preempt(victim)
                if victim is req:
                    break
            else:
                work.append((req, n))
                if left > 1:
                    prefill_budget -= n
        # Admit nothing in a step that had to preempt: memory is short already.
        if not preempted:
            self._admit(work, prefill_budget)
        if not work:
            if any(r.num_pending for r in self.running) or any(r.num_pending for r in self.waiting):
                return None  # waiting on the tokens of the batch in flight
            if self.running or self.waiting:
                raise RuntimeError("scheduler made no progress with requests pending")
            return None
        self.stats.steps += 1
        for req, n in work:
            self.stats.tokens_computed += n
            self.stats.prompt_tokens_computed += max(0, min(req.num_computed + n, len(req.prompt_ids)) - req.num_computed)
        return self._build(work)

    def update(self, batch: ScheduledBatch, token_ids: list[int]) -> None:
        """Record a step's results: ``token_ids[j]`` is the token sampled for ``sample_rows[j]``.
        The same as :meth:`commit` then :meth:`add_tokens`."""
        self.commit(batch)
        self.add_tokens(batch, token_ids)

    def commit(self, batch: ScheduledBatch) -> None:
        """Record a launched batch's work as done (the device does it in stream order before any
        later batch reads it); each sampled row's token becomes pending until :meth:`add_tokens`."""
        for j, row in enumerate(batch.sample_rows):
            req = batch.requests[row]
            req.num_pending += 1
            req.pending_row = j
        for req, n in zip(batch.requests, batch.num_new):
            req.num_computed += n
            if n > 1 and self.cache is not None:
                # Cache the prefill so far: requests waiting on this prefix can use it next step.
                self._cache_computed(req)

    def add_tokens(self, batch: ScheduledBatch, token_ids: list[int]) -> list[int]:
        """Append the sampled tokens of a committed batch to their requests, skipping finished
        ones (a request finished while the batch was in flight: its token is dropped). Returns
        the indices ``j`` of the tokens appended."""
        kept = []
        for j, (row, token) in enumerate(zip(batch.sample_rows, token_ids)):
            req = batch.requests[row]
            req.num_pending -= 1
            if not req.finished:
                req.output_ids.append(token)
                kept.append(j)
        return kept

    def rollback_decode(self, req: Request) -> None:
        """Forget the one token ``req`` computes in the batch in flight (it finished meanwhile), so
        that its pages are released as if that batch had not run for it."""
        req.num_computed -= 1
        self.stats.tokens_computed -= 1
        if req.num_computed < len(req.prompt_ids):
            self.stats.prompt_tokens_computed -= 1

    def finish(self, req: Request) -> None:
        """Drop a finished or aborted request, waiting or running, and release its pages."""
        if req in self.running:
            self.running.remove(req)
            self._release(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def _admit(self, work: list[tuple[Request, int]], budget: int) -> None:
        if self.cache is not None and len(self.waiting) <= self.lpm_queue_limit:
            order = sorted(self.waiting, key=lambda r: -self.cache.match_prefix(r.tokens(0, r.num_tokens)).num_tokens)
        else:
            order = list(self.waiting)
        prefilling = [r for r in self.running if r.num_tokens - r.num_computed > 1]
        for req in order:
            if budget <= 0 or len(self.running) >= self.max_running:
                break
            if req.num_pending:
                continue  # preempted with a token in flight: its sequence is not known yet
            ids = req.tokens(0, req.num_tokens)
            if self.cache is not None:
                match = self.cache.match_prefix(ids)
                if any(self._shared(ids, other) >= match.num_tokens + SHARED_PREFIX_WAIT for other in prefilling):
                    continue
                self.cache.lock(match.node)
                req.pages, req.num_computed, req.cache_node = list(match.pages), match.num_tokens, match.node
            n = min(req.num_tokens - req.num_computed, budget)
            if not self._grow(req, n):
                # Take a smaller chunk into what is free, if anything is.
                n = min(n, (len(req.pages) + self.pool.num_free_pages) * self.page_size - req.num_computed)
                if n <= 0 or not self._grow(req, n):
                    self._release(req)
                    break
            if req.cached_tokens is None:
                req.cached_tokens = req.num_computed
                req.admitted_at = time.monotonic()
                self.stats.prompt_tokens_cached += req.num_computed
            self.waiting.remove(req)
            self.running.append(req)
            prefilling.append(req)
            work.append((req, n))
            budget -= n

    def _shared(self, ids: list[int], other: Request) -> int:
        # Whole pages of ids that other's prefill will cache.
        ps = self.page_size
        end = min(len(ids), other.num_tokens) // ps * ps
        n = 0
        while n < end and ids[n : n + ps] == other.tokens(n, n + ps):
            n += ps
        return n

    def _grow(self, req: Request, n: int) -> bool:
        """Give ``req`` pages for ``n`` more tokens, evicting cached prefixes if needed."""
        need = -(-(req.num_computed + n) // self.page_size) - len(req.pages)
        if need <= 0:
            return True
        short = need - self.pool.num_free_pages
        if short > 0 and self.cache is not None:
            self.cache.evict(short)
        try:
            req.pages += self.pool.alloc(need)
        except OutOfPagesError:
            return False
        return True

    def _preempt(self, req: Request) -> None:
        self._release(req)
        self.waiting.appendleft(req)
        self.stats.preemptions += 1

    def _release(self, req: Request) -> None:
        """Return ``req``'s pages: full computed pages to the cache (if on), the rest to the pool."""
        keep = 0
        if self.cache is not None:
            keep = self._cache_computed(req)
            self.cache.unlock(req.cache_node)
        self.pool.free(req.pages[keep:])
        req.pages, req.num_computed, req.cache_node = [], 0, None

    def _cache_computed(self, req: Request) -> int:
        """Insert ``req``'s full computed pages into the cache and move its lock to their end;
        ``req`` switches to the cache's copy of any page cached meanwhile. Returns the page count."""
        num = req.num_computed // self.page_size
        result = self.cache.insert(req.tokens(0, num * self.page_size), req.pages[:num])
        duplicates = [p for p, q in zip(req.pages, result.pages) if p != q]
        req.pages[:num] = result.pages
        self.cache.lock(result.node)
        self.cache.unlock(req.cache_node)
        req.cache_node = result.node
        self.pool.free(duplicates)
        return num

    def _build(self, work: list[tuple[Request, int]]) -> ScheduledBatch:
        ps = self.page_size
        b = len(work)
        requests, num_new, ids, starts, num_pages, pages, sample_rows = [], [], [], [], [], [], []
        placeholders, in_order = False, True
        for i, (req, n) in enumerate(work):
            start = req.num_computed
            requests.append(req)
            num_new.append(n)
            if req.num_pending:  # a decode whose input is the last batch's token, on the device
                ids.append(-1 - req.pending_row)
                placeholders = True
                in_order &= req.pending_row == i
            else:
                ids += req.tokens(start, start + n)
                in_order = False
            starts.append(start)
            num_pages.append(len(req.pages))
            pages += req.pages
            if start + n == req.num_tokens:
                sample_rows.append(i)
        t, width = len(ids), max(num_pages)
        # Every index goes into one of two host buffers (int64, int32), each copied to the device
        # once, from pinned memory so that the copies do not wait; the tensors are views of them.
        o_ids, o_pos, o_slot, o_logits, n64 = _offsets(t, t, t, b)
        o_pt, o_qo, o_kv, n32 = _offsets(b * width, b + 1, b)
        pin = self._device.type == "cuda"
        host64 = torch.empty(n64, dtype=torch.int64, pin_memory=pin)
        host32 = torch.empty(n32, dtype=torch.int32, pin_memory=pin)
        a64, a32 = host64.numpy(), host32.numpy()

        a64[o_ids : o_ids + t] = ids
        start = np.array(starts, dtype=np.int64)
        qo = a32[o_qo : o_qo + b + 1]
        qo[0] = 0
        if t == b:  # decode only: one token per sequence
            qo[1:] = np.arange(1, b + 1)
            rows, positions = np.arange(b), start
            a32[o_kv : o_kv + b] = start + 1
        else:
            new = np.array(num_new, dtype=np.int64)
            np.cumsum(new, out=qo[1:])
            rows = np.repeat(np.arange(b), new)
            positions = start[rows] + (np.arange(t) - qo[:-1][rows])
            a32[o_kv : o_kv + b] = start + new
        a64[o_pos : o_pos + t] = positions
        a64[o_logits : o_logits + b] = qo[1:] - 1
        page_table = a32[o_pt : o_pt + b * width].reshape(b, width)
        counts = np.array(num_pages, dtype=np.int64)
        if (counts == width).all():
            page_table.reshape(-1)[:] = pages
        else:  # rows padded with page 0
            page_table.fill(0)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            page_table[np.repeat(np.arange(b), counts), np.arange(len(pages)) - first] = pages
        a64[o_slot : o_slot + t] = page_table[rows, positions // ps] * np.int64(ps) + positions % ps

        dev64 = host64.to(self._device, non_blocking=True)
        dev32 = host32.to(self._device, non_blocking=True)
        forward = ForwardBatch(
            input_ids=dev64[o_ids : o_ids + t],
            positions=dev64[o_pos : o_pos + t],
            slot_mapping=dev64[o_slot : o_slot + t],
            page_table=dev32[o_pt : o_pt + b * width].view(b, width),
            qo_indptr=dev32[o_qo : o_qo + b + 1],
            kv_lens=dev32[o_kv : o_kv + b],
            logits_indices=dev64[o_logits : o_logits + b],
            is_decode=t == b,
        )
        return ScheduledBatch(requests, num_new, forward, sample_rows, placeholders, placeholders and in_order)


def _offsets(*sizes: int) -> tuple[int, ...]:
    """Start of each of ``sizes`` in one buffer, each aligned to 16 elements, then the total."""
    starts, end = [], 0
    for n in sizes:
        starts.append(end)
        end += -(-n // 16) * 16
    return (*starts, max(end, 1))
