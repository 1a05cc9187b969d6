"""One generation request and everything the scheduler and the engine track about it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .sampling import SamplingParams


@dataclass(eq=False)
class Request:
    """A request's tokens, its KV pages and its output so far.

    The sequence is ``prompt_ids + output_ids``; K/V exist for its first ``num_computed`` tokens,
    in ``pages`` (page ``i`` holds tokens ``[i * page_size, (i + 1) * page_size)``). The first
    pages may belong to the radix cache, held by the lock on ``cache_node``. A step computes the
    tokens ``[num_computed, num_tokens)``, in chunks; a step that reaches the end samples a token.
    Preemption drops the pages (``num_computed = 0``) and keeps the output: the request later
    recomputes ``prompt_ids + output_ids`` as its prompt and carries on where it was.

    With overlap scheduling (see :class:`kernels.serve.engine.Engine`), a sampled token reaches
    ``output_ids`` a step after its batch was launched: meanwhile it counts in ``num_pending`` (and
    in ``num_tokens``), and the next batch reads it on the device as row ``pending_row`` of the
    sampled tokens of the last launched batch.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None  # a seeded request's own random stream

    pages: list[int] = field(default_factory=list)
    num_computed: int = 0
    cache_node: Any = None  # the radix-cache node this request holds locked, if any
    cached_tokens: int | None = None  # prompt tokens served from the cache at first admission
    created_at: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None  # first admission (time.monotonic)
    num_pending: int = 0  # tokens sampled on the device, not yet in output_ids
    pending_row: int = 0  # the newest one's row in its batch's sampled tokens

    # Output bookkeeping of the engine.
    detokenizer: Any = None
    text: str = ""  # generated text; a matched stop string is cut off
    logprobs: list | None = None  # one TokenLogprob per output token, when asked for
    finish_reason: str | None = None
    sent_tokens: int = 0  # output tokens (and logprobs) already handed out by step()
    sent_text: int = 0  # characters of text already handed out

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids) + self.num_pending

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def tokens(self, start: int, end: int) -> list[int]:
        """Tokens ``[start, end)`` of ``prompt_ids + output_ids``, without building the whole list
        (pending tokens, not known on the host yet, are left out)."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p : end - p]
        if end <= p:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[: end - p]
