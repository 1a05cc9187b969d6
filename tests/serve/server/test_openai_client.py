"""Issue 7, acceptance 1: the official `openai` client against `kernels serve` (SmolLM2 on the CPU).

Completions and chat, whole and streamed, give OpenAI's shapes, and greedy text identical to the
offline engine's on the same prompt ids (the same model in this process)."""

import pytest

# The test extra installs it; the GPU machine's `pytest -m gpu` collects this file without it.
openai = pytest.importorskip("openai")

from kernels.serve import engine as engine_module
from kernels.serve.sampling import SamplingParams

PROMPT = "The three primary colors are"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference():
    return engine_module.Engine(None, device="cpu", dtype="float32", max_total_tokens=2048)


@pytest.fixture(scope="module")
def model_id(client):
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


def _greedy(reference, ids, max_tokens):
    return reference.generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0.0))[0]


def test_models_lists_the_one_model(client, model_id):
    assert model_id == "SmolLM2-135M-Instruct.Q4_1"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=1)
    assert e.value.body["code"] == "model_not_found"


def test_completion(client, model_id, reference):
    r = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=24, temperature=0)
    want = _greedy(reference, reference.tokenizer.encode(PROMPT), 24)
    assert r.object == "text_completion" and r.model == model_id and r.id
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].text == want.text
    assert r.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == len(reference.tokenizer.encode(PROMPT))
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_stream(client, model_id, reference):
    chunks = list(client.completions.create(model=model_id, prompt=PROMPT, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    want = _greedy(reference, reference.tokenizer.encode(PROMPT), 24)
    assert all(c.object == "text_completion" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert len(text_chunks) >= 2  # streamed, not sent whole
    assert "".join(c.choices[0].text for c in text_chunks) == want.text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 24


def test_chat(client, model_id, reference):
    r = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=32, temperature=0)
    want = _greedy(reference, reference.tokenizer.apply_chat_template(MESSAGES), 32)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"  # SmolLM2 ends its answer with <|im_end|>
    assert r.usage.completion_tokens == len(want.token_ids)


def test_chat_stream(client, model_id, reference):
    chunks = list(client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=32, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    want = _greedy(reference, reference.tokenizer.apply_chat_template(MESSAGES), 32)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == want.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_n_samples_and_logprobs(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=7,
                                       n=3, logprobs=True, top_logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1  # independent samples
    for c in r.choices:
        content = c.logprobs.content
        assert len(content) >= 1 and all(len(t.top_logprobs) == 2 for t in content)
        assert all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    again = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=7,
                                           n=3)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]  # seeded


def test_completion_logprobs_and_token_prompt(client, model_id, reference):
    ids = reference.tokenizer.encode(PROMPT)
    r = client.completions.create(model=model_id, prompt=ids, max_tokens=6, temperature=0, logprobs=3)
    want = _greedy(reference, ids, 6)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == want.text
    assert len(lp.tokens) == 6 and len(lp.token_logprobs) == 6 and len(lp.top_logprobs) == 6
    assert all(len(t) <= 3 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == want.text
    assert lp.text_offset[0] == 0
