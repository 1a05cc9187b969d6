import random

import pytest

from kernels.serve.memory import PageAllocator, RadixCache

PS = 4  # page size of these tests: small, so that short sequences span several pages


def _cache(num_pages=64):
    alloc = PageAllocator(num_pages)
    return RadixCache(PS, alloc), alloc


def _store(cache, alloc, ids):
    """What a request does: reuse the cached prefix, compute (allocate) the rest, insert, release."""
    n = len(ids) // PS * PS
    match = cache.match_prefix(ids[:n] + [-1])  # the appended token lets the match cover all n
    cache.lock(match.node)
    pages = match.pages + alloc.alloc(n // PS - len(match.pages))
    result = cache.insert(ids[:n], pages)
    alloc.free([p for p, q in zip(pages, result.pages) if p != q])
    cache.unlock(match.node)
    return result.pages


def _contents(cache):
    """{prefix tokens: page} for every page in the tree, and the locked nodes' prefixes."""
    out = {}
    stack = [((), cache.root)]
    while stack:
        prefix, node = stack.pop()
        for child in node.children.values():
            key = prefix + child.key
            for j, page in enumerate(child.pages):
                out[prefix + child.key[: (j + 1) * PS]] = page
            stack.append((key, child))
    return out


def test_match_returns_the_cached_pages_but_always_leaves_one_token_to_compute():
    cache, alloc = _cache()
    ids = list(range(12))
    pages = _store(cache, alloc, ids)
    assert len(pages) == 3
    assert cache.match_prefix(ids + [99]).pages == pages and cache.match_prefix(ids + [99]).num_tokens == 12
    # The whole prompt is cached, yet the last page is left out so that its last token is computed.
    m = cache.match_prefix(ids)
    assert m.pages == pages[:2] and m.num_tokens == 8
    assert cache.match_prefix(ids[:9]).num_tokens == 8
    assert cache.match_prefix(ids[:5]).num_tokens == 4
    assert cache.match_prefix(ids[:4]).num_tokens == 0
    assert cache.match_prefix([]).num_tokens == 0
    # Only whole pages match: a difference inside page 2 stops the match after page 1.
    assert cache.match_prefix(ids[:6] + [77] + ids[7:] + [1]).pages == pages[:1]
    assert cache.match_prefix([5] + ids[1:]).num_tokens == 0


def test_insert_keeps_the_pages_it_has_and_reports_the_ones_it_did_not_take():
    cache, alloc = _cache()
    ids = list(range(16))
    first = alloc.alloc(4)
    assert cache.insert(ids, first).pages == first
    second = alloc.alloc(2) + alloc.alloc(2)
    result = cache.insert(ids[:8] + [50, 51, 52, 53, 54, 55, 56, 57], second)
    assert result.pages == first[:2] + second[2:]  # shared pages come from the tree
    assert result.num_tokens == 16
    assert cache.num_pages == 6
    with pytest.raises(ValueError, match="page_size = 4"):
        cache.insert(ids[:7], first[:2])


def test_lock_pins_the_matched_path_against_eviction():
    cache, alloc = _cache(16)
    a = list(range(16))
    b = a[:8] + [90] * 8
    _store(cache, alloc, a)
    _store(cache, alloc, b)
    assert cache.num_pages == cache.evictable_pages == 6 and alloc.num_free == 10
    m = cache.match_prefix(b + [1])
    cache.lock(m.node)
    assert cache.evictable_pages == 2  # a's own tail; the shared head is b's path
    assert cache.evict(100) == 2
    assert alloc.num_free == 12
    assert cache.match_prefix(b + [1]).pages == m.pages
    assert cache.match_prefix(a).num_tokens == 8
    cache.unlock(m.node)
    assert cache.evictable_pages == 4
    with pytest.raises(ValueError, match="not locked"):
        cache.unlock(m.node)
    assert cache.evict(1) == 2  # whole leaves go: b's tail (2 pages)
    assert cache.evict(100) == 2  # then the shared head, once childless
    assert alloc.num_free == 16 and cache.num_pages == 0


def test_eviction_takes_the_least_recently_used_leaf_first():
    cache, alloc = _cache()
    seqs = [[s] * 8 for s in range(4)]
    for s in seqs:
        _store(cache, alloc, s)
    cache.match_prefix(seqs[0] + [1])  # touch 0: now 1 is the oldest, then 2, 3, 0
    assert cache.evict(1) == 2
    assert cache.match_prefix(seqs[1] + [1]).num_tokens == 0
    assert cache.evict(3) == 4
    assert cache.match_prefix(seqs[3] + [1]).num_tokens == 0
    assert cache.match_prefix(seqs[0] + [1]).num_tokens == 8


def test_a_split_node_keeps_its_locks():
    cache, alloc = _cache()
    a = list(range(20))
    _store(cache, alloc, a)
    m = cache.match_prefix(a + [1])
    cache.lock(m.node)
    # A match that ends inside the locked edge splits it; the upper part is locked through the lower.
    short = cache.match_prefix(a[:8] + [1])
    assert short.num_tokens == 8 and cache.evict(100) == 0
    cache.lock(short.node)
    cache.unlock(m.node)
    assert cache.evictable_pages == 3
    assert cache.evict(100) == 3 and cache.match_prefix(a).num_tokens == 8
    cache.unlock(short.node)
    assert cache.evict(100) == 2 and alloc.num_free == 64


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_match_a_flat_model_and_never_leak_a_page(seed):
    rng = random.Random(seed)
    num_pages = 48
    cache, alloc = _cache(num_pages)
    model = {}  # every cached page-aligned prefix -> its page
    locks = []  # (node, prefix) held by simulated running requests
    private = []  # pages simulated requests computed and not yet handed to the tree

    def random_ids():
        # A few stems, so that sequences share prefixes of various lengths.
        stem = [rng.randrange(3)] * rng.choice([0, 4, 8, 12])
        return stem + [rng.randrange(4) for _ in range(rng.randrange(1, 20))]

    for _ in range(400):
        op = rng.random()
        if op < 0.4:
            ids = random_ids()
            m = cache.match_prefix(ids)
            # The reference: the longest cached prefix, whole pages, below len(ids).
            k = 0
            while (k + 1) * PS <= len(ids) - 1 and tuple(ids[: (k + 1) * PS]) in model:
                k += 1
            assert m.num_tokens == k * PS
            assert m.pages == [model[tuple(ids[: (j + 1) * PS])] for j in range(k)]
            cache.lock(m.node)
            need = len(ids) // PS - k
            if alloc.num_free < need:
                cache.evict(need - alloc.num_free)
                model = {key: page for key, page in _contents(cache).items()}
            if alloc.num_free < need:
                cache.unlock(m.node)
                continue
            own = alloc.alloc(need)
            pages = m.pages + own
            n = len(pages) * PS
            before = dict(model)
            result = cache.insert(ids[:n], pages)
            for j, page in enumerate(result.pages):
                key = tuple(ids[: (j + 1) * PS])
                assert page == before.get(key, pages[j])
                model[key] = page
            alloc.free([p for p, q in zip(pages, result.pages) if p != q])
            if rng.random() < 0.5:
                cache.unlock(m.node)
            else:
                # Still running: switch to the tree's pages and lock the longer path.
                cache.lock(result.node)
                cache.unlock(m.node)
                locks.append((result.node, tuple(ids[:n])))
        elif op < 0.55 and locks:
            node, _ = locks.pop(rng.randrange(len(locks)))
            cache.unlock(node)
        elif op < 0.7:
            # A request that holds pages outside the tree (mid-prefill) and gives them back later.
            if private and rng.random() < 0.5:
                alloc.free(private.pop())
            elif alloc.num_free:
                private.append(alloc.alloc(rng.randint(1, alloc.num_free)))
        else:
            want = rng.randrange(1, 12)
            evictable = cache.evictable_pages
            free_before = alloc.num_free
            freed = cache.evict(want)
            after = _contents(cache)
            removed = {key: page for key, page in model.items() if key not in after}
            assert all(model[key] == page for key, page in after.items())
            assert freed == len(removed) == alloc.num_free - free_before
            assert freed >= want or cache.evictable_pages == 0
            assert freed <= evictable
            assert all(not any(key[: len(r)] == r for r in removed) for _, key in locks)
            # What is left is still a tree: every cached prefix's shorter prefixes are cached too.
            assert all(key[:-PS] in after or len(key) == PS for key in after)
            model = after

        held = sum(len(p) for p in private)
        assert alloc.num_free + cache.num_pages + held == num_pages
        contents = _contents(cache)
        assert contents == model and cache.num_pages == len(contents)
        assert len(set(contents.values())) == len(contents)  # no page cached twice
        assert 0 <= cache.evictable_pages <= cache.num_pages

    for node, _ in locks:
        cache.unlock(node)
    for pages in private:
        alloc.free(pages)
    assert cache.evictable_pages == cache.num_pages
    cache.evict(num_pages)
    assert alloc.num_free == num_pages and cache.num_pages == 0
