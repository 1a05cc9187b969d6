"""``kernels bench offline``: offline throughput of the serving engine, against its roofline and a peer.

The workload: ``N`` requests of ``IN`` random prompt tokens each (seeded), all submitted at once to
an :class:`~kernels.serve.engine.Engine`, each generating exactly ``OUT`` tokens (greedy,
``ignore_eos``). Defaults: 64 x 128 x 128 (issue 6, acceptance 7); ``--workload decode1`` is one
request of 128 + 128 (acceptance 8: single-request decode speed).

What one run does, in this order, in one process:

1. loads the model (a path, the default SmolLM2 GGUF, or ``--load-format dummy`` with a config);
2. measures the read bandwidth of the device with the ceiling of ``kernels bench``
   (:func:`kernels.bench.ceilings.read_gbps`: ``src.sum()`` of a float32 buffer far larger than the
   last-level cache, bytes read over the median time);
3. builds the engine and runs the whole workload once on other prompts as a warm-up (every batch
   size the timed run will see is met once, so lazy CUDA-graph capture and compilation stay out of
   timing), then times the workload ``--repeats`` times (default 3), each on its own prompts (the
   first on the peer's, so its tokens can be compared): wall clock from the submission of the
   requests until the last one finishes (``torch.cuda.synchronize`` around it on CUDA). The
   headline numbers are the median run's (the lower middle one for an even count); every run's
   tokens/s is in the record, so the spread inside the process is on file;
4. frees the engine and times the peer ``transformers_generate`` in the memory its KV pool held: the
   same weights (shared, not copied) in a transformers model of the same config, ``generate`` on the
   same batches of prompts (equal lengths, so no padding), ``max_new_tokens = min_new_tokens =
   OUT``, greedy, timed as the engine is: a warm-up run of the whole workload on the warm-up
   prompts, then ``--repeats`` timed runs, the median one reported. The peer comes last because it
   initialises cuDNN (torch's SDPA), after which every kernel launched in the process costs more
   (~0.17 us each on an H100, ~1.6% of the engine's decode step: ``benchmarks/NOTES.md``); timed
   first, the engine runs as it would in a process of its own, where cuDNN is never loaded.

Reported: output tokens/s (the headline ``tokens_per_s``), total tokens/s (prompt + output),
requests/s, wall time, mean time to first token and mean time per output token after the first
(from the engine's step outputs), and ``decode_tokens_per_s`` = 1 / mean TPOT (one request's decode
speed; what llama.cpp's ``tg`` numbers measure).

The roofline (tokens/s the workload could reach if every decode step only had to read its bytes
once at the measured read bandwidth)::

    weight_bytes       = sum of every parameter's bytes, as loaded (packed INT4 / INT8 weights at their
                         packed size; a tied head once)
    kv_bytes_per_token = layers * kv_heads * head_dim * 2 (K and V) * element size
    mean_context       = IN + OUT / 2
                         (decode step t = 1 .. OUT-1 attends IN + t tokens; the mean over the steps)
    bytes_per_step     = weight_bytes + N * mean_context * kv_bytes_per_token
    roofline_tokens_per_s = N / (bytes_per_step / read_bandwidth)

``fraction`` = output tokens/s / roofline_tokens_per_s. Prefill is not in the roofline (it is a
bound on decode; prefill time counts against us in the measured number).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

import kernels

OP = "serve_offline"
WORKLOADS = {"throughput": (64, 128, 128), "decode1": (1, 128, 128)}
PEERS = ("transformers_generate",)
DTYPES = ("auto", "bfloat16", "float16", "float32")
LOAD_FORMATS = ("auto", "gguf", "hf", "dummy")
ROOFLINE_FORMULA = (
    "roofline_tokens_per_s = N / ((weight_bytes + N * (IN + OUT/2) * kv_bytes_per_token) / read_gbps); "
    "kv_bytes_per_token = layers * kv_heads * head_dim * 2 * element_size"
)
# Issue 6, acceptance 8: llama.cpp on "the same kind of machine" (2 CPU threads), SmolLM2-135M,
# single-request decode. Quoted, never measured by this command.
LLAMA_CPP_REFERENCE = {
    "source": "issue 6 acceptance 8 (quoted; not measured in this run)",
    "threads": 2,
    "decode_tokens_per_s": {"Q4_1": 122, "F16": 84, "F32": 54},
}

DESCRIPTION = """\
Offline throughput of the serving engine (kernels.serve.Engine): N requests of IN random prompt
tokens (seeded), submitted together, each generating exactly OUT tokens (greedy, ignore_eos),
timed --repeats times (each on its own prompts; the median run is reported) after a warm-up run
of the same shape on other prompts. Compared in the same run with:

  roofline               N / ((weight bytes + KV bytes per decode step) / read bandwidth): the
                         tokens/s if each decode step only read the weights and the K/V of its
                         sequences once (mean context IN + OUT/2), at the read bandwidth measured
                         at the start of the run (kernels bench's read_gbps: a large sum)
  transformers_generate  transformers' generate on the same batch, with the same weights
                         (shared with ours), max_new_tokens = min_new_tokens = OUT, greedy; warmed
                         up and timed as the engine is, after it (its cuDNN would slow every later
                         kernel launch)

Prints output tokens/s, total tokens/s, requests/s, wall time, mean TTFT and TPOT, and the
fraction of the roofline; --json writes the result file (the layout of every kernels bench file,
op serve_offline, shape NxINxOUT).
"""

EPILOG = """\
examples:
  kernels bench offline --model llama-3-8b --load-format dummy --device cuda --dtype bfloat16 \\
      --json benchmarks/results/h100/                    # issue 6 acceptance 7 (64 x 128 x 128)
  kernels bench offline --workload decode1 --device cpu --threads 2 --peers none
                                                         # SmolLM2 (fp32) single-request decode
  kernels bench offline --model llama-tiny --load-format dummy --device cpu --num-requests 4 \\
      --input-len 16 --output-len 8                      # a quick smoke run

Shipped configs for --load-format dummy (random weights): serve/configs/*.json, by name.
On CPU, single-request runs of the default model also print llama.cpp's decode speed on the same
kind of machine as quoted in issue 6 (Q4_1 122, F16 84, F32 54 tok/s with 2 threads): reference
numbers, not measured here.
"""


class UsageError(ValueError):
    """Bad arguments found after parsing (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# The roofline


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter of ``model`` as loaded (a tied head counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, element_size: int) -> int:
    """K and V of one token in every layer."""
    return num_layers * num_kv_heads * head_dim * 2 * element_size


def roofline(weight_bytes: int, kv_bytes_per_token: int, num_requests: int, input_len: int, output_len: int,
             read_gbps: float | None) -> dict:
    """The token roofline of the workload (see the module docstring): the bytes one decode step
    reads, averaged over the decode steps, over the read bandwidth ``read_gbps`` (GB/s, 1e9)."""
    mean_context = input_len + output_len / 2
    kv_step = num_requests * mean_context * kv_bytes_per_token
    step_bytes = weight_bytes + kv_step
    tokens_per_s = None if not read_gbps else num_requests / (step_bytes / (read_gbps * 1e9))
    return {
        "formula": ROOFLINE_FORMULA,
        "read_gbps": read_gbps,
        "weight_bytes": int(weight_bytes),
        "kv_bytes_per_token": int(kv_bytes_per_token),
        "mean_context": mean_context,
        "kv_bytes_per_step": int(round(kv_step)),
        "bytes_per_step": int(round(step_bytes)),
        "tokens_per_s": tokens_per_s,
    }


# ---------------------------------------------------------------------------------------------
# The workload


def make_prompts(num_requests: int, input_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    """``num_requests`` prompts of ``input_len`` token ids drawn uniformly from the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num_requests, input_len), generator=g).tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(engine, prompts: list[list[int]], output_len: int, tag: str) -> dict:
    """Submit every prompt at once, step until all finish; wall time and per-request timestamps."""
    from kernels.serve.sampling import SamplingParams

    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    before = engine.stats
    before = {k: getattr(before, k) for k in ("prompt_tokens_computed", "prompt_tokens_cached", "tokens_computed",
                                               "preemptions", "steps")}
    _sync(engine.device)
    start = time.perf_counter()
    for rid, prompt in zip(ids, prompts):
        engine.add_request(rid, prompt, params)
    while len(done) < len(ids):
        outputs = engine.step()
        now = time.perf_counter()  # step returns after sampling copied the tokens to the host
        for out in outputs:
            if out.request_id not in tokens:
                continue
            if out.token_ids:
                tokens[out.request_id].extend(out.token_ids)
                first.setdefault(out.request_id, now)
            if out.finished:
                done[out.request_id] = now
        if not outputs and not engine.has_unfinished() and len(done) < len(ids):
            raise RuntimeError("the engine stopped with requests unfinished")
    _sync(engine.device)
    wall = time.perf_counter() - start
    after = engine.stats
    stats = {k: getattr(after, k) - v for k, v in before.items()}
    ttft = [first[i] - start for i in ids]
    tpot = [(done[i] - first[i]) / (len(tokens[i]) - 1) for i in ids if len(tokens[i]) > 1]
    return {
        "wall_s": wall,
        "tokens": [tokens[i] for i in ids],
        "mean_ttft_s": statistics.fmean(ttft),
        "mean_tpot_s": statistics.fmean(tpot) if tpot else None,
        "stats": stats,
    }


# ---------------------------------------------------------------------------------------------
# The peer: transformers' generate on the same weights


class PeerUnavailable(RuntimeError):
    pass


def hf_config(config, dtype: torch.dtype):
    """A transformers config of the same model as our :class:`ModelConfig`."""
    import transformers

    classes = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        if config.rope_scaling.get("rope_type") not in ("linear", "llama3"):
            raise PeerUnavailable(f"transformers has no rope scaling {config.rope_scaling.get('rope_type')!r}")
        rope = {**config.rope_scaling, "rope_theta": config.rope_theta}
    kw = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.max_position, tie_word_embeddings=config.tie_word_embeddings,
        rope_parameters=rope, bos_token_id=config.bos_token_id, eos_token_id=None, pad_token_id=0, dtype=dtype,
    )
    if config.architecture == "llama":
        kw["attention_bias"] = config.qkv_bias
    elif config.architecture == "mistral":
        kw["sliding_window"] = config.sliding_window
    elif config.architecture == "qwen2":
        kw["use_sliding_window"] = False
    return getattr(transformers, classes[config.architecture])(**kw)


def hf_model(model, config):
    """A transformers model whose weights are views of ``model``'s (no copy), ready to generate.

    Built on the meta device, then every Hugging Face-named weight is assigned the slice of our
    fused tensors that holds it (:meth:`CausalLM.weight_slice`; packed weights dequantised); the rotary buffers, which are
    computed rather than loaded, are built afresh on the model's device.
    """
    import transformers

    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config(config, model.dtype), dtype=model.dtype)
    hf.requires_grad_(False)
    state = {name: _float_weight(model.weight_slice(name), model.dtype) for name in model.expected_weight_names()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        hf.tie_weights()
        missing = [n for n in missing if n != "lm_head.weight"]
    if missing or unexpected:
        raise PeerUnavailable(
            f"weights do not map onto transformers' model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, module in list(hf.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            parent, _, attr = name.rpartition(".")
            setattr(hf.get_submodule(parent) if parent else hf, attr, type(module)(hf.config).to(model.device))
    left = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if left:
        raise PeerUnavailable(f"transformers' model kept tensors without values: {left[:3]}")
    hf.eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


def _float_weight(weight, dtype: torch.dtype) -> torch.Tensor:
    """A weight as transformers holds it: packed ones (served through w4a16_gemm / w8a16_gemm) are
    dequantised, in that case a copy rather than a view."""
    if isinstance(weight, kernels.Int4Weight):
        return kernels.dequantize_int4(weight).to(dtype)
    if isinstance(weight, kernels.Int8Weight):
        return kernels.dequantize_int8(weight).to(dtype)
    return weight.detach()


def transformers_generate(model, config, batches: list[list[list[int]]], warm_prompts: list[list[int]] | None,
                          output_len: int) -> dict:
    """Tokens/s of transformers' ``generate``, timed as the engine is: one untimed run of the whole
    workload on ``warm_prompts`` (None: no warm-up, as the engine's ``--no-warmup``; cold, the first
    run was 2.4x slower on an H100: benchmarks/NOTES.md), then one timed run per batch in
    ``batches``; the median run's tokens/s (the lower middle wall, as the engine's), every run's,
    and the first batch's tokens."""
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"transformers is not installed ({e})") from None
    hf = hf_model(model, config)
    device = model.device

    def generate(prompts: list[list[int]]) -> tuple[float, torch.Tensor]:
        ids = torch.tensor(prompts, device=device)
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=output_len,
                              min_new_tokens=output_len, do_sample=False, temperature=None, top_p=None, top_k=None,
                              pad_token_id=0, eos_token_id=None)
        _sync(device)
        return time.perf_counter() - start, out[:, ids.shape[1]:]

    if warm_prompts is not None:
        generate(warm_prompts)
    runs = [generate(prompts) for prompts in batches]
    del hf
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tokens = len(batches[0]) * output_len
    walls = [wall for wall, _ in runs]
    return {"tokens_per_s": tokens / statistics.median_low(walls), "runs_tokens_per_s": [tokens / w for w in walls],
            "tokens": runs[0][1].tolist()}


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kernels bench offline", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", metavar="PATH",
                   help="a GGUF file or Hugging Face directory; with --load-format dummy a config file or the "
                        "name of a shipped config (llama-3-8b, llama-tiny). Default: SmolLM2-135M-Instruct (GGUF)")
    p.add_argument("--load-format", choices=LOAD_FORMATS, default="auto",
                   help="dummy: random weights for the config given by --model (default: by path)")
    p.add_argument("--workload", choices=tuple(WORKLOADS), default="throughput",
                   help="throughput: 64 requests x 128 in x 128 out (default); decode1: 1 x 128 x 128. "
                        "--num-requests/--input-len/--output-len override its numbers")
    p.add_argument("--num-requests", type=int, metavar="N", help="requests submitted together")
    p.add_argument("--input-len", type=int, metavar="IN", help="prompt tokens per request")
    p.add_argument("--output-len", type=int, metavar="OUT", help="tokens generated per request (ignore_eos)")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bfloat16 on GPUs, float32 on CPU")
    p.add_argument("--threads", type=int, metavar="N", help="CPU: torch threads (default: torch's current count)")
    p.add_argument("--peers", metavar="LIST", default="transformers_generate",
                   help=f"comma-separated peers to time ({', '.join(PEERS)}; default all), or none")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and of dummy weights (default 0)")
    p.add_argument("--max-total-tokens", type=int, metavar="T",
                   help="KV pool cap in tokens (default: CPU, enough for the workload; CUDA, the engine's: "
                        "a fraction of the free memory)")
    p.add_argument("--repeats", type=int, default=3, metavar="R",
                   help="timed runs, each on its own prompts; the median one is reported (default 3)")
    p.add_argument("--no-warmup", action="store_true", help="skip the engine's warm-up run (numbers then "
                   "include CUDA-graph capture and first-call costs)")
    p.add_argument("--json", metavar="PATH", help="write the result file: a .json path, or a directory that "
                   f"gets {OP}.json")
    return p


def _positive(parser, name: str, value: int | None) -> None:
    if value is not None and value < 1:
        parser.error(f"{name} must be at least 1, got {value}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    n, i, o = WORKLOADS[args.workload]
    args.num_requests = n if args.num_requests is None else args.num_requests
    args.input_len = i if args.input_len is None else args.input_len
    args.output_len = o if args.output_len is None else args.output_len
    for name in ("num_requests", "input_len", "output_len", "threads", "max_total_tokens", "repeats"):
        _positive(parser, "--" + name.replace("_", "-"), getattr(args, name))
    peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    if peers == ["none"]:
        peers = []
    elif not peers:
        parser.error("--peers is empty; give peer names or none")
    unknown = [s for s in peers if s not in PEERS]
    if unknown:
        parser.error(f"unknown peer {unknown[0]!r} in --peers; choose from {', '.join(PEERS)}, or none")
    args.peer_list = list(dict.fromkeys(peers))
    if args.load_format == "dummy" and args.model is None:
        parser.error("--load-format dummy needs --model: a config file or a shipped config name")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: no CUDA device is available to this torch ({torch.__version__})")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dtype == "auto":
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    return args


def command_line(args) -> str:
    parts = ["kernels", "bench", "offline"]
    if args.model is not None:
        parts += ["--model", args.model]
    if args.load_format != "auto":
        parts += ["--load-format", args.load_format]
    parts += ["--num-requests", str(args.num_requests), "--input-len", str(args.input_len),
              "--output-len", str(args.output_len), "--device", args.device, "--dtype", args.dtype]
    if args.device == "cpu":
        parts += ["--threads", str(torch.get_num_threads())]
    parts += ["--peers", ",".join(args.peer_list) or "none", "--seed", str(args.seed)]
    if args.max_total_tokens is not None:
        parts += ["--max-total-tokens", str(args.max_total_tokens)]
    parts += ["--repeats", str(args.repeats)]
    if args.no_warmup:
        parts.append("--no-warmup")
    if args.json:
        parts += ["--json", args.json]
    return shlex.join(parts)


def json_path(path: str, op: str = OP) -> Path:
    """A ``.json`` path that is not a directory is the file; anything else a directory for ``<op>.json``."""
    p = Path(path)
    return p if p.suffix == ".json" and not p.is_dir() else p / f"{op}.json"


def format_number(v, unit: str = "") -> str:
    """A table cell: ``-`` for a missing value, 4 significant digits for a float."""
    return "-" if v is None else f"{v:,.4g}{unit}" if isinstance(v, float) else f"{v:,}{unit}"


def _round(value, digits: int = 4):
    if value is None:
        return None
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    return value


def run(args) -> int:
    from kernels.bench import ceilings, report
    from kernels.serve.engine import Engine
    from kernels.serve.loader import default_model_path, load_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    n, in_len, out_len = args.num_requests, args.input_len, args.output_len
    where = report.device_name(device) + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    print(f"{OP}: {n} requests x {in_len} in x {out_len} out, greedy, ignore_eos; {where}")

    try:
        loaded = load_model(args.model, device=device, dtype=args.dtype, load_format=args.load_format, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"kernels bench offline: error: {e}", file=sys.stderr)
        return 2
    model, config = loaded.model, loaded.config
    if in_len + out_len > config.max_position:
        print(f"kernels bench offline: error: --input-len + --output-len ({in_len + out_len}) exceeds the model's "
              f"context length ({config.max_position})", file=sys.stderr)
        return 2

    read = ceilings.read_gbps(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the KV pool is sized from the memory free after loading
    print(f"read bandwidth (kernels bench read_gbps): {read:.1f} GB/s")
    is_default_model = args.model is None or (
        os.path.abspath(args.model) == os.path.abspath(default_model_path()) if args.load_format != "dummy" else False
    )

    prompts = make_prompts(n, in_len, config.vocab_size, args.seed)
    warm_prompts = make_prompts(n, in_len, config.vocab_size, args.seed + 1)
    # Timed run r on its own prompts; the first on `prompts`, whose tokens the peer's are checked against.
    timed_prompts = [prompts] + [make_prompts(n, in_len, config.vocab_size, args.seed + 1 + r)
                                 for r in range(1, args.repeats)]

    max_total = args.max_total_tokens
    if max_total is None and device.type == "cpu":
        max_total = max(16384, n * (in_len + out_len + 16))
    try:
        engine = Engine(loaded, max_total_tokens=max_total, max_running_requests=max(256, n))
    except ValueError as e:
        print(f"kernels bench offline: error: {e}", file=sys.stderr)
        return 2
    try:
        if not args.no_warmup:
            print("engine warm-up (the same workload on other prompts) ...", flush=True)
            run_engine(engine, warm_prompts, out_len, "warmup")
        runs = []
        for r, run_prompts in enumerate(timed_prompts):
            print(f"engine timed run {r + 1} of {args.repeats} ...", flush=True)
            runs.append(run_engine(engine, run_prompts, out_len, f"bench{r}"))
    except ValueError as e:  # a request that can never fit: raised at admission
        print(f"kernels bench offline: error: {e}", file=sys.stderr)
        return 2

    lengths = {len(t) for run_ in runs for t in run_["tokens"]}
    if lengths != {out_len}:
        print(f"kernels bench offline: error: requests generated {sorted(lengths)} tokens, expected {out_len}",
              file=sys.stderr)
        return 1
    del engine  # its KV pool and graphs: the memory the peer runs in
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peers: dict[str, float] = {}
    peer_runs: dict[str, list[float]] = {}
    peer_outputs: dict[str, list[list[int]]] = {}
    notes: list[str] = []
    for peer in args.peer_list:
        print(f"peer {peer} ...", flush=True)
        try:
            got = transformers_generate(model, config, timed_prompts, None if args.no_warmup else warm_prompts, out_len)
        except (PeerUnavailable, RuntimeError, ValueError, TypeError) as e:
            note = f"peer {peer} skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(note)
            notes.append(note)
            continue
        peers[peer] = got["tokens_per_s"]
        peer_runs[peer] = got["runs_tokens_per_s"]
        peer_outputs[peer] = got["tokens"]

    walls = [run_["wall_s"] for run_ in runs]
    res = runs[walls.index(statistics.median_low(walls))]
    wall = res["wall_s"]
    out_tps = n * out_len / wall
    roof = roofline(weight_bytes(model), kv_bytes_per_token(config.num_layers, config.num_kv_heads, config.head_dim,
                                                            model.dtype.itemsize),
                    n, in_len, out_len, read)
    fraction = out_tps / roof["tokens_per_s"] if roof["tokens_per_s"] else None
    tpot = res["mean_tpot_s"]
    peer_check = {}
    for peer, toks in peer_outputs.items():  # the first run had the peer's prompts
        peer_check[peer] = {
            "same_first_token": sum(a[:1] == b[:1] for a, b in zip(toks, runs[0]["tokens"])) / n,
            "identical_outputs": sum(a == b for a, b in zip(toks, runs[0]["tokens"])) / n,
        }
    variant = "+".join([loaded.name] + (["dummy"] if args.load_format == "dummy" else []) + ["greedy", "ignore_eos"])
    record = {
        "op": OP,
        "backend": "kernels.serve",
        "variant": variant,
        "shape": f"{n}x{in_len}x{out_len}",
        "dtype": str(model.dtype).removeprefix("torch."),
        "model": loaded.name,
        "load_format": args.load_format,
        "tokens_per_s": _round(out_tps),
        "total_tokens_per_s": _round(n * (in_len + out_len) / wall),
        "requests_per_s": _round(n / wall),
        "wall_s": _round(wall),
        "runs_tokens_per_s": [_round(n * out_len / w) for w in walls],
        "mean_ttft_ms": _round(res["mean_ttft_s"] * 1e3),
        "mean_tpot_ms": _round(tpot * 1e3) if tpot else None,
        "decode_tokens_per_s": _round(1 / tpot) if tpot else None,
        "gbps": None,
        "tflops": None,
        "ceiling": "roofline_tokens_per_s",
        "roofline_tokens_per_s": _round(roof["tokens_per_s"]),
        "fraction": _round(fraction, 3),
        "roofline": {k: v if k == "mean_context" else _round(v) for k, v in roof.items()},
        "peers": {k: _round(v) for k, v in peers.items()},
        "peer_runs_tokens_per_s": {k: [_round(x) for x in v] for k, v in peer_runs.items()},
        "vs_peer": _round(out_tps / max(peers.values()), 3) if peers else None,
        "peer_check": peer_check,
        "engine_stats": res["stats"],
        "warmup": not args.no_warmup,
    }
    if device.type == "cpu" and n == 1 and is_default_model:
        record["reference"] = LLAMA_CPP_REFERENCE
    if notes:
        record["notes"] = notes

    command = command_line(args)
    doc = {"name": OP, "device": report.device_name(device), "commit": report.commit(), "torch": torch.__version__,
           "command": command}
    if device.type == "cpu":
        doc["threads"] = torch.get_num_threads()
    doc["ceilings"] = {"read_gbps": _round(read)}
    doc["timing"] = {
        "method": "wall_clock",
        "what": "submission of all requests to the last one finishing (torch.cuda.synchronize on CUDA), "
                + ("after a warm-up run of the same shape on other prompts" if not args.no_warmup else "no warm-up")
                + f"; the median of {args.repeats} runs, each on its own prompts",
    }
    doc["results"] = [record]
    print()
    print(format_table(record, doc))
    if args.json:
        path = json_path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


def format_table(record: dict, doc: dict) -> str:
    where = doc["device"] + (f", {doc['threads']} threads" if "threads" in doc else "")
    r = record
    roof = r["roofline"]
    num = format_number

    def runs_text(runs) -> str:
        return f"median of {len(runs)} runs: {', '.join(num(t) for t in runs)}"

    rows = [
        ("model", f"{r['model']} ({r['load_format']}, {r['dtype']})"),
        ("workload", f"{r['shape']} (requests x in x out), greedy, ignore_eos"),
        ("output tokens/s", f"{num(r['tokens_per_s'])} ({runs_text(r['runs_tokens_per_s'])})"),
        ("total tokens/s", num(r["total_tokens_per_s"])),
        ("requests/s", num(r["requests_per_s"])),
        ("wall time", num(r["wall_s"], " s")),
        ("mean TTFT", num(r["mean_ttft_ms"], " ms")),
        ("mean TPOT", num(r["mean_tpot_ms"], " ms")),
        ("decode tokens/s per request", num(r["decode_tokens_per_s"])),
        ("read bandwidth", num(roof["read_gbps"], " GB/s")),
        ("bytes per decode step", f"{num(roof['bytes_per_step'])} (weights {num(roof['weight_bytes'])} + "
                                  f"KV {num(roof['kv_bytes_per_step'])}, mean context {roof['mean_context']})"),
        ("roofline tokens/s", num(r["roofline_tokens_per_s"])),
        ("fraction of roofline", num(r["fraction"])),
    ]
    for peer, tps in r["peers"].items():
        check = r["peer_check"].get(peer, {})
        runs = r["peer_runs_tokens_per_s"].get(peer, [])
        rows.append((f"{peer} tokens/s", f"{num(tps)} ({runs_text(runs)}; "
                                         f"same greedy output: {check.get('identical_outputs', 0):.0%} of requests; "
                                         f"same first token: {check.get('same_first_token', 0):.0%})"))
    rows.append(("vs_peer (ours / best peer)", num(r["vs_peer"])))
    if "reference" in r:
        ref = r["reference"]
        quoted = ", ".join(f"{k} {v}" for k, v in ref["decode_tokens_per_s"].items())
        rows.append(("llama.cpp decode tokens/s", f"{quoted} ({ref['threads']} threads; {ref['source']})"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{OP} on {where}"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    for note in r.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``kernels bench offline [options]``; returns the exit status (0 done, 1 a run that went
    wrong, 2 bad arguments; argparse itself exits with 2 on malformed options)."""
    args = parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
