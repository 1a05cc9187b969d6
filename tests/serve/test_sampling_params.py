import math

import pytest

from kernels.serve.sampling import SamplingParams


def test_defaults():
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (128, 1.0, 0, 1.0, 0.0)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.0, 0.0, 0.0)
    assert (p.seed, p.stop, p.stop_token_ids) == (None, [], [])
    assert (p.ignore_eos, p.logprobs) == (False, None)
    assert not p.greedy
    assert SamplingParams(temperature=0).greedy
    # Each instance owns its lists.
    assert SamplingParams().stop is not p.stop


def test_normalisation():
    p = SamplingParams(temperature=1, top_p=1, stop="###", stop_token_ids=(3, 4), seed=2**64 - 1)
    assert isinstance(p.temperature, float) and isinstance(p.top_p, float)
    assert p.stop == ["###"] and p.stop_token_ids == [3, 4] and p.seed == 2**64 - 1
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop=["x"] * 16).stop == ["x"] * 16


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=0.0, top_k=-1),
        dict(top_k=0, top_p=1e-9, min_p=1.0),
        dict(min_p=0.0, repetition_penalty=1e-3),
        dict(presence_penalty=-2, frequency_penalty=2),
        dict(seed=0, logprobs=0),
        dict(logprobs=20, max_tokens=1, ignore_eos=True),
    ],
)
def test_bounds_accepted(kwargs):
    p = SamplingParams(**kwargs)
    for k, v in kwargs.items():
        assert getattr(p, k) == v


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(max_tokens=0), ValueError, "max_tokens"),
        (dict(max_tokens=-5), ValueError, "max_tokens"),
        (dict(max_tokens=1.0), TypeError, "max_tokens"),
        (dict(max_tokens=True), TypeError, "max_tokens"),
        (dict(max_tokens="10"), TypeError, "max_tokens"),
        (dict(temperature=-0.1), ValueError, "temperature"),
        (dict(temperature=math.inf), ValueError, "temperature"),
        (dict(temperature=math.nan), ValueError, "temperature"),
        (dict(temperature="0.7"), TypeError, "temperature"),
        (dict(temperature=None), TypeError, "temperature"),
        (dict(temperature=False), TypeError, "temperature"),
        (dict(top_k=-2), ValueError, "top_k"),
        (dict(top_k=2.5), TypeError, "top_k"),
        (dict(top_k=True), TypeError, "top_k"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.01), ValueError, "top_p"),
        (dict(top_p=-0.5), ValueError, "top_p"),
        (dict(top_p=math.nan), ValueError, "top_p"),
        (dict(top_p="1"), TypeError, "top_p"),
        (dict(min_p=-0.01), ValueError, "min_p"),
        (dict(min_p=1.5), ValueError, "min_p"),
        (dict(min_p=[0.1]), TypeError, "min_p"),
        (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
        (dict(repetition_penalty=-1.0), ValueError, "repetition_penalty"),
        (dict(repetition_penalty=math.inf), ValueError, "repetition_penalty"),
        (dict(presence_penalty=2.5), ValueError, "presence_penalty"),
        (dict(presence_penalty=-2.01), ValueError, "presence_penalty"),
        (dict(presence_penalty="0"), TypeError, "presence_penalty"),
        (dict(frequency_penalty=3), ValueError, "frequency_penalty"),
        (dict(frequency_penalty=math.nan), ValueError, "frequency_penalty"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(seed=1.0), TypeError, "seed"),
        (dict(seed="42"), TypeError, "seed"),
        (dict(seed=True), TypeError, "seed"),
        (dict(stop=[""]), ValueError, "stop[0]"),
        (dict(stop=""), ValueError, "stop[0]"),
        (dict(stop=["a", 1]), TypeError, "stop[1]"),
        (dict(stop=["x"] * 17), ValueError, "stop"),
        (dict(stop=None), TypeError, "stop"),
        (dict(stop=5), TypeError, "stop"),
        (dict(stop_token_ids=[1, -1]), ValueError, "stop_token_ids[1]"),
        (dict(stop_token_ids=[1.0]), TypeError, "stop_token_ids[0]"),
        (dict(stop_token_ids=[False]), TypeError, "stop_token_ids[0]"),
        (dict(stop_token_ids=7), TypeError, "stop_token_ids"),
        (dict(stop_token_ids="12"), TypeError, "stop_token_ids"),
        (dict(ignore_eos=1), TypeError, "ignore_eos"),
        (dict(ignore_eos="yes"), TypeError, "ignore_eos"),
        (dict(logprobs=21), ValueError, "logprobs"),
        (dict(logprobs=-1), ValueError, "logprobs"),
        (dict(logprobs=True), TypeError, "logprobs"),
        (dict(logprobs=2.0), TypeError, "logprobs"),
    ],
)
def test_bad_values_name_the_parameter(kwargs, error, name):
    with pytest.raises(error, match=r"^" + name.replace("[", r"\[").replace("]", r"\]")):
        SamplingParams(**kwargs)


def test_validate_after_mutation():
    p = SamplingParams()
    p.top_p = 2.0
    with pytest.raises(ValueError, match="top_p"):
        p.validate()
    p.top_p, p.stop = 0.5, "END"
    p.validate()
    assert p.stop == ["END"]


def test_unknown_keys():
    with pytest.raises(TypeError, match="tempreature"):
        SamplingParams(tempreature=0.5)
    with pytest.raises(ValueError, match="n, tempreature"):
        SamplingParams.from_mapping({"tempreature": 0.5, "top_k": 3, "n": 2})
    with pytest.raises(TypeError, match="mapping"):
        SamplingParams.from_mapping([("top_k", 3)])
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams.from_mapping({"top_k": -7})
    p = SamplingParams.from_mapping({"temperature": 0, "max_tokens": 8, "stop": "\n"})
    assert p == SamplingParams(temperature=0.0, max_tokens=8, stop=["\n"])
