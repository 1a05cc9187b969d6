"""CUDA-graph decode (serve/cuda_graph.py): buckets, padding, and graph against eager decode.

The bucket and padding logic runs anywhere: a padded decode batch run eagerly on CPU must give the
real rows' logits unchanged and write nothing for the padded rows. The graphs themselves need a GPU
(marked ``gpu``): replayed decode must match eager decode, logits and greedy tokens, over batch
sizes that hit and miss the captured sizes, and padded rows must never write the KV cache.
"""

import json
import random

import pytest
import torch

from kernels.serve.cuda_graph import MAX_CAPTURE_BATCH, CudaGraphRunner, DecodeInputs, bucket_for, capture_sizes
from kernels.serve.engine import Engine
from kernels.serve.forward_batch import ForwardBatch
from kernels.serve.loader import load_model
from kernels.serve.memory import KVPool
from kernels.serve.request import Request
from kernels.serve.sampling import SamplingParams
from kernels.serve.scheduler import Scheduler

PS = 16

TINY = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512, "eos_token_id": 0,
}


# ---- buckets (pure Python) --------------------------------------------------------------------


def test_capture_sizes():
    sizes = capture_sizes(256)
    assert sizes[:9] == [1, 2, 4, 8, 16, 24, 32, 48, 64]
    assert sizes == sorted(set(sizes)) and sizes[-1] == 256
    assert capture_sizes(5) == [1, 2, 4, 5]
    assert capture_sizes(1) == [1]
    assert capture_sizes(64)[-1] == 64 and capture_sizes(100)[-2:] == [96, 100]
    assert capture_sizes(10_000)[-1] == MAX_CAPTURE_BATCH
    for bad in (0, -3, 2.0, True, None):
        with pytest.raises(ValueError, match="max_batch"):
            capture_sizes(bad)


def test_bucket_for_is_the_smallest_size_that_holds_the_batch():
    for top in (1, 5, 37, 256):
        sizes = capture_sizes(top)
        for b in range(1, top + 1):
            n = bucket_for(sizes, b)
            assert n in sizes and n >= b and all(s < b for s in sizes if s < n)
        assert bucket_for(sizes, top + 1) is None


# ---- padding, run eagerly -----------------------------------------------------------------------


def _decode_batch(model, pool, prompt_lens, *, seed=0):
    """Prefill random prompts of these lengths through the scheduler (eagerly); return the first
    all-decode batch (every sequence's next token) and its scheduler."""
    rng = random.Random(seed)
    sched = Scheduler(pool, max_context=model.config.max_position, enable_prefix_cache=False,
                      max_batch_tokens=max(2048, sum(prompt_lens)))
    for i, n in enumerate(prompt_lens):
        prompt = [rng.randrange(1, model.config.vocab_size) for _ in range(n)]
        sched.add(Request(str(i), prompt, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)))
    while True:
        batch = sched.schedule()
        if batch.forward.is_decode:
            return batch, sched
        logits = model(batch.forward, pool.kv_caches)
        sched.update(batch, logits[batch.sample_rows].argmax(-1).tolist())


def _changed_slots(before, after, page_size):
    """Slots (page * page_size + offset) where any layer's K or V differs."""
    changed = None
    for (k0, v0), (k1, v1) in zip(before, after):
        diff = ((k0 != k1) | (v0 != v1)).flatten(2).any(-1).flatten()  # [num_pages * page_size]
        changed = diff if changed is None else changed | diff
    return set(changed.nonzero().flatten().tolist())


def _snapshot(kv_caches):
    return [(k.clone(), v.clone()) for k, v in kv_caches]


@pytest.fixture(scope="module")
def tiny_cpu(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY))
    return load_model(str(path), load_format="dummy", device="cpu", dtype="float32", seed=2).model


def test_padded_decode_matches_and_writes_only_real_slots(tiny_cpu):
    model = tiny_cpu
    max_pages = -(-model.config.max_position // PS)
    pool = KVPool(2, 1, 64, PS, 256, torch.float32, "cpu")
    inputs = DecodeInputs(8, max_pages, "cpu")
    # A large batch first, then a smaller one: rows the first used must become padding again.
    for lens, n in (([5, 17, 40, 1, 33, 16, 70], 8), ([9, 100, 3], 4)):
        for p in range(pool.num_pages):  # a fresh pool, every page a canary
            for k, v in pool.kv_caches:
                k[p].fill_(0.25)
                v[p].fill_(-0.5)
        pool.allocator = type(pool.allocator)(pool.num_pages)
        batch, _ = _decode_batch(model, pool, lens)
        b = batch.forward.batch_size
        before = _snapshot(pool.kv_caches)
        eager = model(batch.forward, pool.kv_caches)
        eager_written = _changed_slots(before, pool.kv_caches, PS)
        for (k, v), (k0, v0) in zip(pool.kv_caches, before):
            k.copy_(k0)
            v.copy_(v0)

        padded = inputs.load(batch.forward, n)
        assert padded.batch_size == n and padded.is_decode
        assert padded.slot_mapping[b:].eq(-1).all() and padded.kv_lens[b:].eq(1).all()
        assert padded.page_table[b:].eq(0).all() and padded.input_ids[b:].eq(0).all()
        assert padded.page_table.shape[1] == max_pages
        out = model(padded, pool.kv_caches)
        torch.testing.assert_close(out[:b], eager, rtol=1e-5, atol=1e-5)
        written = _changed_slots(before, pool.kv_caches, PS)
        assert written == set(batch.forward.slot_mapping.tolist()) == eager_written


def test_decode_inputs_reject_what_does_not_fit(tiny_cpu):
    pool = KVPool(2, 1, 64, PS, 64, torch.float32, "cpu")
    batch, _ = _decode_batch(tiny_cpu, pool, [40, 3])  # 3 pages wide
    assert DecodeInputs(2, 3, "cpu").fits(batch.forward)
    assert not DecodeInputs(1, 3, "cpu").fits(batch.forward)  # too many rows
    assert not DecodeInputs(2, 2, "cpu").fits(batch.forward)  # too few pages
    with pytest.raises(ValueError, match="does not fit"):
        DecodeInputs(2, 2, "cpu").load(batch.forward, 2)


def test_engine_on_cpu_runs_eagerly(tiny_cpu, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    engine = Engine(str(path), load_format="dummy", device="cpu", dtype="float32", max_total_tokens=1024)
    assert engine.graph_runner is None
    assert len(engine.generate([1, 2, 3], {"temperature": 0.0, "max_tokens": 3})[0].token_ids) == 3


# ---- CUDA graphs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cuda():
    return load_model("llama-tiny", load_format="dummy", device="cuda", dtype="bfloat16", seed=4).model


def _rel_err(a, b):
    return ((a - b).float().norm() / b.float().norm()).item()


@pytest.mark.gpu
def test_graph_decode_matches_eager_bf16(tiny_cuda):
    model = tiny_cuda
    c = model.config
    pool = KVPool(c.num_layers, c.num_kv_heads, c.head_dim, PS, 2048, model.dtype, "cuda")
    canary = pool.alloc(1)  # page 0, never a sequence's: padded rows attend to it, must not write it
    assert canary == [0]
    for k, v in pool.kv_caches:
        k[0].fill_(0.25)
        v[0].fill_(-0.5)
    max_pages = -(-c.max_position // PS)
    runner = CudaGraphRunner(model, pool.kv_caches, max_batch=64, max_pages=max_pages)
    assert runner.sizes == [1, 2, 4, 8, 16, 24, 32, 48, 64]
    rng = random.Random(0)
    replays = 0
    for b in (1, 3, 4, 13, 16, 33, 64):  # hits (1, 4, 16, 64) and misses (3, 13, 33) of the buckets
        lens = [rng.randint(1, 300) for _ in range(b)]
        batch, sched = _decode_batch(model, pool, lens, seed=b)
        fb = batch.forward
        assert runner.can_run(fb)
        before = _snapshot(pool.kv_caches)

        graph = runner.run(fb).clone()
        replays += 1
        assert runner.num_replays == replays
        assert graph.shape == (b, c.vocab_size) and graph.dtype == model.dtype
        written = _changed_slots(before, pool.kv_caches, PS)
        assert written <= set(fb.slot_mapping.tolist()), "the graph wrote K/V outside the batch's slots"
        for k, v in pool.kv_caches:
            assert k[0].eq(0.25).all() and v[0].eq(-0.5).all(), "a padded row wrote the canary page"
        graph_kv = _snapshot(pool.kv_caches)

        # Eager, from the same cache: once as the scheduler built the batch, once with the graphs'
        # page-table width (the decode kernel sizes its split-KV work from the width).
        def eager(batch):
            for (k, v), (k0, v0) in zip(pool.kv_caches, before):
                k.copy_(k0)
                v.copy_(v0)
            return model(batch, pool.kv_caches)

        plain = eager(fb)
        wide_table = torch.zeros(b, max_pages, dtype=torch.int32, device="cuda")
        wide_table[:, : fb.page_table.shape[1]] = fb.page_table
        fields = {f: getattr(fb, f) for f in ForwardBatch.__dataclass_fields__}
        wide = eager(ForwardBatch(**dict(fields, page_table=wide_table)))
        for (k, v), (k1, v1) in zip(pool.kv_caches, graph_kv):  # the same K/V written, up to bf16 rounding
            assert _rel_err(k1, k) < 1e-2 and _rel_err(v1, v) < 1e-2

        # At the graphs' width the graph runs the kernels of eager decode on the same data (bitwise
        # equal on an H100, padding or not); the narrower table of eager decode as built changes
        # the attention's split-KV partition, a bf16 rounding here and there through 4 layers.
        errors = (_rel_err(graph, wide), _rel_err(graph, plain))
        print(f"batch {b}: relative error against eager at the graphs' width {errors[0]:.1e}, as built {errors[1]:.1e}")
        assert errors[0] < 1e-3, b
        assert errors[1] < 3e-2, b
        # Greedy tokens agree wherever eager's choice is clear of rounding.
        diff = (graph - plain).abs().max().item()
        top2 = plain.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * diff + 1e-6
        assert torch.equal(graph.argmax(-1)[clear], plain.argmax(-1)[clear]), b

        for req in list(sched.running):
            sched.finish(req)


def _engine(model, **kw):
    return Engine(model, max_total_tokens=8192, max_running_requests=64, **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("graph_max_batch", [4, 64])
def test_engine_graph_decode_gives_eager_tokens_fp32(graph_max_batch):
    """End to end in float32 (no bf16 rounding to tip a near tie): greedy and seeded sampling give
    the same tokens and logprobs with and without graphs, with decode batches shrinking through
    sizes that hit and miss the buckets, and (max batch 4) beyond the largest graph."""
    loaded = load_model("llama-tiny", load_format="dummy", device="cuda", dtype="float32", seed=5)
    rng = random.Random(1)
    prompts = [[rng.randrange(3, loaded.config.vocab_size) for _ in range(rng.randint(1, 200))] for _ in range(37)]
    params = [
        {"temperature": 0.0 if i % 3 else 0.8, "seed": i, "max_tokens": 4 + (i * 7) % 29, "ignore_eos": True,
         "logprobs": 2}
        for i in range(len(prompts))
    ]
    eager = _engine(loaded, cuda_graph=False)
    assert eager.graph_runner is None
    want = eager.generate(prompts, params)
    del eager
    graphed = _engine(loaded, cuda_graph=True, cuda_graph_max_batch=graph_max_batch)
    assert graphed.graph_runner is not None and graphed.graph_runner.max_batch == graph_max_batch
    got = graphed.generate(prompts, params)
    assert graphed.graph_runner.num_replays > 0
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        for lg, lw in zip(g.logprobs, w.logprobs):
            assert lg.token_id == lw.token_id and abs(lg.logprob - lw.logprob) < 1e-4
