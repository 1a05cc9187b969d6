"""Writing the API's answers: OpenAI's completion, chat and chunk objects, and the native
``/generate`` answer, from the increments of the engine client."""

from __future__ import annotations

import json
import time

from ..outputs import TokenLogprob, Usage
from ..tokenizer import Tokenizer


def sse(payload) -> bytes:
    """One server-sent event; ``[DONE]`` is sent as is."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def usage_dict(usages: list[Usage], prompts: int) -> dict:
    """OpenAI's usage of a request whose choices are ``usages``: ``prompts`` prompts of ``n``
    samples each, in that order; a prompt's tokens count once however many samples it had."""
    per_prompt = len(usages) // prompts
    firsts = usages[::per_prompt]
    prompt_tokens = sum(u.prompt_tokens for u in firsts)
    completion = sum(u.completion_tokens for u in usages)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": sum(u.cached_tokens for u in firsts)}}


class Formatter:
    """Builds the objects of one request: its id, its creation time and its model stay fixed."""

    def __init__(self, kind: str, request_id: str, model: str, tokenizer: Tokenizer | None):
        self.kind = kind
        self.id = request_id
        self.model = model
        self.created = int(time.time())
        self.tokenizer = tokenizer
        chat = kind == "chat"
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"

    # ---- whole answers -----------------------------------------------------------------------

    def completion(self, choices: list[dict], usage: dict) -> dict:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": choices,
                "usage": usage}

    def choice(self, index: int, text: str, logprobs, finish_reason: str | None, offset: int = 0) -> dict:
        if self.kind == "chat":
            return {"index": index, "message": {"role": "assistant", "content": text},
                    "logprobs": self.chat_logprobs(logprobs), "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": self.completion_logprobs(logprobs, offset),
                "finish_reason": finish_reason}

    # ---- streaming ---------------------------------------------------------------------------

    def chunk(self, choices: list[dict], include_usage: bool) -> dict:
        out = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model, "choices": choices}
        if include_usage:
            out["usage"] = None
        return out

    def delta(self, index: int, text: str, logprobs, finish_reason: str | None, first: bool, offset: int) -> dict:
        if self.kind == "chat":
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            return {"index": index, "delta": delta, "logprobs": self.chat_logprobs(logprobs),
                    "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": self.completion_logprobs(logprobs, offset),
                "finish_reason": finish_reason}

    def usage_chunk(self, usage: dict) -> dict:
        return {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model, "choices": [],
                "usage": usage}

    # ---- logprobs ----------------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"<{token_id}>"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def chat_logprobs(self, logprobs: list[TokenLogprob] | None) -> dict | None:
        if logprobs is None:
            return None

        def entry(token_id: int, lp: float) -> dict:
            text = self.token_text(token_id)
            return {"token": text, "logprob": lp, "bytes": list(text.encode())}

        return {"content": [{**entry(t.token_id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
                            for t in logprobs]}

    def completion_logprobs(self, logprobs: list[TokenLogprob] | None, offset: int) -> dict | None:
        """``offset``: characters of this choice's text before these tokens (``text_offset``)."""
        if logprobs is None:
            return None
        tokens = [self.token_text(t.token_id) for t in logprobs]
        offsets = []
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": [t.logprob for t in logprobs],
                "top_logprobs": [{self.token_text(i): lp for i, lp in t.top} for t in logprobs],
                "text_offset": offsets}


def generate_answer(request_id: str, text: str, token_ids: list[int], finish_reason: str | None,
                    usage: Usage | None, logprobs: list[TokenLogprob] | None) -> dict:
    """The native ``/generate`` answer (whole, or one increment of a stream)."""
    meta = {"finish_reason": finish_reason}
    if usage is not None:
        meta.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                    cached_tokens=usage.cached_tokens)
    if logprobs is not None:
        meta["output_token_logprobs"] = [[t.logprob, t.token_id] for t in logprobs]
    return {"id": request_id, "text": text, "output_ids": token_ids, "meta_info": meta}
