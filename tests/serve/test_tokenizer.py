"""Tokenizer from the default GGUF: chat template, EOS ids, and streaming detokenization."""

import random

import pytest

from kernels.serve.loader import default_model_path
from kernels.serve.tokenizer import IncrementalDetokenizer, Tokenizer

pytest.importorskip("transformers")

# Accents, CJK and emoji: byte-level BPE splits these characters across tokens.
TEXTS = ["Hello, world! How are you?", "naïve café — déjà vu", "日本語のテキストです。", "emoji 🤖🚀 and 👩‍👩‍👧 family", "  spaces\n\ttabs  "]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_gguf(default_model_path())


def test_encode_decode_round_trip(tok):
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def test_chat_template_from_gguf(tok):
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    ids = tok.apply_chat_template(messages)
    ref = tok.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids == ref
    assert tok.decode(ids, skip_special_tokens=False).endswith("What is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")


def test_eos_ids(tok):
    assert tok.eos_token_ids == {tok.hf.convert_tokens_to_ids("<|im_end|>")}
    assert Tokenizer(tok.hf, eos_token_ids=[7]).eos_token_ids == tok.eos_token_ids | {7}


def test_incremental_detokenizer_matches_full_decode(tok):
    prompt = tok.encode("Say something:")
    rng = random.Random(0)
    for text in TEXTS + ["".join(rng.sample("".join(TEXTS), 40))]:
        ids = tok.encode(text)
        detok = IncrementalDetokenizer(tok, prompt)
        pieces = [detok.add(t) for t in ids]
        assert all("\ufffd" not in p for p in pieces), pieces
        assert "".join(pieces) == detok.text == tok.decode(prompt + ids)[len(tok.decode(prompt)):]


def test_incremental_detokenizer_holds_split_characters(tok):
    ids = tok.encode("🤖")
    assert len(ids) > 1  # the emoji's bytes span tokens
    detok = IncrementalDetokenizer(tok, [])
    assert [detok.add(t) for t in ids] == [""] * (len(ids) - 1) + ["🤖"]


def test_special_tokens_skipped(tok):
    detok = IncrementalDetokenizer(tok, tok.encode("Hi"))
    assert detok.add(tok.hf.convert_tokens_to_ids("<|im_end|>")) == ""
    assert detok.add(tok.encode(" there")[0]) == " there"


def test_bad_input(tok):
    with pytest.raises(TypeError, match="text"):
        tok.encode(["not", "a", "str"])
    with pytest.raises(ValueError, match="messages"):
        tok.apply_chat_template([])
    bare = Tokenizer(tok.hf)
    bare.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])
