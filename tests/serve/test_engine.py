import dataclasses
import random

import pytest

from kernels.serve.engine import Engine
from kernels.serve.loader import load_model
from tests.serve.tiny_models import load_texty, load_tiny

NEW_TOKENS = 4  # enough to cover prefill and decode steps; SmolLM2 on 2 CPU cores is slow

PROMPTS = [
    "The capital of France is", "def fibonacci(n):", "Once upon a time", "The quick brown fox",
    "In 1492, Columbus", "Water boils at", "My favourite colour is", "import numpy as np\n",
    "The opposite of hot is", "Roses are red,", "To make a cake you need", "The largest planet is",
    "SELECT * FROM", "Dear Sir or Madam,", "The mitochondria is", "Photosynthesis converts",
    "A haiku about the sea:", "2 + 2 =", "The first law of motion", "Translate to French: cat",
    "Shakespeare wrote", "The speed of light", "Paris is known for", "An apple a day",
    "How do airplanes fly?", "List three fruits:", "The moon orbits", "Python lists are",
    "Bonjour, je m'appelle", "The meaning of life is", "Machine learning is", "Q: What is 7 times 6?\nA:",
]

def greedy(max_tokens=NEW_TOKENS, **kw):
    return {"temperature": 0.0, "max_tokens": max_tokens, **kw}


@pytest.fixture(scope="module")
def smol():
    return load_model(None, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny(tmp_path_factory, 3)


@pytest.fixture(scope="module")
def texty(smol, tmp_path_factory):
    return load_texty(tmp_path_factory, smol)


@pytest.fixture(scope="module")
def alone(smol):
    """Each prompt run by itself: the reference of batch invariance and of memory pressure."""
    engine = Engine(smol, max_total_tokens=256, enable_prefix_cache=False)
    return [engine.generate(p, greedy())[0].token_ids for p in PROMPTS]


def _no_pages_held(engine):
    cached = engine.scheduler.cache.num_pages if engine.scheduler.cache else 0
    return engine.pool.num_free_pages + cached == engine.pool.num_pages


def test_batch_invariance_32_prompts_together_match_each_alone(smol, alone):
    engine = Engine(smol, max_total_tokens=4096)
    outs = engine.generate(PROMPTS, greedy())
    assert [o.token_ids for o in outs] == alone
    for o in outs:  # a few prompts end early with the end-of-sequence token
        assert o.usage.completion_tokens == len(o.token_ids)
        assert o.finish_reason == ("stop" if o.token_ids[-1] in smol.config.eos_token_ids else "length")
    assert [o.usage.prompt_tokens for o in outs] == [len(smol.tokenizer.encode(p)) for p in PROMPTS]
    assert outs[0].text == smol.tokenizer.decode(outs[0].token_ids)
    assert _no_pages_held(engine)


def test_memory_pressure_a_quarter_of_the_demand_completes_identically(smol, alone):
    demand = sum(len(smol.tokenizer.encode(p)) + NEW_TOKENS for p in PROMPTS)
    engine = Engine(smol, page_size=4, max_total_tokens=demand // 4, max_batch_tokens=64)
    outs = engine.generate(PROMPTS, greedy())
    assert [o.token_ids for o in outs] == alone
    assert engine.stats.preemptions > 0
    assert _no_pages_held(engine)
    # An impossible request fails at once with the reason, and leaves the engine usable.
    with pytest.raises(ValueError, match="could never fit"):
        engine.generate("hello " * 100, greedy(8))
    with pytest.raises(ValueError, match="context length"):
        engine.generate("hi", greedy(10**6))
    assert not engine.has_unfinished()
    assert engine.generate(PROMPTS[0], greedy())[0].token_ids == alone[0]


def test_shared_512_token_prefix_is_computed_once(tiny):
    rng = random.Random(0)
    prefix = [rng.randrange(1, 256) for _ in range(512)]
    prompts = [prefix + [rng.randrange(1, 256) for _ in range(8)] for _ in range(16)]
    results = {}
    for cache in (True, False):
        engine = Engine(tiny, max_total_tokens=16 * 600, enable_prefix_cache=cache)
        results[cache] = engine.generate(prompts, greedy(8))
        computed = engine.stats.prompt_tokens_computed
        assert computed == (512 + 16 * 8 if cache else 16 * 520)
    assert [o.token_ids for o in results[True]] == [o.token_ids for o in results[False]]
    assert sorted(o.usage.cached_tokens for o in results[True]) == [0] + [512] * 15


def test_stop_strings_cut_the_text_and_streaming_holds_back_a_possible_match(texty):
    engine = Engine(texty, max_total_tokens=512)
    full = engine.generate(PROMPTS[2], greedy(12))[0]
    stop = full.text[6:9]
    cut = full.text.find(stop)
    out = engine.generate(PROMPTS[2], greedy(12, stop=["never there", stop]))[0]
    assert out.finish_reason == "stop" and out.text == full.text[:cut]
    assert full.token_ids[: len(out.token_ids)] == out.token_ids and len(out.token_ids) < 12
    pieces = list(engine.stream(PROMPTS[2], greedy(12, stop=[stop])))
    assert "".join(p.text for p in pieces) == out.text
    assert [t for p in pieces for t in p.token_ids] == out.token_ids
    assert pieces[-1].finished and not any(p.finished for p in pieces[:-1])
    assert all(stop not in "".join(p.text for p in pieces[: i + 1]) for i in range(len(pieces)))


def test_stop_token_ids_and_eos_end_the_request_keeping_the_token(texty, tiny):
    engine = Engine(texty, max_total_tokens=512)
    full = engine.generate(PROMPTS[3], greedy(8))[0]
    k = next(i for i in range(1, 8) if full.token_ids[i] not in full.token_ids[:i])
    out = engine.generate(PROMPTS[3], greedy(8, stop_token_ids=[full.token_ids[k]]))[0]
    assert out.token_ids == full.token_ids[: k + 1] and out.finish_reason == "stop"
    assert out.text == engine.generate(PROMPTS[3], greedy(k))[0].text  # the stop token's text is left out

    ids = [5, 6, 7]
    plain = Engine(tiny, max_total_tokens=512).generate(ids, greedy(8))[0].token_ids
    k = next(i for i in range(1, 8) if plain[i] not in plain[:i])
    eos_model = dataclasses.replace(tiny, config=dataclasses.replace(tiny.config, eos_token_ids=[plain[k]]))
    engine = Engine(eos_model, max_total_tokens=512)
    out = engine.generate(ids, greedy(8))[0]
    assert out.token_ids == plain[: k + 1] and out.finish_reason == "stop"
    out = engine.generate(ids, greedy(8, ignore_eos=True))[0]
    assert out.token_ids == plain and out.finish_reason == "length"


def test_stream_increments_add_up_and_closing_early_aborts(texty):
    engine = Engine(texty, max_total_tokens=512)
    whole = engine.generate(PROMPTS[5], greedy(6))[0]
    pieces = list(engine.stream(PROMPTS[5], greedy(6)))
    assert "".join(p.text for p in pieces) == whole.text
    assert [t for p in pieces for t in p.token_ids] == whole.token_ids
    assert pieces[-1].usage == whole.usage and pieces[-1].finish_reason == "length"
    stream = engine.stream(PROMPTS[6], greedy(6))
    next(stream)
    stream.close()
    assert not engine.has_unfinished() and _no_pages_held(engine)


def test_abort_and_the_step_loop(tiny):
    engine = Engine(tiny, max_total_tokens=512)
    engine.add_request("a", [1, 2, 3], greedy(5))
    engine.add_request("b", [4, 5, 6], greedy(5))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("a", [1], greedy())
    first = engine.step()
    assert sorted(o.request_id for o in first) == ["a", "b"] and all(len(o.token_ids) == 1 for o in first)
    last = engine.abort("b")
    assert last.finished and last.finish_reason == "abort" and last.usage.completion_tokens == 1
    assert engine.abort("b") is None and engine.abort("nope") is None
    seen = {}
    while engine.has_unfinished():
        for out in engine.step():
            seen.setdefault(out.request_id, []).append(out)
    assert "b" not in seen
    assert seen["a"][-1].finish_reason == "length"
    assert sum(len(o.token_ids) for o in first + seen["a"] if o.request_id == "a") == 5
    assert _no_pages_held(engine)


def test_logprobs_and_seeded_sampling_do_not_depend_on_the_batch(tiny):
    engine = Engine(tiny, max_total_tokens=2048)
    out = engine.generate([7, 8, 9], greedy(4, logprobs=3))[0]
    assert len(out.logprobs) == 4
    for tok, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == tok and len(lp.top) == 3 and lp.top[0][0] == tok
        assert lp.top[0][1] == pytest.approx(lp.logprob) and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
    sampled = {"temperature": 1.0, "seed": 1234, "max_tokens": 12}
    alone = engine.generate([3, 1, 4], sampled)[0].token_ids
    crowd = engine.generate([[3, 1, 4]] + [[i, i + 1] for i in range(1, 9)],
                            [sampled] + [{"temperature": 1.0, "max_tokens": 12}] * 8)
    assert crowd[0].token_ids == alone


def test_bad_input_is_refused_before_anything_runs(tiny):
    engine = Engine(tiny, max_total_tokens=512)
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[]], greedy())
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        engine.generate([1, 256], greedy())
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.generate("text", greedy())
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        engine.generate([1, 2], greedy(stop=["x"]))
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        engine.generate([[1], [2], [3]], [greedy(), greedy()])
    with pytest.raises(ValueError, match="unknown sampling parameter"):
        engine.generate([1], {"temprature": 0})
    with pytest.raises(ValueError, match="max_tokens"):
        engine.generate([1], {"max_tokens": 0})
    with pytest.raises(TypeError, match="prompt"):
        engine.generate([[1, 2.5]], greedy())
    with pytest.raises(TypeError, match="prompt"):
        engine.generate([[1, True]], greedy())  # a bool is not a token id
    # One bad prompt in a list stops all of them: nothing was queued.
    with pytest.raises(ValueError):
        engine.generate([[1, 2], [1, 999]], greedy())
    assert not engine.has_unfinished()
