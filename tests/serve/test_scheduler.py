import random

import pytest
import torch

from kernels.serve.forward_batch import ForwardBatch
from kernels.serve.memory import KVPool
from kernels.serve.request import Request
from kernels.serve.sampling import SamplingParams
from kernels.serve.scheduler import Scheduler
from tests.serve.tiny_models import load_tiny

PS = 4  # small pages, so that short prompts span many of them
VOCAB = 128

MAX_CONTEXT = 256


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_tiny(tmp_path_factory, 1, vocab_size=VOCAB, max_position_embeddings=MAX_CONTEXT).model


def _scheduler(num_pages=256, **kw):
    pool = KVPool(2, 1, 64, PS, num_pages, torch.float32, "cpu")
    return Scheduler(pool, max_context=MAX_CONTEXT, **kw)


def _request(rid, prompt, max_tokens):
    return Request(str(rid), list(prompt), SamplingParams(max_tokens=max_tokens, temperature=0.0))


def _reference(model, prompt, max_tokens):
    """Greedy tokens computed the plain way: the whole sequence from scratch for every token."""
    ids = list(prompt)
    for _ in range(max_tokens):
        n = len(ids)
        pages = -(-n // PS)
        pool = KVPool(2, 1, 64, PS, pages, torch.float32, "cpu")
        batch = ForwardBatch(
            input_ids=torch.tensor(ids), positions=torch.arange(n), slot_mapping=torch.arange(n),
            page_table=torch.arange(pages, dtype=torch.int32)[None], qo_indptr=torch.tensor([0, n], dtype=torch.int32),
            kv_lens=torch.tensor([n], dtype=torch.int32), logits_indices=torch.tensor([n - 1]), is_decode=False,
        )
        ids.append(int(model(batch, pool.kv_caches)[0].argmax()))
    return ids[len(prompt):]


def _tree_pages(cache):
    pages, stack = [], [cache.root]
    while stack:
        node = stack.pop()
        pages += node.pages
        stack += node.children.values()
    return pages


def _check_pages(sched):
    """Every page is exactly one of: free, cached, or private to one running request."""
    pool = sched.pool
    cached = set(_tree_pages(sched.cache)) if sched.cache is not None else set()
    private = [p for r in sched.running for p in r.pages if p not in cached]
    free = set(pool.allocator._free)
    assert len(free) == pool.num_free_pages
    assert len(private) == len(set(private)) and not (set(private) & free) and not (cached & free)
    assert pool.num_free_pages + len(cached) + len(private) == pool.num_pages
    assert all(not r.pages for r in sched.waiting)


def _drive(sched, model, arrivals, on_batch=None):
    """Run requests to max_tokens; ``arrivals[step]`` lists the requests added before that step."""
    arrivals = dict(arrivals)
    step = 0
    while sched.has_unfinished() or arrivals:
        for req in arrivals.pop(step, []):
            sched.add(req)
        batch = sched.schedule()
        step += 1
        if batch is None:
            continue
        # The budget bounds the prompt tokens; each decode row rides on top.
        prompt = sum(n for req, n in zip(batch.requests, batch.num_new) if req.num_tokens - req.num_computed > 1)
        assert prompt <= sched.max_batch_tokens
        if on_batch:
            on_batch(batch)
        logits = model(batch.forward, sched.pool.kv_caches)
        tokens = logits[batch.sample_rows].argmax(-1).tolist()
        sched.update(batch, tokens)
        for i in batch.sample_rows:
            req = batch.requests[i]
            if len(req.output_ids) >= req.params.max_tokens:
                sched.finish(req)
        _check_pages(sched)
    return step


def test_forward_batch_of_a_mixed_step_matches_the_requests_pages(model):
    sched = _scheduler(max_batch_tokens=8)
    a = _request("a", range(1, 6), 4)
    sched.add(a)
    batch = sched.schedule()  # a: 5-token prompt in one chunk
    assert batch.num_new == [5] and not batch.forward.is_decode and batch.sample_rows == [0]
    sched.update(batch, [7])
    b = _request("b", range(10, 22), 4)
    sched.add(b)
    batch = sched.schedule()  # a decodes 1 token on top of the budget, b prefills 8 of its 12
    fb = batch.forward
    assert batch.requests == [a, b] and batch.num_new == [1, 8] and batch.sample_rows == [0]
    assert not fb.is_decode
    assert fb.input_ids.tolist() == [7] + list(range(10, 18))
    assert fb.positions.tolist() == [5] + list(range(8))
    assert fb.qo_indptr.tolist() == [0, 1, 9] and fb.kv_lens.tolist() == [6, 8]
    assert fb.logits_indices.tolist() == [0, 8]
    assert fb.page_table.dtype == torch.int32 and fb.page_table.shape == (2, 2)
    assert fb.page_table[0].tolist() == a.pages and fb.page_table[1].tolist() == b.pages
    expect = [a.pages[5 // PS] * PS + 5 % PS] + [b.pages[p // PS] * PS + p % PS for p in range(8)]
    assert fb.slot_mapping.tolist() == expect
    sched.update(batch, [9])
    assert a.output_ids == [7, 9] and b.num_computed == 8 and b.output_ids == []
    batch = sched.schedule()  # both finish this step: a decodes, b the last 4 prompt tokens
    assert batch.num_new == [1, 4] and batch.sample_rows == [0, 1]
    sched.update(batch, [1, 2])
    batch = sched.schedule()
    assert batch.num_new == [1, 1] and batch.forward.is_decode


def test_chunked_and_mixed_batches_give_the_reference_tokens(model):
    rng = random.Random(0)
    prompts = [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(3, 40))] for _ in range(6)]
    sched = _scheduler(max_batch_tokens=16, enable_prefix_cache=False)
    reqs = [_request(i, p, 6) for i, p in enumerate(prompts)]
    seen = {"mixed": 0, "chunks": 0}

    def watch(batch):
        seen["mixed"] += (not batch.forward.is_decode) and 1 in batch.num_new
        seen["chunks"] += any(n < r.num_tokens - r.num_computed for r, n in zip(batch.requests, batch.num_new))

    _drive(sched, model, {0: reqs[:3], 4: reqs[3:]}, watch)
    assert seen["mixed"] and seen["chunks"]
    for req, prompt in zip(reqs, prompts):
        assert req.output_ids == _reference(model, prompt, 6)
    assert sched.stats.prompt_tokens_computed == sum(map(len, prompts))


def test_requests_sharing_a_prefix_compute_it_once(model):
    rng = random.Random(1)
    prefix = [rng.randrange(1, VOCAB) for _ in range(64)]
    prompts = [prefix + [rng.randrange(1, VOCAB) for _ in range(5)] for _ in range(8)]
    outputs = {}
    for cache in (True, False):
        sched = _scheduler(max_batch_tokens=512, enable_prefix_cache=cache)
        reqs = [_request(i, p, 4) for i, p in enumerate(prompts)]
        _drive(sched, model, {0: reqs})
        outputs[cache] = [r.output_ids for r in reqs]
        if cache:
            assert sched.stats.prompt_tokens_computed == 64 + 8 * 5
            assert sched.stats.prompt_tokens_cached == 7 * 64
            assert [r.cached_tokens for r in reqs].count(64) == 7
            # Everything is cached now and unlocked: all of it can be evicted again.
            assert sched.cache.evictable_pages == sched.cache.num_pages
        else:
            assert sched.stats.prompt_tokens_computed == 8 * 69
    assert outputs[True] == outputs[False]


def test_longest_prefix_first_while_the_queue_is_short_fcfs_when_long(model):
    rng = random.Random(2)
    cached = [rng.randrange(1, VOCAB) for _ in range(24)]
    other = [rng.randrange(1, VOCAB) for _ in range(24)]
    for limit, first in ((128, "hit"), (1, "miss")):
        sched = _scheduler(max_batch_tokens=26, lpm_queue_limit=limit)
        _drive(sched, model, {0: [_request("warm", cached, 1)]})
        sched.add(_request("miss", other + [5], 2))
        sched.add(_request("hit", cached + [5], 2))
        batch = sched.schedule()
        assert batch.requests[0].request_id == first


def test_preemption_under_memory_pressure_keeps_greedy_outputs(model):
    rng = random.Random(3)
    prompts = [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(4, 30))] for _ in range(12)]
    max_tokens = 12
    demand = sum(-(-(len(p) + max_tokens) // PS) for p in prompts)
    for cache in (True, False):
        sched = _scheduler(num_pages=demand // 4, max_batch_tokens=32, enable_prefix_cache=cache)
        reqs = [_request(i, p, max_tokens) for i, p in enumerate(prompts)]
        _drive(sched, model, {0: reqs})
        assert sched.stats.preemptions > 0
        for req, prompt in zip(reqs, prompts):
            assert req.output_ids == _reference(model, prompt, max_tokens), req.request_id
        assert sched.pool.num_free_pages + (sched.cache.num_pages if cache else 0) == sched.pool.num_pages


@pytest.mark.parametrize("seed", [4, 5])
def test_random_traffic_matches_the_reference_and_leaks_no_page(model, seed):
    rng = random.Random(seed)
    stems = [[rng.randrange(1, VOCAB) for _ in range(n)] for n in (8, 13, 20)]
    arrivals, reqs = {}, []
    for i in range(16):
        prompt = rng.choice(stems)[: rng.randrange(0, 21)] + [rng.randrange(1, VOCAB) for _ in range(rng.randrange(1, 12))]
        req = _request(i, prompt, rng.randrange(1, 9))
        reqs.append(req)
        arrivals.setdefault(rng.randrange(12), []).append(req)
    sched = _scheduler(num_pages=12, max_batch_tokens=12, max_running=5)
    _drive(sched, model, arrivals)
    for req in reqs:
        assert req.output_ids == _reference(model, req.prompt_ids, req.params.max_tokens), req.request_id
    assert sched.stats.prompt_tokens_cached > 0 and sched.stats.preemptions > 0
    assert sched.cache.evictable_pages == sched.cache.num_pages
    assert sched.pool.num_free_pages + sched.cache.num_pages == 12


def test_a_request_that_can_never_fit_is_rejected_at_admission():
    sched = _scheduler(num_pages=8)  # 32 tokens
    with pytest.raises(ValueError, match="KV pool of 32 tokens"):
        sched.add(_request("big", range(1, 30), 5))
    with pytest.raises(ValueError, match="context length of 256"):
        sched.add(_request("long", [1] * 20, 240))
    with pytest.raises(ValueError, match="at least one token"):
        sched.add(_request("empty", [], 5))
    sched.add(_request("fits", range(1, 30), 4))  # 33 tokens: the last one's K/V are never stored
    assert len(sched.waiting) == 1


def test_finishing_a_waiting_or_running_request_releases_it(model):
    sched = _scheduler(max_batch_tokens=4)
    a, b = _request("a", range(1, 11), 3), _request("b", range(1, 11), 3)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    sched.update(batch, [])
    assert a in sched.running and b in sched.waiting and a.pages
    sched.finish(b)
    sched.finish(a)
    assert not sched.has_unfinished() and sched.schedule() is None
    assert sched.pool.num_free_pages + sched.cache.num_pages == sched.pool.num_pages
    assert sched.cache.num_pages == 1  # a's one full computed page stays cached
