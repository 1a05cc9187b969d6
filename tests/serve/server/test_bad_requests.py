"""Issue 7, acceptance 2: bad requests get the right 4xx in OpenAI's error form, never a 500, and
the server still answers a good request afterwards.

One table of malformed, mistyped, out-of-range and unsupported requests across /v1/completions,
/v1/chat/completions and /generate (SmolLM2: context 8192 tokens, vocabulary 49152); then the
routes' 404/405, and on a server of its own the API key (401), the body limit (413, with a
Content-Length and chunked) and the queue limit (503).
"""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import pytest

C, CHAT, GEN = "/v1/completions", "/v1/chat/completions", "/generate"
MSG = [{"role": "user", "content": "hi"}]
CONTEXT, VOCAB = 8192, 49152


def case(id, path, body, status, param, hint=None):
    """``hint``: a piece of the message (case-insensitive); by default the param's last name."""
    return pytest.param(path, body, status, param, hint, id=id)


CASES = [
    # ---- the body itself
    case("malformed-json", C, b'{"prompt": "hi",', 400, None, "not valid JSON"),
    case("empty-body", C, b"", 400, None, "not valid JSON"),
    case("json-array", C, b'[{"prompt": "hi"}]', 400, None, "must be a JSON object, got array"),
    case("json-number", CHAT, b"42", 400, None, "must be a JSON object, got int"),
    case("json-string", GEN, b'"hi"', 400, None, "must be a JSON object, got string"),
    case("non-utf8", C, b'{"prompt": "caf\xe9"}', 400, None, "not valid JSON"),
    case("nested-too-deep", C, b"[" * 100_000 + b"]" * 100_000, 400, None, "nested too deeply"),
    case("int-too-many-digits", C, b'{"prompt": "hi", "max_tokens": 1' + b"0" * 5000 + b"}", 400, None,
         "too many digits"),
    case("lone-surrogate-prompt", C, b'{"prompt": "hi \\ud800", "max_tokens": 1}', 400, "prompt", "surrogate"),
    case("lone-surrogate-content", CHAT, b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400,
         "messages[0].content", "surrogate"),
    case("lone-surrogate-key", C, b'{"prompt": "hi", "\\ud800": 1}', 400, None, "surrogate"),
    case("lone-surrogate-stop", GEN, b'{"text": "hi", "sampling_params": {"stop": ["\\ud83d"]}}', 400,
         "sampling_params.stop[0]", "surrogate"),
    # ---- missing
    case("no-prompt", C, {"max_tokens": 2}, 400, "prompt"),
    case("no-messages", CHAT, {"max_tokens": 2}, 400, "messages"),
    # ---- wrong types
    case("temperature-string", C, {"prompt": "hi", "temperature": "hot"}, 400, "temperature", "got string"),
    case("temperature-nan", C, b'{"prompt": "hi", "temperature": NaN}', 400, "temperature", "finite"),
    case("temperature-negative", CHAT, {"messages": MSG, "temperature": -0.5}, 400, "temperature"),
    case("max-tokens-float", C, {"prompt": "hi", "max_tokens": 1.5}, 400, "max_tokens", "integer"),
    case("max-tokens-bool", C, {"prompt": "hi", "max_tokens": True}, 400, "max_tokens", "got boolean"),
    case("max-tokens-string-chat", CHAT, {"messages": MSG, "max_tokens": "10"}, 400, "max_tokens"),
    case("stream-string", C, {"prompt": "hi", "stream": "yes"}, 400, "stream", "boolean"),
    case("n-string", CHAT, {"messages": MSG, "n": "2"}, 400, "n", "integer"),
    case("chat-logprobs-int", CHAT, {"messages": MSG, "logprobs": 1}, 400, "logprobs", "boolean"),
    case("completion-logprobs-bool", C, {"prompt": "hi", "logprobs": True}, 400, "logprobs", "integer"),
    case("completion-logprobs-21", C, {"prompt": "hi", "logprobs": 21}, 400, "logprobs", "[0, 20]"),
    case("top-logprobs-without-logprobs", CHAT, {"messages": MSG, "top_logprobs": 2}, 400, "top_logprobs"),
    case("stop-int", C, {"prompt": "hi", "stop": 5}, 400, "stop", "got int"),
    case("stop-list-with-int", CHAT, {"messages": MSG, "stop": ["a", 5]}, 400, "stop", "stop[1]"),
    case("stop-empty-string", C, {"prompt": "hi", "stop": ["a", ""]}, 400, "stop", "empty"),
    case("stop-17", C, {"prompt": "hi", "stop": [f"s{i}" for i in range(17)]}, 400, "stop", "16"),
    case("stop-token-ids-string", C, {"prompt": "hi", "stop_token_ids": "2"}, 400, "stop_token_ids"),
    case("stop-token-id-vocab", CHAT, {"messages": MSG, "stop_token_ids": [2, VOCAB]}, 400, "stop_token_ids",
         "vocabulary"),
    case("stop-token-id-negative", C, {"prompt": "hi", "stop_token_ids": [-3]}, 400, "stop_token_ids"),
    case("stop-token-id-vocab-generate", GEN, {"text": "hi", "sampling_params": {"stop_token_ids": [10**12]}}, 400,
         "sampling_params.stop_token_ids", "vocabulary"),
    case("seed-negative", C, {"prompt": "hi", "seed": -1}, 400, "seed"),
    case("seed-2**64", CHAT, {"messages": MSG, "seed": 2**64}, 400, "seed"),
    case("top-p-0", C, {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    case("top-p-1.5", CHAT, {"messages": MSG, "top_p": 1.5}, 400, "top_p"),
    case("presence-penalty-3", C, {"prompt": "hi", "presence_penalty": 3}, 400, "presence_penalty"),
    case("frequency-penalty-string", CHAT, {"messages": MSG, "frequency_penalty": "x"}, 400, "frequency_penalty"),
    case("min-p-2", C, {"prompt": "hi", "min_p": 2}, 400, "min_p"),
    case("top-k--2", C, {"prompt": "hi", "top_k": -2}, 400, "top_k"),
    case("top-k-float", CHAT, {"messages": MSG, "top_k": 1.5}, 400, "top_k"),
    case("repetition-penalty-0", C, {"prompt": "hi", "repetition_penalty": 0}, 400, "repetition_penalty"),
    case("ignore-eos-string", C, {"prompt": "hi", "ignore_eos": "yes"}, 400, "ignore_eos"),
    case("user-int", CHAT, {"messages": MSG, "user": 5}, 400, "user"),
    case("model-int", C, {"prompt": "hi", "model": 5}, 400, "model"),
    # ---- max_tokens and the context (8192 tokens)
    case("max-tokens-negative", C, {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens", ">= 1"),
    case("max-tokens-zero", CHAT, {"messages": MSG, "max_tokens": 0}, 400, "max_tokens", ">= 1"),
    case("max-tokens-huge", C, {"prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens", "context length"),
    case("max-tokens-huge-chat", CHAT, {"messages": MSG, "max_tokens": 10**9}, 400, "max_tokens"),
    case("max-completion-tokens-huge", CHAT, {"messages": MSG, "max_completion_tokens": 10**9}, 400,
         "max_completion_tokens"),
    case("max-tokens-huge-generate", GEN, {"text": "hi", "sampling_params": {"max_tokens": 10**9}}, 400,
         "sampling_params.max_tokens"),
    case("prompt-ids-fill-context", C, {"prompt": list(range(CONTEXT)), "max_tokens": 1}, 400, "prompt",
         "context length"),
    case("prompt-text-over-context", C, {"prompt": " hello" * 9000, "max_tokens": 1}, 400, "prompt",
         "context length"),
    case("messages-over-context", CHAT, {"messages": [{"role": "user", "content": " hello" * 8200}]}, 400,
         "messages", "context length"),
    case("input-ids-over-context", GEN, {"input_ids": [1] * CONTEXT}, 400, "input_ids", "context length"),
    case("prompt-plus-max-tokens", C, {"prompt": [1] * 8000, "max_tokens": 193}, 400, "max_tokens",
         "8000 tokens"),
    # ---- token ids
    case("token-id-vocab", C, {"prompt": [1, VOCAB]}, 400, "prompt", str(VOCAB)),
    case("token-id-negative", C, {"prompt": [-1, 2]}, 400, "prompt", "-1"),
    case("token-id-float", C, {"prompt": [1.5, 2]}, 400, "prompt", "integer token ids, found float"),
    case("token-id-bool", GEN, {"input_ids": [1, True]}, 400, "input_ids", "found boolean"),
    case("second-prompt-bad-id", C, {"prompt": [[1, 2], [10**6]]}, 400, "prompt[1]", "vocabulary"),
    case("input-ids-vocab", GEN, {"input_ids": [VOCAB + 7]}, 400, "input_ids", "vocabulary"),
    case("too-many-prompts", C, {"prompt": ["hi"] * 65}, 400, "prompt", "64"),
    # ---- empty prompts
    case("prompt-empty-string", C, {"prompt": ""}, 400, "prompt", "empty"),
    case("prompt-empty-list", C, {"prompt": []}, 400, "prompt"),
    case("prompt-list-of-empty", C, {"prompt": [[]]}, 400, "prompt[0]"),
    case("prompt-dict", C, {"prompt": {"text": "hi"}}, 400, "prompt"),
    case("generate-text-empty", GEN, {"text": ""}, 400, "text", "empty"),
    # ---- unknown model
    case("unknown-model", C, {"model": "gpt-4", "prompt": "hi"}, 404, "model", "gpt-4"),
    case("unknown-model-chat", CHAT, {"model": "gpt-4o", "messages": MSG}, 404, "model", "gpt-4o"),
    case("unknown-model-generate", GEN, {"model": "llama", "text": "hi"}, 404, "model", "llama"),
    # ---- n
    case("n-0", C, {"prompt": "hi", "n": 0}, 400, "n", "[1, 16]"),
    case("n-17", CHAT, {"messages": MSG, "n": 17}, 400, "n", "[1, 16]"),
    # ---- messages
    case("messages-empty", CHAT, {"messages": []}, 400, "messages", "non-empty"),
    case("messages-string", CHAT, {"messages": "hi"}, 400, "messages"),
    case("message-string", CHAT, {"messages": ["hi"]}, 400, "messages[0]", "object"),
    case("message-no-role", CHAT, {"messages": MSG + [{"content": "hi"}]}, 400, "messages[1].role", "required"),
    case("message-bad-role", CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role",
         "robot"),
    case("message-content-int", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content",
         "got int"),
    case("message-no-content", CHAT, {"messages": [{"role": "user"}]}, 400, "messages[0].content", "got null"),
    case("message-image-part", CHAT,
         {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                      {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
         400, "messages[0].content[1]", "only text"),
    # ---- unknown and unsupported arguments
    case("unknown-key", C, {"prompt": "hi", "foo": 1}, 400, "foo"),
    case("unknown-key-chat", CHAT, {"messages": MSG, "prompt": "hi"}, 400, "prompt", "unrecognized"),
    case("echo", C, {"prompt": "hi", "echo": True}, 400, "echo", "not supported"),
    case("suffix", C, {"prompt": "hi", "suffix": "!"}, 400, "suffix", "not supported"),
    case("best-of", C, {"prompt": "hi", "best_of": 3}, 400, "best_of"),
    case("logit-bias", C, {"prompt": "hi", "logit_bias": {"50256": -100}}, 400, "logit_bias", "not supported"),
    case("logit-bias-chat", CHAT, {"messages": MSG, "logit_bias": {"1": 5}}, 400, "logit_bias"),
    case("tools", CHAT, {"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools",
         "not supported"),
    case("tool-choice", CHAT, {"messages": MSG, "tool_choice": "required"}, 400, "tool_choice"),
    case("response-format-json", CHAT, {"messages": MSG, "response_format": {"type": "json_object"}}, 400,
         "response_format"),
    case("stream-options-without-stream", C, {"prompt": "hi", "stream_options": {"include_usage": True}}, 400,
         "stream_options", "stream: true"),
    case("stream-options-bad-key", CHAT, {"messages": MSG, "stream": True, "stream_options": {"x": 1}}, 400,
         "stream_options"),
    case("include-usage-int", C, {"prompt": "hi", "stream": True, "stream_options": {"include_usage": 1}}, 400,
         "stream_options.include_usage"),
    # ---- /generate
    case("generate-text-and-ids", GEN, {"text": "hi", "input_ids": [1, 2]}, 400, "input_ids", "exactly one"),
    case("generate-neither", GEN, {"sampling_params": {"max_tokens": 1}}, 400, "input_ids", "exactly one"),
    case("generate-text-int", GEN, {"text": 5}, 400, "text", "string"),
    case("generate-ids-string", GEN, {"input_ids": "1 2 3"}, 400, "input_ids"),
    case("generate-sampling-list", GEN, {"text": "hi", "sampling_params": []}, 400, "sampling_params",
         "got array"),
    case("generate-sampling-string", GEN, {"text": "hi", "sampling_params": "greedy"}, 400, "sampling_params",
         "object"),
    case("generate-sampling-zero", GEN, {"text": "hi", "sampling_params": 0}, 400, "sampling_params", "object"),
    case("generate-sampling-unknown", GEN, {"text": "hi", "sampling_params": {"foo": 1}}, 400, "sampling_params.foo",
         "unrecognized"),
    case("generate-sampling-type", GEN, {"text": "hi", "sampling_params": {"temperature": "hot"}}, 400,
         "sampling_params.temperature", "got string"),
    case("generate-stream-string", GEN, {"text": "hi", "stream": "yes"}, 400, "stream"),
    case("generate-unknown-key", GEN, {"text": "hi", "max_tokens": 4}, 400, "max_tokens", "unrecognized"),
]


def check_error(status, body, want_status, want_param=None, hint=None, code=None):
    """OpenAI's form: exactly message, type, param, code; a helpful message."""
    assert status == want_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert err["type"] == ("invalid_request_error" if want_status < 500 else "server_error"), err
    assert err["param"] == want_param, err
    assert err["code"] is None or isinstance(err["code"], str), err
    if code is not None:
        assert err["code"] == code, err
    if hint is None and want_param is not None:
        hint = want_param.rsplit(".", 1)[-1].split("[", 1)[0]
    if hint is not None:
        assert hint.lower() in err["message"].lower(), err
    assert "Traceback" not in err["message"] and "internal" not in err["message"], err
    return err


@pytest.mark.parametrize("path, body, status, param, hint", CASES)
def test_bad_request(server, path, body, status, param, hint):
    got_status, got = server.request("POST", path, body, timeout=30)
    err = check_error(got_status, got, status, param, hint, "model_not_found" if status == 404 else None)
    if param is not None:
        assert err["code"] in ("invalid_value", "model_not_found"), err


def test_table_is_large():
    assert len(CASES) >= 40
    assert {p.values[0] for p in CASES} == {C, CHAT, GEN}


def test_good_request_after_bad_ones(server):
    for p in CASES[:30]:  # again, so that this test stands alone too
        path, body, status = p.values[:3]
        assert server.request("POST", path, body, timeout=30)[0] == status
    status, r = server.request("POST", C, {"prompt": "The capital of France is", "max_tokens": 4,
                                           "temperature": 0})
    assert status == 200, r
    assert r["usage"]["completion_tokens"] >= 1 and r["choices"][0]["finish_reason"] in ("length", "stop")
    status, r = server.request("POST", CHAT, {"messages": MSG, "max_tokens": 2})
    assert status == 200 and r["choices"][0]["message"]["role"] == "assistant", r
    _wait_idle(server)
    assert "unexpected error" not in server.log()  # no 500 was logged


def test_unknown_route_and_wrong_method(server):
    for method, path in (("POST", "/v1/nothing"), ("GET", "/v2/models"), ("POST", "/v1/completions/x")):
        status, body = server.request(method, path, {} if method == "POST" else None)
        check_error(status, body, 404, None, path, "not_found")
    for path in (C, CHAT, GEN):
        status, body = server.request("GET", path)
        check_error(status, body, 405, None, "GET", "method_not_allowed")
    status, body = server.request("DELETE", "/v1/models")
    check_error(status, body, 405, None, "DELETE", "method_not_allowed")


# ---- a server with a key, a small body limit and a queue of 2 ---------------------------------

KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 2048


def test_key_body_limit_and_queue_limit(start_server):
    with start_server("--threads", "2", "--api-key", KEY, "--max-request-bytes", str(LIMIT),
                      "--max-running-requests", "1", "--max-queued-requests", "1") as s:
        _check_api_key(s)
        _check_body_limit(s)
        _check_queue_limit(s)


def _check_api_key(s):
    small = {"prompt": "hi", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": KEY}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEY}x"}):
        status, body = s.request("POST", C, small, headers=headers)
        check_error(status, body, 401, None, "API key", "invalid_api_key")
    status, body = s.request("GET", "/v1/models")
    check_error(status, body, 401, None, "API key", "invalid_api_key")
    status, body = s.request("POST", C, small, headers=AUTH)
    assert status == 200 and body["usage"]["completion_tokens"] == 1, body
    status, body = s.request("GET", "/v1/models", headers={"Authorization": f"bearer {KEY}"})
    assert status == 200 and body["data"], body
    assert s.request("GET", "/health") == (200, {"status": "ok"})
    assert "kernels_num_requests_running" in s.metrics()  # no key
    # A bad request with the key is a 400, not a 401.
    check_error(*s.request("POST", C, {"prompt": "hi", "n": 0}, headers=AUTH), 400, "n")


def _chunked_post(s, path: str, chunks: list[bytes], headers: dict):
    url = urlsplit(s.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", path, body=iter(chunks), headers={"Content-Type": "application/json", **headers},
                     encode_chunked=True)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _body_of_size(size: int) -> bytes:
    """A good completion request of exactly ``size`` bytes (padded in ``user``)."""
    raw = json.dumps({"prompt": "hi", "max_tokens": 1, "user": ""}).encode()
    raw = raw[:-2] + b"u" * (size - len(raw)) + raw[-2:]
    assert len(raw) == size
    return raw


def _check_body_limit(s):
    status, body = s.request("POST", C, _body_of_size(LIMIT), headers=AUTH)  # at the limit: read
    assert status == 200 and body["usage"]["completion_tokens"] == 1, body
    over = _body_of_size(LIMIT + 1)
    status, body = s.request("POST", C, over, headers=AUTH)  # urllib sends a Content-Length
    check_error(status, body, 413, None, str(LIMIT), "request_too_large")
    for path in (C, CHAT, GEN):  # chunked: no length known before the body is read
        status, body = _chunked_post(s, path, [over[i:i + 500] for i in range(0, len(over), 500)], AUTH)
        check_error(status, body, 413, None, str(LIMIT), "request_too_large")
    ok = _body_of_size(LIMIT)
    status, body = _chunked_post(s, C, [ok[:1000], ok[1000:]], AUTH)  # chunked, at the limit: read
    assert status == 200 and body["usage"]["completion_tokens"] == 1, body


def _open_stream(s, body: dict):
    """A streaming request, accepted (200 and its headers; the events follow as the tokens
    come): close it to leave."""
    url = urlsplit(s.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", C, body=json.dumps(body), headers={"Content-Type": "application/json", **AUTH})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    return conn, r


def _check_queue_limit(s):
    long = {"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    rejected = s.metrics().get('kernels_rejected_requests_total{status="503"}', 0.0)
    streams = [_open_stream(s, long) for _ in range(2)]  # running 1 + queued 1: the server is full
    try:
        assert streams[0][1].readline().startswith(b"data: ")  # the first one runs
        for path, body in ((C, {"prompt": "hi", "max_tokens": 1}), (CHAT, {"messages": MSG, "max_tokens": 1}),
                           (GEN, {"input_ids": [1, 2], "sampling_params": {"max_tokens": 1}})):
            status, err = s.request("POST", path, body, headers=AUTH)
            check_error(status, err, 503, None, "queue is full", "service_unavailable")
        assert s.metrics()['kernels_rejected_requests_total{status="503"}'] == rejected + 3
    finally:
        for conn, r in streams:
            r.close()
            conn.close()
    # The server notices the clients left and aborts their requests: a new one gets through.
    deadline = time.monotonic() + 20
    while True:
        status, body = s.request("POST", C, {"prompt": "hi", "max_tokens": 1}, headers=AUTH)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200, body
    # n = 3 samples can never fit in 2 slots: 503 at once, and the samples submitted are taken back.
    status, body = s.request("POST", C, {"prompt": "hi", "max_tokens": 1, "n": 3}, headers=AUTH)
    check_error(status, body, 503, None, "queue is full", "service_unavailable")
    status, body = s.request("POST", C, {"prompt": "hi", "max_tokens": 1, "n": 2}, headers=AUTH)
    assert status == 200 and len(body["choices"]) == 2, body
    _wait_idle(s)


def _wait_idle(s, timeout: float = 15):
    """No request left running or waiting in the scheduler (its gauges lag a step)."""
    deadline = time.monotonic() + timeout
    while True:
        m = s.metrics()
        if m["kernels_num_requests_running"] == 0 and m["kernels_num_requests_waiting"] == 0:
            return
        assert time.monotonic() < deadline, {k: v for k, v in m.items() if "num_requests" in k}
        time.sleep(0.2)
