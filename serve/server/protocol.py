"""Reading the API's requests: JSON bodies to validated jobs, every mistake an :class:`APIError`
naming the offending parameter (OpenAI's error form, HTTP 4xx).

Validation is written out rather than left to a schema library so that each message says what
was wrong in the client's own terms, and nothing a client sends can turn into a 500.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields

from ..sampling import SamplingParams
from ..tokenizer import Tokenizer

MAX_N = 16  # samples per prompt
MAX_PROMPTS = 64  # prompts in one /v1/completions request
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

# Request keys that map one to one onto SamplingParams (OpenAI's and the engine's extensions).
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty", "seed", "stop", "stop_token_ids", "ignore_eos")
_COMMON_KEYS = {"model", "n", "stream", "stream_options", "user", "max_tokens", *_SAMPLING_KEYS}
_COMPLETION_KEYS = _COMMON_KEYS | {"prompt", "logprobs", "echo", "best_of", "logit_bias", "suffix"}
_CHAT_KEYS = _COMMON_KEYS | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "logit_bias",
                             "tools", "tool_choice", "response_format", "parallel_tool_calls"}
_GENERATE_KEYS = {"text", "input_ids", "sampling_params", "stream", "model"}
_SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingParams))  # /generate's sampling_params keys
_ROLES = ("system", "developer", "user", "assistant", "tool")
_DEFAULT_CODES = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
                  503: "service_unavailable"}


class APIError(Exception):
    """An error answered in OpenAI's form ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or _DEFAULT_CODES.get(status)
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": _printable(self.message), "type": self.type, "param": _printable(self.param),
                          "code": self.code}}


def bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


@dataclass
class Job:
    """A validated generation request: ``n`` samples of each prompt."""

    kind: str  # "completion", "chat" or "generate"
    prompts: list[list[int]]
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # top logprobs per token wanted in the answer (None: no logprobs)


@dataclass
class ModelLimits:
    model_id: str
    context_length: int
    vocab_size: int
    max_total_tokens: int  # the KV pool: a request must fit in it alone


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad("the request body is nested too deeply") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise bad("the request body holds a number with too many digits") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {_type(body)}")
    if _SURROGATE_ESCAPE.search(raw):  # the only way a lone surrogate gets in: a \uD800-\uDFFF escape
        _check_unicode(body)
    return body


def parse_completion(body: dict, tokenizer: Tokenizer | None, limits: ModelLimits) -> Job:
    _check_keys(body, _COMPLETION_KEYS)
    _check_model(body, limits)
    _check_user(body)
    for key, allowed in (("echo", (None, False)), ("suffix", (None,)), ("logit_bias", (None, {}))):
        if body.get(key) not in allowed:
            raise bad(f"{key} is not supported by this server", key)
    prompts = _completion_prompts(body.get("prompt"), tokenizer, limits)
    n = _n(body)
    if body.get("best_of") not in (None, n):
        raise bad("best_of is not supported by this server (only best_of = n)", "best_of")
    logprobs = _optional_int(body, "logprobs", 0, 20)
    max_tokens = _optional_int(body, "max_tokens", 1, None)
    params = _sampling(body, COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, logprobs, limits)
    for ids in prompts:
        _check_length(ids, params.max_tokens, limits)
    return Job("completion", prompts, params, n, *_stream(body), logprobs)


def parse_chat(body: dict, tokenizer: Tokenizer | None, limits: ModelLimits) -> Job:
    _check_keys(body, _CHAT_KEYS)
    _check_model(body, limits)
    _check_user(body)
    if tokenizer is None or tokenizer.chat_template is None:
        raise bad("this model has no chat template: use /v1/completions")
    for key in ("tools", "tool_choice"):
        if body.get(key) not in (None, [], "none"):
            raise bad(f"{key} is not supported by this server", key)
    if body.get("response_format") not in (None, {"type": "text"}):
        raise bad("response_format is not supported by this server (only {\"type\": \"text\"})", "response_format")
    if body.get("logit_bias") not in (None, {}):
        raise bad("logit_bias is not supported by this server", "logit_bias")
    ids = tokenizer.apply_chat_template(_messages(body.get("messages")))
    n = _n(body)
    want_logprobs = _optional_bool(body, "logprobs") or False
    top = _optional_int(body, "top_logprobs", 0, 20)
    if top is not None and not want_logprobs:
        raise bad("top_logprobs needs logprobs: true", "top_logprobs")
    logprobs = (top or 0) if want_logprobs else None
    max_name = "max_completion_tokens"
    max_tokens = _optional_int(body, max_name, 1, None)
    if max_tokens is None:
        max_name = "max_tokens"
        max_tokens = _optional_int(body, max_name, 1, None)
    if max_tokens is None:  # as much as the context and the KV pool leave
        max_tokens = max(min(limits.context_length - len(ids), limits.max_total_tokens + 1 - len(ids)), 1)
    params = _sampling(body, max_tokens, logprobs, limits)
    _check_length(ids, params.max_tokens, limits, "messages", max_name)
    return Job("chat", [ids], params, n, *_stream(body), logprobs)


def parse_generate(body: dict, tokenizer: Tokenizer | None, limits: ModelLimits) -> Job:
    """The native endpoint: ``text`` or ``input_ids``, ``sampling_params`` as the engine takes them."""
    _check_keys(body, _GENERATE_KEYS)
    _check_model(body, limits)
    if ("text" in body) == ("input_ids" in body):
        raise bad("give exactly one of text and input_ids", "input_ids")
    prompt_name = "text" if "text" in body else "input_ids"
    if "text" in body:
        ids = _tokenize(body["text"], tokenizer, "text")
    else:
        ids = _token_ids(body["input_ids"], "input_ids", limits)
    sp = body.get("sampling_params")
    if sp is None:
        sp = {}
    if not isinstance(sp, dict):
        raise bad(f"sampling_params must be an object, got {_type(sp)}", "sampling_params")
    unknown = sorted(k for k in sp if k not in _SAMPLING_FIELDS)
    if unknown:
        raise bad(f"unrecognized sampling parameter(s): {', '.join(unknown)}; known: "
                  f"{', '.join(sorted(_SAMPLING_FIELDS))}", f"sampling_params.{unknown[0]}")
    try:
        params = SamplingParams(**sp)
    except (TypeError, ValueError) as e:
        raise bad(_json_terms(str(e)), f"sampling_params.{_param_of(e)}") from None
    _check_stop_ids(params, limits, "sampling_params.stop_token_ids")
    _check_length(ids, params.max_tokens, limits, prompt_name, "sampling_params.max_tokens")
    stream = _optional_bool(body, "stream") or False
    return Job("generate", [ids], params, 1, stream, False, params.logprobs)


# ---- pieces ------------------------------------------------------------------------------------


def _check_keys(body: dict, known: set[str]) -> None:
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise bad(f"unrecognized request argument(s): {', '.join(unknown)}", unknown[0])


def _check_user(body: dict) -> None:
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad(f"user must be a string, got {_type(user)}", "user")


def _check_model(body: dict, limits: ModelLimits) -> None:
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise bad(f"model must be a string, got {_type(model)}", "model")
    if model != limits.model_id:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {limits.model_id!r}",
                       param="model", code="model_not_found")


def _n(body: dict) -> int:
    n = _optional_int(body, "n", 1, MAX_N)
    return 1 if n is None else n


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _optional_bool(body, "stream") or False
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise bad("stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad("stream_options must be an object with the one key include_usage", "stream_options")
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise bad(f"stream_options.include_usage must be a boolean, got {_type(usage)}", "stream_options.include_usage")
    return stream, usage


def _sampling(body: dict, max_tokens: int, logprobs: int | None, limits: ModelLimits) -> SamplingParams:
    values = {k: body[k] for k in _SAMPLING_KEYS if body.get(k) is not None}
    try:
        params = SamplingParams(max_tokens=max_tokens, logprobs=logprobs, **values)
    except (TypeError, ValueError) as e:
        raise bad(_json_terms(str(e)), _param_of(e)) from None
    _check_stop_ids(params, limits, "stop_token_ids")
    return params


def _check_stop_ids(params: SamplingParams, limits: ModelLimits, name: str) -> None:
    """A stop token outside the vocabulary could never be generated: a mistake, not a no-op."""
    for i, t in enumerate(params.stop_token_ids):
        if t >= limits.vocab_size:
            raise bad(f"{name}[{i}] is {t}, outside the vocabulary [0, {limits.vocab_size})", name)


def _param_of(error: Exception) -> str:
    """SamplingParams' messages start with the parameter's name (``stop[2] must ...``)."""
    return str(error).split(" ", 1)[0].split("[", 1)[0]


# SamplingParams speaks Python ("must be a bool, got str"); a client wrote JSON.
_PY_TYPES = {"str": "string", "dict": "object", "list": "array", "tuple": "array", "bool": "boolean",
             "NoneType": "null"}
_PY_PHRASES = ((r"\ba str\b", "a string"), (r"\bof str\b", "of strings"), (r"\ban int\b", "an integer"),
               (r"\bof ints\b", "of integers"), (r"\ba bool\b", "a boolean"))


def _json_terms(message: str) -> str:
    message = re.sub(r"\bgot (\w+)$", lambda m: f"got {_PY_TYPES.get(m.group(1), m.group(1))}", message)
    for python, client in _PY_PHRASES:
        message = re.sub(python, client, message)
    return message


def _optional_int(body: dict, key: str, low: int, high: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{key} must be an integer, got {_type(value)}", key)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise bad(f"{key} must be {bound}, got {value}", key)
    return value


def _optional_bool(body: dict, key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad(f"{key} must be a boolean, got {_type(value)}", key)
    return value


def _completion_prompts(prompt, tokenizer: Tokenizer | None, limits: ModelLimits) -> list[list[int]]:
    """A string, a list of token ids, or a list of either (several prompts)."""
    if prompt is None:
        raise bad("prompt is required", "prompt")
    if isinstance(prompt, str):
        return [_tokenize(prompt, tokenizer, "prompt")]
    if not isinstance(prompt, list) or not prompt:
        raise bad("prompt must be a string, a list of token ids, or a non-empty list of those", "prompt")
    if not any(isinstance(p, (str, list)) for p in prompt):  # one prompt of token ids
        return [_token_ids(prompt, "prompt", limits)]
    if len(prompt) > MAX_PROMPTS:
        raise bad(f"prompt holds {len(prompt)} prompts; at most {MAX_PROMPTS} per request", "prompt")
    prompts = []
    for i, p in enumerate(prompt):
        name = f"prompt[{i}]"
        prompts.append(_tokenize(p, tokenizer, name) if isinstance(p, str) else _token_ids(p, name, limits))
    return prompts


def _tokenize(text, tokenizer: Tokenizer | None, name: str) -> list[int]:
    if not isinstance(text, str):
        raise bad(f"{name} must be a string, got {_type(text)}", name)
    if tokenizer is None:
        raise bad("this model has no tokenizer: send token ids", name)
    ids = tokenizer.encode(text)
    if not ids:
        raise bad(f"{name} is empty: it must hold at least one token", name)
    return ids


def _token_ids(ids, name: str, limits: ModelLimits) -> list[int]:
    if not isinstance(ids, list) or not ids:
        raise bad(f"{name} must be a non-empty list of token ids", name)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int):
            raise bad(f"{name} must hold only integer token ids, found {_type(t)}", name)
        if not 0 <= t < limits.vocab_size:
            raise bad(f"{name} holds token id {t}, outside the vocabulary [0, {limits.vocab_size})", name)
    return ids


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{name} must be an object, got {_type(m)}", name)
        role = m.get("role")
        if role is None:
            raise bad(f"{name}.role is required (one of {', '.join(_ROLES)})", f"{name}.role")
        if role not in _ROLES:
            raise bad(f"{name}.role must be one of {', '.join(_ROLES)}, got {role!r}", f"{name}.role")
        out.append({"role": role, "content": _content(m.get("content"), f"{name}.content")})
    return out


def _content(content, name: str) -> str:
    """A string, or a list of text parts (the only kind this server reads)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad(f"{name}[{j}] must be a {{\"type\": \"text\", \"text\": str}} part (only text is "
                          "supported)", f"{name}[{j}]")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"{name} must be a string or a list of text parts, got {_type(content)}", name)


def _check_length(ids: list[int], max_tokens: int, limits: ModelLimits, prompt_name: str = "prompt",
                  max_name: str = "max_tokens") -> None:
    """``prompt_name`` and ``max_name``: the request's own names of the prompt and of max_tokens."""
    if len(ids) >= limits.context_length:
        raise bad(f"{prompt_name} is {len(ids)} tokens long; the model's context length is {limits.context_length} "
                  "(with at least one token left to generate)", prompt_name)
    if len(ids) + max_tokens > limits.context_length:
        raise bad(f"{prompt_name} ({len(ids)} tokens) + {max_name} ({max_tokens}) exceeds the model's context "
                  f"length of {limits.context_length} tokens", max_name)
    # The last token's K/V are never computed (as the scheduler counts).
    if len(ids) + max_tokens - 1 > limits.max_total_tokens:
        raise bad(f"{prompt_name} ({len(ids)} tokens) + {max_name} ({max_tokens}) exceeds the KV pool of "
                  f"{limits.max_total_tokens} tokens: the request could never fit", max_name)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_unicode(body: dict) -> None:
    """Reject a string (or key) holding a lone UTF-16 surrogate: JSON lets ``"\\ud800"`` through,
    but it is no character, and neither the tokenizer nor a UTF-8 answer can take it."""
    stack = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str) and not _is_unicode(value):
            raise bad(f"{path} holds an unpaired UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair): "
                      "not valid Unicode", path)
        if isinstance(value, dict):
            for k, v in value.items():
                if not _is_unicode(k):
                    raise bad(f"a key of {path or 'the request body'} ({k!r}) holds an unpaired "
                              "UTF-16 surrogate: not valid Unicode", path or None)
                stack.append((v, f"{path}.{k}" if path else k))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str | None) -> str | None:
    """``text`` with any lone surrogate escaped, so that the answer can be UTF-8."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)
