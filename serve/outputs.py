"""What the engine hands back: per-step increments and whole generations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose K/V came from the prefix cache


@dataclass
class TokenLogprob:
    """The logprob of a generated token and of the most likely alternatives at its position
    (under the distribution :class:`kernels.serve.sampling.SampleOutput` describes)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), most likely first; as many as asked for


@dataclass
class StepOutput:
    """What one :meth:`Engine.step` produced for one request: the new tokens and text since the
    last output, and whether the request is done. While stop strings may still match, the text
    that could begin one is held back, so the increments concatenate to the final text."""

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None
    finished: bool
    finish_reason: str | None  # "stop", "length" or "abort" once finished
    usage: Usage
    # Seconds from add_request to the first admission; only on the request's first output.
    queue_time: float | None = None


@dataclass
class GenerationOutput:
    """A finished request.

    ``token_ids`` are all generated tokens, a matched stop token or end-of-sequence token included;
    ``text`` is their text without it, and cut before a matched stop string (as OpenAI does).
    """

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage
    logprobs: list[TokenLogprob] | None
