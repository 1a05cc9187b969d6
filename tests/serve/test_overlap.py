"""Overlap scheduling (Engine(overlap=True)): the same outputs as one batch at a time, no page lost.

With overlap the engine launches batch N+1 before it processes the tokens of batch N, so a request
that finishes at N (stop token, ``max_tokens``, stop string, abort) already has a row in N+1: that
token must never be reported and the request's pages must be released once. Every workload here
runs both ways and must give the same tokens, texts, logprobs, finish reasons and usage.
"""


import pytest
import torch

from kernels.serve.engine import Engine
from kernels.serve.loader import load_model
from tests.serve.tiny_models import load_texty, load_tiny

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny(tmp_path_factory, 3)


@pytest.fixture(scope="module")
def texty(tmp_path_factory):
    return load_texty(tmp_path_factory, load_model(None, device="cpu", dtype="float32"))


def _prompts(n, seed=0, lo=3, hi=40):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 256, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _no_page_leaked(engine):
    """Every page is free or held by the radix cache, and evicting the cache frees them all."""
    cache = engine.scheduler.cache
    held = cache.num_pages if cache else 0
    assert engine.pool.num_free_pages + held == engine.pool.num_pages
    if cache:
        cache.evict(engine.pool.num_pages)
        assert cache.num_pages == 0
    assert engine.pool.num_free_pages == engine.pool.num_pages


def _summary(outs, cached=True):
    """What must not depend on overlap. Under memory pressure which cached prefix survives depends
    on when pages were short, which overlap shifts by a step: ``cached=False`` leaves it out."""
    return [(o.token_ids, o.text, o.finish_reason,
             o.usage if cached else (o.usage.prompt_tokens, o.usage.completion_tokens),
             None if o.logprobs is None else [(lp.token_id, round(lp.logprob, 4)) for lp in o.logprobs])
            for o in outs]


def _mixed_params(tiny, prompts):
    """Greedy and seeded requests ending every way: eos, a stop token, max_tokens (1 included),
    with logprobs and with penalties (which turn overlap off while they run)."""
    plain = Engine(tiny, max_total_tokens=8192, overlap=False).generate(prompts, {"temperature": 0.0, "max_tokens": 12,
                                                                                   "ignore_eos": True})
    params = []
    for i, out in enumerate(plain):
        kind = i % 7
        if kind == 0:
            params.append({"temperature": 0.0, "max_tokens": 1})
        elif kind == 1:  # stop on a token it will meet
            params.append({"temperature": 0.0, "max_tokens": 12, "stop_token_ids": [out.token_ids[3 + i % 5]]})
        elif kind == 2:
            params.append({"temperature": 1.0, "seed": 100 + i, "max_tokens": 2 + i % 9})
        elif kind == 3:
            params.append({"temperature": 0.0, "max_tokens": 2 + i % 11, "logprobs": 2})
        elif kind == 4:
            params.append({"temperature": 0.8, "top_k": 20, "seed": i, "max_tokens": 9})
        elif kind == 5:
            params.append({"temperature": 0.0, "max_tokens": 2})
        else:
            penalty = {"frequency_penalty": 0.5} if i % 2 else {"repetition_penalty": 1.3}
            params.append({"temperature": 0.0, "max_tokens": 3, **penalty})  # short: most steps overlap
    return params


@pytest.mark.parametrize("config", [
    dict(max_total_tokens=8192),  # plenty of everything
    dict(page_size=4, max_total_tokens=160, max_batch_tokens=24),  # chunked prefill and preemption
    dict(page_size=4, max_total_tokens=256, max_batch_tokens=64, max_running_requests=5, enable_prefix_cache=False),
])
def test_overlap_matches_one_batch_at_a_time_on_a_mixed_workload(tiny, config):
    prompts = _prompts(28)
    prompts += [prompts[0][:20] + [7, 8, 9], prompts[1] + prompts[2]]  # shared prefixes
    params = _mixed_params(tiny, prompts)
    results, stats = {}, {}
    for overlap in (False, True):
        engine = Engine(tiny, overlap=overlap, **config)
        cached = config["max_total_tokens"] > 1000
        results[overlap] = _summary(engine.generate(prompts, params), cached)
        # Again, from the cache where there is one, in a different order of finishing.
        results[overlap] += _summary(engine.generate(prompts[::-1], params[::-1]), cached)
        stats[overlap] = engine.stats
        assert not engine.has_unfinished()
        _no_page_leaked(engine)
    assert results[True] == results[False]
    if config["max_total_tokens"] == 160:
        assert stats[True].preemptions > 0 and stats[False].preemptions > 0
    # The rows computed for requests already finished are not counted.
    if "max_running_requests" not in config and config["max_total_tokens"] > 1000:
        assert stats[True].tokens_computed == stats[False].tokens_computed
        assert stats[True].prompt_tokens_computed == stats[False].prompt_tokens_computed


def test_max_tokens_one_and_a_lone_request(tiny):
    for overlap in (False, True):
        engine = Engine(tiny, max_total_tokens=512, overlap=overlap)
        out = engine.generate([5, 6, 7], {"temperature": 0.0, "max_tokens": 1})[0]
        assert len(out.token_ids) == 1 and out.finish_reason == "length"
        assert engine.stats.tokens_computed == 3  # no decode row for a request that is done
        _no_page_leaked(engine)


def test_stop_strings_and_streams_match(texty):
    prompts = ["Once upon a time", "The quick brown fox", "Water boils at", "def fibonacci(n):"]
    ref = Engine(texty, max_total_tokens=1024, overlap=False)
    full = ref.generate(prompts, {"temperature": 0.0, "max_tokens": 16})
    params = [{"temperature": 0.0, "max_tokens": 16, "stop": [o.text[5:8]]} for o in full]
    results = {}
    for overlap in (False, True):
        engine = Engine(texty, max_total_tokens=1024, overlap=overlap)
        outs = engine.generate(prompts, params)
        pieces = list(engine.stream(prompts[1], params[1]))
        stream_text = "".join(p.text for p in pieces)
        assert [t for p in pieces for t in p.token_ids] == outs[1].token_ids and stream_text == outs[1].text
        assert pieces[-1].finished and not any(p.finished for p in pieces[:-1])
        results[overlap] = (_summary(outs), [(p.token_ids, p.text) for p in pieces])
        _no_page_leaked(engine)
    assert results[True] == results[False]
    assert any(o[2] == "stop" for o in results[True][0])


def _step_loop(engine, prompts, params, abort_at):
    """Drive add_request / step / abort; abort_at: {step index: [request ids]}."""
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(str(i), p, sp)
    tokens, finish, k = {}, {}, 0
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id not in finish, "a request was reported after it finished"
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
            if out.finished:
                finish[out.request_id] = out.finish_reason
        for rid in abort_at.get(k, []):
            last = engine.abort(rid)
            if last is not None:
                tokens.setdefault(rid, []).extend(last.token_ids)
                finish[rid] = last.finish_reason
        k += 1
    return tokens, finish


def test_aborts_mid_stream_match_and_release_everything(tiny):
    prompts = _prompts(12, seed=1)
    params = [{"temperature": 0.0 if i % 2 else 1.0, "seed": i, "max_tokens": 6 + i} for i in range(12)]
    abort_at = {0: ["0"], 2: ["3", "4"], 5: ["7"], 9: ["11", "nope"]}
    results = {}
    for overlap in (False, True):
        for config in (dict(max_total_tokens=4096), dict(page_size=4, max_total_tokens=120, max_batch_tokens=20)):
            engine = Engine(tiny, overlap=overlap, **config)
            results[overlap, len(config)] = _step_loop(engine, prompts, params, abort_at)
            assert engine.abort("3") is None
            _no_page_leaked(engine)
    assert results[True, 1] == results[False, 1]
    assert results[True, 3] == results[False, 3]
    tokens, finish = results[True, 1]
    assert finish["0"] == finish["3"] == finish["7"] == "abort" and finish["1"] == "length"
    assert len(tokens["0"]) == 1 and len(tokens["1"]) == 7


def test_closing_a_stream_early_frees_its_pages(tiny):
    engine = Engine(tiny, max_total_tokens=512)
    assert engine.overlap
    stream = engine.stream([1, 2, 3, 4], {"temperature": 0.0, "max_tokens": 20})
    got = [next(stream) for _ in range(3)]
    stream.close()
    assert [len(o.token_ids) for o in got] == [1, 1, 1]
    assert not engine.has_unfinished()
    _no_page_leaked(engine)
    # The engine carries on: a new request sees none of the aborted one's tokens.
    alone = Engine(tiny, max_total_tokens=512, overlap=False).generate([9, 9], {"temperature": 0.0, "max_tokens": 5})
    assert engine.generate([9, 9], {"temperature": 0.0, "max_tokens": 5})[0].token_ids == alone[0].token_ids


@pytest.mark.gpu
def test_overlap_with_cuda_graphs_matches():
    """On the GPU, placeholders resolve before the graph's input copy: graphed decode with and
    without overlap gives the same tokens, with requests finishing at every step."""
    loaded = load_model("llama-tiny", load_format="dummy", device="cuda", dtype="float32", seed=5)
    vocab = loaded.config.vocab_size
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, vocab, (int(torch.randint(1, 150, (1,), generator=g)),), generator=g).tolist()
               for _ in range(40)]
    params = [{"temperature": 0.0, "max_tokens": 1 + i % 13, "ignore_eos": True} if i % 3 else
              {"temperature": 1.0, "seed": i, "max_tokens": 10, "ignore_eos": True} for i in range(40)]
    results = {}
    for overlap in (False, True):
        engine = Engine(loaded, max_total_tokens=16384, overlap=overlap, cuda_graph_max_batch=32)
        results[overlap] = [o.token_ids for o in engine.generate(prompts, params)]
        # Stops on a token met on the way, found by the run without overlap.
        stops = [{"temperature": 0.0, "max_tokens": 13, "stop_token_ids": [t[len(t) // 2]]}
                 for t in results[False][: len(prompts)]]
        results[overlap] += [o.token_ids for o in engine.generate(prompts, stops)]
        assert engine.graph_runner.num_replays > 0
        _no_page_leaked(engine)
    assert results[True] == results[False]


def test_steady_decode_steps_take_the_sampled_tokens_as_they_are(tiny):
    """A decode batch whose row i reads sampled row i takes those tokens without a gather; one whose
    rows moved (a request finished before it) gathers them. Both give the tokens of no overlap."""
    prompts = _prompts(6, seed=3)
    params = [{"temperature": 0.0, "max_tokens": 4 + 3 * i, "ignore_eos": True} for i in range(len(prompts))]
    expected = _summary(Engine(tiny, max_total_tokens=2048, overlap=False).generate(prompts, params))
    engine = Engine(tiny, max_total_tokens=2048)
    kinds, schedule = [], engine.scheduler.schedule

    def spy():
        batch = schedule()
        if batch is not None:
            kinds.append((batch.has_placeholders, batch.placeholders_in_order))
        return batch

    engine.scheduler.schedule = spy
    assert _summary(engine.generate(prompts, params)) == expected
    assert (True, True) in kinds and (True, False) in kinds
    assert (False, True) not in kinds
