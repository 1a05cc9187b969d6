"""CausalLM against transformers: the default GGUF, an exported HF directory, and tiny random configs.

The model is driven directly through ForwardBatch over a hand-made paged KV cache (pages handed
out in shuffled order), as the scheduler will drive it: a ragged prefill of several sequences, then
batched decode steps.
"""

import copy
import json
import math
import os

import pytest
import torch

from kernels.serve.engine import Engine
from kernels.serve.forward_batch import ForwardBatch
from kernels.serve.loader import default_model_path, load_model
from kernels.serve.loader.dummy import CONFIG_DIR

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "List three colours of the rainbow:",
    "Water boils at",
    "import numpy as np\n",
    "The three laws of motion are",
    "Q: What is 12 times 7?\nA:",
]
NEW_TOKENS = 32


class PagedRunner:
    """Runs ``model`` on a fixed set of sequences, each step feeding every sequence a chunk of tokens."""

    def __init__(self, model, num_seqs: int, max_len: int, page_size: int = 16) -> None:
        c, self.model, self.page_size = model.config, model, page_size
        pages_per_seq = math.ceil(max_len / page_size)
        num_pages = num_seqs * pages_per_seq + 1
        shape = (num_pages, page_size, c.num_kv_heads, c.head_dim)
        # NaN-filled so that reading a slot nobody wrote shows up in the logits.
        self.kv_caches = [
            (torch.full(shape, float("nan"), dtype=model.dtype, device=model.device),
             torch.full(shape, float("nan"), dtype=model.dtype, device=model.device))
            for _ in range(c.num_layers)
        ]
        pages = torch.randperm(num_pages)[: num_seqs * pages_per_seq]
        self.page_table = pages.view(num_seqs, pages_per_seq).to(torch.int32)
        self.lens = [0] * num_seqs

    def step(self, chunks: list[list[int]]) -> torch.Tensor:
        """Feed ``chunks[i]`` (at least one token) to sequence ``i``; return the logits of each last token."""
        ids, positions, slots, counts = [], [], [], []
        for i, chunk in enumerate(chunks):
            pos = range(self.lens[i], self.lens[i] + len(chunk))
            ids += chunk
            positions += pos
            slots += [int(self.page_table[i, p // self.page_size]) * self.page_size + p % self.page_size for p in pos]
            counts.append(len(chunk))
            self.lens[i] += len(chunk)
        dev = self.model.device
        indptr = torch.tensor([0] + counts).cumsum(0)
        batch = ForwardBatch(
            input_ids=torch.tensor(ids, device=dev),
            positions=torch.tensor(positions, device=dev),
            slot_mapping=torch.tensor(slots, device=dev),
            page_table=self.page_table.to(dev),
            qo_indptr=indptr.to(torch.int32).to(dev),
            kv_lens=torch.tensor(self.lens, dtype=torch.int32, device=dev),
            logits_indices=(indptr[1:] - 1).to(dev),
            is_decode=all(n == 1 for n in counts),
        )
        return self.model(batch, self.kv_caches)


def greedy(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuation of all prompts at once: one ragged prefill, then batched decode steps."""
    runner = PagedRunner(model, len(prompts), max(map(len, prompts)) + new_tokens)
    out = [[] for _ in prompts]
    logits = runner.step(prompts)
    for _ in range(new_tokens):
        nxt = logits.argmax(-1).tolist()
        for o, t in zip(out, nxt):
            o.append(t)
        logits = runner.step([[t] for t in nxt])
    return out


def hf_greedy(hf_model, prompt: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt], device=hf_model.device)
    out = hf_model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=0, do_sample=False
    )
    return out[0, len(prompt):].tolist()


def no_eos(hf_model):
    # Compare all NEW_TOKENS tokens: without this, generate stops (and pads) at the first EOS.
    hf_model.generation_config.eos_token_id = None
    hf_model.generation_config.pad_token_id = 0
    return hf_model


# ---- the default model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ours():
    # Token-identical to transformers in float32 needs its math: the weights dequantised at load
    # (the default on CPU keeps Q4 weights packed for the INT4 GEMM; tests/serve/test_int4_path.py).
    return load_model(None, device="cpu", dtype="float32", quantized_weights="dequantize")


@pytest.fixture(scope="module")
def hf_gguf():
    directory, name = os.path.split(default_model_path())
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    return no_eos(model.eval())


@pytest.fixture(scope="module")
def prompt_ids(ours):
    return [ours.tokenizer.encode(p) for p in PROMPTS]


def engine_greedy(loaded, prompt_ids) -> list[list[int]]:
    """Greedy tokens through the product path: the engine, all prompts in one batch."""
    params = {"max_tokens": NEW_TOKENS, "temperature": 0.0, "ignore_eos": True}
    return [o.token_ids for o in Engine(loaded).generate(prompt_ids, params)]


@pytest.fixture(scope="module")
def our_tokens(ours, prompt_ids):
    return engine_greedy(ours, prompt_ids)


def test_prefill_logits_match_transformers(ours, hf_gguf, prompt_ids):
    logits = PagedRunner(ours.model, len(prompt_ids), 64).step(prompt_ids)
    with torch.no_grad():
        ref = torch.stack([hf_gguf(torch.tensor([p])).logits[0, -1] for p in prompt_ids])
    err = (logits - ref).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), f"max abs error {err:.3e} (logits up to {ref.abs().max():.1f})"


def test_greedy_matches_transformers(our_tokens, hf_gguf, prompt_ids):
    for prompt, tokens in zip(prompt_ids, our_tokens):
        assert tokens == hf_greedy(hf_gguf, prompt, NEW_TOKENS)


def test_hf_directory_export_matches_gguf(tmp_path, hf_gguf, ours, prompt_ids, our_tokens):
    # A GGUF-loaded transformers model refuses save_pretrained (its quantizer is not
    # serialisable), so its dequantised weights go into a plain model of the same config.
    config = copy.deepcopy(hf_gguf.config)
    del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(hf_gguf.state_dict())
    plain.save_pretrained(tmp_path)
    ours.tokenizer.hf.save_pretrained(tmp_path)
    exported = load_model(str(tmp_path), device="cpu", dtype="float32")
    assert exported.config == ours.config
    assert exported.tokenizer.encode(PROMPTS[0]) == prompt_ids[0]
    assert engine_greedy(exported, prompt_ids) == our_tokens


# ---- tiny random models of each architecture ----------------------------------------------------

TINY = dict(
    vocab_size=512, hidden_size=256, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, max_position_embeddings=256, rms_norm_eps=1e-5,
)
TINY_CONFIGS = {
    "llama3-rope": transformers.LlamaConfig(
        **TINY, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32, "rope_theta": 10000.0},
    ),
    "llama-tied": transformers.LlamaConfig(**TINY, tie_word_embeddings=True),
    "mistral-window": transformers.MistralConfig(**TINY, sliding_window=24),
    "qwen2-bias": transformers.Qwen2Config(**TINY, tie_word_embeddings=False),
    "qwen3-qknorm": transformers.Qwen3Config(**TINY, tie_word_embeddings=True),
}


def random_hf_directory(hf_config, path) -> None:
    """Save a transformers model of ``hf_config`` whose every weight (norms and biases too) is random."""
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim == 2 else 0.1))
    model.save_pretrained(path)


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_tiny_model_matches_transformers(kind, tmp_path):
    hf_config = TINY_CONFIGS[kind]
    random_hf_directory(hf_config, tmp_path)
    model = load_model(str(tmp_path), device="cpu", dtype="float32").model
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, local_files_only=True)
    # Two sequences of different lengths: two prefill chunks (the second over a cached prefix,
    # past the sliding window), then decode steps fed the reference's own tokens.
    lens = [60, 45]
    seqs = [torch.randint(0, hf_config.vocab_size, (n,)).tolist() for n in lens]
    with torch.no_grad():
        ref = [ref_model(torch.tensor([s])).logits[0] for s in seqs]
    runner = PagedRunner(model, 2, max(lens))
    got = {}  # (sequence, position) -> logits of that position
    for lo, hi in ((0, 20), (20, 37)):
        logits = runner.step([s[lo:hi] for s in seqs])
        got.update({(i, hi - 1): logits[i] for i in range(2)})
    for pos in range(37, min(lens)):
        logits = runner.step([[s[pos]] for s in seqs])
        got.update({(i, pos): logits[i] for i in range(2)})
    for (i, pos), logit in got.items():
        err = (logit - ref[i][pos]).abs().max().item()
        assert err <= 1e-4 * ref[i][pos].abs().max().item(), f"{kind}: sequence {i} position {pos}: error {err:.2e}"


def test_dummy_weights_give_usable_logits():
    model = load_model("llama-tiny", device="cpu", dtype="float32", load_format="dummy").model
    prompts = [torch.randint(0, model.config.vocab_size, (n,)).tolist() for n in (5, 17, 30, 3)]
    logits = PagedRunner(model, len(prompts), 32).step(prompts)
    assert torch.isfinite(logits).all()
    # O(1) logits that depend on the input: neither flat nor saturated, and not one winner for all.
    std = logits.std(dim=1)
    assert ((std > 0.3) & (std < 10)).all(), std
    assert len(set(logits.argmax(1).tolist())) > 1


# ---- acceptance 6 (on CUDA; the same check runs on CPU) ----------------------------------------


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_small_llama_bf16_logits_and_fp32_greedy(device, tmp_path):
    with open(os.path.join(CONFIG_DIR, "llama-tiny.json")) as f:
        hf_config = transformers.LlamaConfig(**json.load(f))
    random_hf_directory(hf_config, tmp_path)
    prompts = [torch.randint(0, hf_config.vocab_size, (n,)).tolist() for n in (7, 33, 100)]

    def hf(dtype):
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype, local_files_only=True)
        return no_eos(model.to(device).eval())

    def last_logits(model):
        with torch.no_grad():
            return torch.stack([model(torch.tensor([p], device=device)).logits[0, -1].float() for p in prompts])

    ref_fp32 = hf(torch.float32)
    ref, ref_bf16 = last_logits(ref_fp32), last_logits(hf(torch.bfloat16))
    ours_bf16 = load_model(str(tmp_path), device=device, dtype="bfloat16").model
    logits = PagedRunner(ours_bf16, len(prompts), 128).step(prompts)
    del ours_bf16

    # Within bf16 tolerance: no further from the float32 logits than transformers' own bf16 run.
    def rel(a):
        return ((a - ref).norm() / ref.norm()).item()

    assert rel(logits) <= max(1.5 * rel(ref_bf16), 1e-2), f"ours {rel(logits):.2e}, transformers bf16 {rel(ref_bf16):.2e}"

    ours = load_model(str(tmp_path), device=device, dtype="float32").model
    for prompt, tokens in zip(prompts, greedy(ours, prompts, NEW_TOKENS)):
        assert tokens == hf_greedy(ref_fp32, prompt, NEW_TOKENS)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_cublaslt_preference_is_scoped_to_the_forward(device):
    from kernels.serve.model.linear import prefer_cublaslt

    before = torch.backends.cuda.preferred_blas_library()
    with prefer_cublaslt(torch.device(device)):
        inside = torch.backends.cuda.preferred_blas_library()
    assert torch.backends.cuda.preferred_blas_library() == before
    expected = torch._C._BlasBackend.Cublaslt if device == "cuda" else before
    assert inside == expected
