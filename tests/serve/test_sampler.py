import math

import pytest
import torch

from kernels.serve.sampling import SamplingParams, Sampler, make_generator
from kernels.serve.sampling.sampler import argmax_rows, chunked_argmax
from kernels.serve.sampling.penalties import apply_penalties

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def sample(logits, params, prompt_ids=None, output_ids=None, generators=None):
    batch = logits.shape[0]
    return Sampler().sample(
        logits,
        params,
        prompt_ids if prompt_ids is not None else [[] for _ in range(batch)],
        output_ids if output_ids is not None else [[] for _ in range(batch)],
        generators if generators is not None else [None] * batch,
    )


def reference_probs(logits, p):
    """float64 probabilities of one row after temperature, top-k, top-p and min-p, written
    token by token; also returns how far the top-p cut is from being a tie (0 if unused)."""
    probs = torch.softmax(logits.double() / p.temperature, dim=0).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep = set(order[: p.top_k] if p.top_k > 0 else order)
    margin = math.inf
    if p.top_p < 1:
        total = sum(probs[i] for i in keep)
        before, kept = 0.0, set()
        for i in order:
            if i not in keep:
                continue
            margin = min(margin, abs(before / total - p.top_p))
            if before / total < p.top_p:
                kept.add(i)
            before += probs[i]
        keep = kept
    best = max(probs)
    keep = {i for i in keep if probs[i] >= p.min_p * best}
    total = sum(probs[i] for i in keep)
    return torch.tensor([probs[i] / total if i in keep else 0.0 for i in range(len(probs))]), margin


def check_distribution(tokens, expected):
    """No excluded token drawn; every frequency within 5 standard errors of its probability."""
    n = tokens.numel()
    freq = torch.bincount(tokens.cpu(), minlength=expected.numel()).double() / n
    assert (freq[expected == 0] == 0).all(), f"excluded token drawn: {freq} vs {expected}"
    tolerance = 5 * (expected * (1 - expected) / n).sqrt() + 1e-9
    assert ((freq - expected).abs() <= tolerance).all(), f"{freq} vs {expected}"


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_is_argmax(device):
    logits = torch.randn(16, 1000, device=device) * 3
    out = sample(logits, [SamplingParams(temperature=0)] * 16)
    assert out.token_ids.dtype == torch.int64 and out.token_ids.shape == (16,)
    torch.testing.assert_close(out.token_ids, logits.argmax(dim=-1))
    assert out.logprobs is None and out.top_ids is None  # nobody asked: no normaliser pass
    out = sample(logits, [SamplingParams(temperature=0, logprobs=0)] * 16)
    expected = torch.log_softmax(logits, dim=-1).amax(dim=-1)
    torch.testing.assert_close(out.logprobs, expected)
    assert out.top_ids is None and out.top_logprobs is None


@pytest.mark.parametrize("device", DEVICES)
def test_row_argmax_takes_the_first_max(device):
    # Integer logits tie often, and a NaN counts as the max: the two-pass argmax must pick what
    # torch.argmax picks in every row.
    for rows, vocab, chunks in ((64, 128256, 48), (3, 49152, 64), (5, 3000, 3)):
        x = torch.randint(-4, 4, (rows, vocab), device=device).float()
        x[0, 7::101] = float("nan")
        expected = x.argmax(dim=-1)
        assert torch.equal(chunked_argmax(x, chunks), expected)
        assert torch.equal(argmax_rows(x), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_logits(device):
    # A bf16 model's logits: greedy takes the argmax in bf16 (exact), logprobs come in float32.
    logits = (torch.randn(8, 3000, device=device) * 3).bfloat16()
    out = sample(logits, [SamplingParams(temperature=0)] * 8)
    assert torch.equal(out.token_ids, logits.float().argmax(dim=-1))
    out = sample(logits, [SamplingParams(temperature=0, logprobs=0)] * 8)
    assert out.logprobs.dtype == torch.float32
    torch.testing.assert_close(out.logprobs, torch.log_softmax(logits.float(), dim=-1).amax(dim=-1))


def test_tiny_temperature_and_top_k_one_are_greedy():
    logits = torch.randn(8, 500) * 4
    params = [SamplingParams(temperature=1e-30)] * 4 + [SamplingParams(top_k=1, temperature=3)] * 4
    out = sample(logits, params)
    torch.testing.assert_close(out.token_ids, logits.argmax(dim=-1))


def test_mixed_greedy_and_random_rows():
    logits = torch.randn(1, 64).expand(2000, 64).contiguous()
    params = [SamplingParams(temperature=0 if i % 2 else 1.0) for i in range(2000)]
    out = sample(logits, params)
    best = logits[0].argmax()
    assert (out.token_ids[1::2] == best).all()
    # The random rows spread over many tokens: 1000 draws from the softmax of 64 standard normal
    # logits leave out only a few of the least likely tokens.
    assert out.token_ids[0::2].unique().numel() > 40


FILTERS = [
    dict(temperature=1.0),
    dict(temperature=0.6),
    dict(temperature=1.7, top_k=3),
    dict(top_k=5, temperature=0.8),
    dict(min_p=0.2),
    dict(min_p=0.05, temperature=2.0),
    dict(top_k=6, top_p=0.7, min_p=0.02, temperature=1.3),
    dict(top_k=-1, top_p=0.95),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs", FILTERS)
def test_filters_match_reference_distribution(kwargs, device):
    vocab, draws = 12, 20000
    params = SamplingParams(**kwargs)
    margin = 0.0
    # Redraw the rare inputs with a token within 1e-4 of the top-p cut, where float32 and the
    # float64 reference may disagree on which side it falls.
    while margin <= 1e-4:
        logits = torch.randn(vocab, dtype=torch.float32) * 1.5
        expected, margin = reference_probs(logits, params)
    batch = logits.to(device).expand(draws, vocab).contiguous()
    out = sample(batch, [params] * draws)
    check_distribution(out.token_ids, expected)


def test_top_p_cut():
    # top_p halfway between two cumulative masses: exactly the tokens up to the cut survive.
    vocab, draws = 10, 20000
    logits = torch.randn(vocab) * 2
    cumulative = torch.softmax(logits.double(), dim=0).sort(descending=True).values.cumsum(0)
    for keep in (1, 3, 6):
        top_p = float(cumulative[keep - 2 : keep].mean()) if keep > 1 else 0.01
        params = SamplingParams(top_p=top_p)
        expected, _ = reference_probs(logits, params)
        assert (expected > 0).sum() == keep
        out = sample(logits.expand(draws, vocab).contiguous(), [params] * draws)
        check_distribution(out.token_ids, expected)


def test_seeded_rows_follow_the_distribution():
    # Each row draws from its own generator: their draws together still follow the distribution.
    vocab, rows = 8, 3000
    logits = torch.randn(vocab)
    params = [SamplingParams(seed=s, top_k=5) for s in range(rows)]
    generators = [make_generator(s, "cpu") for s in range(rows)]
    out = sample(logits.expand(rows, vocab).contiguous(), params, generators=generators)
    check_distribution(out.token_ids, reference_probs(logits, params[0])[0])


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_request_is_independent_of_the_batch(device):
    vocab, steps = 1000, 6
    target = SamplingParams(seed=1234, top_p=0.9, frequency_penalty=0.5)
    target_logits = [torch.randn(vocab, device=device) * 0.3 for _ in range(steps)]

    def run(batch_size, position):
        generators = [None] * batch_size
        params = [SamplingParams(temperature=0.9) for _ in range(batch_size)]
        for i in range(0, batch_size, 2):
            params[i] = SamplingParams(seed=i + 7)
            generators[i] = make_generator(i + 7, device)
        if batch_size > 2:
            params[1] = SamplingParams(temperature=0)
        params[position] = target
        generators[position] = make_generator(target.seed, device)
        outputs = [[] for _ in range(batch_size)]
        for step in range(steps):
            logits = torch.randn(batch_size, vocab, device=device)
            logits[position] = target_logits[step]
            out = sample(logits, params, [[1, 2]] * batch_size, outputs, generators)
            for row, token in enumerate(out.token_ids.tolist()):
                outputs[row] = outputs[row] + [token]
        return outputs[position]

    alone = run(1, 0)
    assert run(5, 3) == alone
    assert run(8, 0) == alone
    assert run(2, 1) == alone
    target.seed = 4321
    assert run(1, 0) != alone  # near-flat over 1000 tokens: 6 equal draws would be a fluke


def reference_penalties(logits, p, prompt, output):
    rows = logits.tolist()
    for t in range(len(rows)):
        if t in prompt or t in output:
            r = p.repetition_penalty
            rows[t] = rows[t] / r if rows[t] > 0 else rows[t] * r
        count = output.count(t)
        rows[t] -= p.frequency_penalty * count + p.presence_penalty * (count > 0)
    return torch.tensor(rows)


PENALTIES = [
    SamplingParams(),
    SamplingParams(repetition_penalty=1.3),
    SamplingParams(repetition_penalty=0.7, presence_penalty=0.4, frequency_penalty=-0.3),
    SamplingParams(presence_penalty=-1.5, frequency_penalty=0.8),
    SamplingParams(repetition_penalty=2.0, frequency_penalty=2.0, temperature=0),
]


def test_penalties_match_reference():
    vocab = 40
    logits = torch.randn(len(PENALTIES), vocab) * 2
    prompts = [torch.randint(0, vocab, (n,)).tolist() for n in (0, 5, 17, 3, 30)]
    outputs = [torch.randint(0, vocab, (n,)).tolist() for n in (9, 0, 25, 12, 4)]
    before = logits.clone()
    got = apply_penalties(logits, PENALTIES, prompts, outputs)
    assert torch.equal(logits, before)
    for row, p in enumerate(PENALTIES):
        expected = reference_penalties(logits[row], p, prompts[row], outputs[row])
        torch.testing.assert_close(got[row], expected)

    # The sampler uses them: greedy picks the penalised argmax, logprobs come from them.
    greedy = [SamplingParams(**{**vars(p), "temperature": 0, "logprobs": 3}) for p in PENALTIES]
    out = sample(logits, greedy, prompts, outputs)
    torch.testing.assert_close(out.token_ids, got.argmax(dim=-1))
    torch.testing.assert_close(out.top_logprobs, torch.log_softmax(got, -1).topk(3).values)


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_match_log_softmax(device):
    batch, vocab = 6, 300
    logits = torch.randn(batch, vocab, device=device) * 2
    params = [
        SamplingParams(logprobs=5, top_k=10),
        SamplingParams(),
        SamplingParams(logprobs=0, temperature=0),
        SamplingParams(logprobs=20, temperature=0.5, top_p=0.5, repetition_penalty=1.2),
        SamplingParams(logprobs=2, min_p=0.1, presence_penalty=1.0),
        SamplingParams(logprobs=1, temperature=0, frequency_penalty=-0.5),
    ]
    prompts = [[0, 1, 2]] * batch
    outputs = [[5, 5, 7]] * batch
    out = sample(logits, params, prompts, outputs)
    expected = torch.log_softmax(apply_penalties(logits, params, prompts, outputs), dim=-1)
    torch.testing.assert_close(out.logprobs, expected.gather(1, out.token_ids[:, None])[:, 0])
    assert out.top_ids.shape == (batch, 20) and out.top_logprobs.dtype == torch.float32
    torch.testing.assert_close(out.top_logprobs, expected.topk(20, dim=-1).values)
    # Compared through their logprobs, since near-ties may order two ids either way.
    torch.testing.assert_close(expected.gather(1, out.top_ids), out.top_logprobs)
    assert all(len(set(row)) == 20 for row in out.top_ids.tolist())
    # logprobs=0 alone asks for the chosen token's logprob and no alternatives.
    only_chosen = sample(logits[:1], [SamplingParams(logprobs=0)])
    assert only_chosen.top_ids is None and only_chosen.logprobs.shape == (1,)


def test_logits_not_modified():
    logits = torch.randn(3, 50)
    before = logits.clone()
    params = [SamplingParams(top_k=4, repetition_penalty=1.5, min_p=0.1, logprobs=3)] * 3
    sample(logits, params, [[1, 2, 3]] * 3, [[4, 4]] * 3)
    assert torch.equal(logits, before)


def test_bad_arguments():
    logits = torch.randn(2, 10)
    params = [SamplingParams()] * 2
    with pytest.raises(ValueError, match="params"):
        sample(logits, params[:1])
    with pytest.raises(ValueError, match="output_ids"):
        sample(logits, params, output_ids=[[]])
    with pytest.raises(ValueError, match="generators"):
        sample(logits, params, generators=[None])
    with pytest.raises(ValueError, match=r"generators\[1\]"):
        sample(logits, [SamplingParams(), SamplingParams(seed=3)])
    with pytest.raises(TypeError, match=r"params\[0\]"):
        sample(logits, [{"temperature": 0}, SamplingParams()])
    with pytest.raises(ValueError, match="logits"):
        sample(torch.randn(10), params[:1])
    with pytest.raises(TypeError, match="logits"):
        sample(torch.zeros(2, 10, dtype=torch.int64), params)
    penalised = [SamplingParams(repetition_penalty=1.2)] * 2
    with pytest.raises(ValueError, match="row 1"):
        sample(logits, penalised, [[1], [10]], [[], []])
    with pytest.raises(ValueError, match="row 0"):
        sample(logits, penalised, [[1], [2]], [[-1], []])
