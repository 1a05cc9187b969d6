"""The ``kernels bench`` subcommand: ``add_parser(subparsers)`` and ``run(args) -> exit code``."""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from .. import registry
from . import plot as _plot
from . import report, runner
from .peers import PEER_NAMES
from .specs import OP_NAMES, SPECS, ShapeError, resolve_op

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

DESCRIPTION = """\
Time our implementations of an op (the native library and the Triton kernels, through the public
kernels.<op> function) against its peers, in one run on this machine:

  torch_eager    the torch composite of the op (what model code writes by hand)
  torch_compile  torch.compile of that composite, compiled and warmed up before timing
  liger          Liger-Kernel's Triton kernel, when liger_kernel is installed (GPU only)
  sdpa           attention ops, CPU: torch's scaled_dot_product_attention on contiguous K/V
  sdpa_cudnn     attention ops, GPU: the same restricted to cuDNN attention
  sdpa_flash     attention ops, GPU: the same restricted to flash attention
  triton         attention ops, GPU: our Triton backend (also one of our rows)

Every implementation is first checked against the float32 reference; one that is wrong is
printed as FAILED and not timed. Each row gives the median time per call, the bandwidth achieved
(bytes moved: each tensor read once plus each tensor written once) and its fraction of the op's
ceiling, measured at the start of the same run: copy_gbps (a large dst.copy_(src)) for the
elementwise ops, read_gbps (a large sum) for paged decode, bf16_tflops (an 8192^3 matmul, GPU
only) for paged prefill, whose rows also give TFLOP/s. vs_peer = fastest peer's time / ours:
above 1 means we are faster.

Timing: GPU: CUDA graphs of back-to-back calls over input sets larger than twice the L2 cache,
replays timed with CUDA events. CPU: wall-clock medians over input sets larger than the
last-level cache, with torch's current thread count.
"""

EPILOG = """\
shapes: TOKENSxHIDDEN for the elementwise ops (HIDDEN is d, the output width, for
silu/gelu_and_mul; num_heads*128 of q for rotary_embedding_, with Llama-3-8B's 4 query heads per
KV head); BATCHxCONTEXTxHEADSxKVHEADSxDIMxPAGE for paged_decode_attention;
TOKENSxCONTEXTxHEADSxKVHEADSxDIM (pages of 16) for paged_prefill_attention; TOKENSxKVHEADSxDIM for
store_kv_cache; TOKENSxHEADSxDIM for merge_attention_states.
variants: gelu_and_mul none,tanh; rotary_embedding_ neox; attention: '' or +-joined parts
raggedN (prefill: N sequences of equal lengths), noncausal (prefill), windowW, softcapC.

examples:
  kernels bench rms_norm
  kernels bench silu_and_mul --shapes 1x14336 4096x14336 --dtype float16
  kernels bench all --json benchmarks/results/h100/ --plot benchmarks/results/h100/
  kernels bench rms_norm --backends reference --shapes 4x256   # smoke run without a build
  kernels bench paged_decode_attention --shapes 64x4096x32x8x128x16 --variants '',window1024
  kernels bench paged_prefill_attention --backends reference --shapes 64x96x4x2x64 --variants ragged2
"""


class UsageError(ValueError):
    pass


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` to an argparse subparsers object (``args.func`` is ``run``); returns the new parser."""
    p = subparsers.add_parser(
        "bench",
        help="time an op's backends against torch / torch.compile / Liger and the measured roofline",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("op", metavar="OP", help=f"one of {', '.join(OP_NAMES)} (trailing _ optional), or all")
    p.add_argument(
        "--shapes", nargs="+", metavar="S", help="shapes like 128x4096 (default: the shapes users run, per device)"
    )
    p.add_argument(
        "--variants",
        metavar="LIST",
        help="comma-separated variants to run with every shape (default: the op's own; '' is the plain op)",
    )
    p.add_argument("--dtype", choices=tuple(DTYPES), help="element type (default bfloat16)")
    p.add_argument(
        "--backends",
        metavar="LIST",
        help="comma-separated backends of ours to time (default native,triton; torch and reference "
        "are accepted for smoke runs)",
    )
    p.add_argument(
        "--peers",
        metavar="LIST",
        help=f"comma-separated peers to time (default all of the op's that run here; known: {','.join(PEER_NAMES)}); "
        "torch_eager is always kept where the op has one; none times ours only",
    )
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available, else cpu")
    p.add_argument(
        "--json", metavar="PATH", help="write the result file (a .json path), or <PATH>/<op>.json per op (a directory)"
    )
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the fraction of the ceiling (a .png path or a directory)")
    p.add_argument(
        "--reps", type=int, metavar="N", help="timed samples per implementation (default: as many as fit ~0.3 s, 10..200)"
    )
    p.set_defaults(func=run)
    return p


def _options(args) -> tuple[runner.Options, str]:
    try:
        ops = resolve_op(args.op)
    except KeyError as e:
        raise UsageError(e.args[0]) from None

    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device cuda: no CUDA device is available to this torch ({torch.__version__})")
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")

    dtype_name = args.dtype or "bfloat16"
    if args.backends is None:
        backends = list(runner.OUR_BACKENDS)
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if not backends:
            raise UsageError("--backends is empty")
        unknown = [b for b in backends if b not in registry.BACKENDS]
        if unknown:
            raise UsageError(f"unknown backend {unknown[0]!r} in --backends; choose from {', '.join(registry.BACKENDS)}")
        backends = list(dict.fromkeys(backends))

    peers = list(PEER_NAMES)
    if getattr(args, "peers", None) is not None:
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = [p for p in peers if p not in PEER_NAMES]
        if peers == ["none"]:
            peers = []
        elif unknown:
            raise UsageError(f"unknown peer {unknown[0]!r} in --peers; choose from {', '.join(PEER_NAMES)}, or none")
        else:
            peers = list(dict.fromkeys(["torch_eager", *peers]))

    if args.reps is not None and args.reps < 1:
        raise UsageError(f"--reps must be at least 1, got {args.reps}")

    requested = [s for text in args.shapes for s in text.split(",") if s] if args.shapes else None
    wanted_variants = None
    if getattr(args, "variants", None) is not None:
        wanted_variants = [v.strip().strip("'\"") for v in args.variants.split(",")]
    cases: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {}
    for op in ops:
        cases[op] = _cases(SPECS[op], device_type, requested, wanted_variants)

    parts = ["kernels", "bench", ops[0] if len(ops) == 1 else "all"]
    if requested:
        parts += ["--shapes", *dict.fromkeys(c for _, c, _ in cases[ops[0]])]
    if wanted_variants is not None:
        parts += ["--variants", ",".join(dict.fromkeys(v for v, _, _ in cases[ops[0]]))]
    parts += ["--dtype", dtype_name]
    if args.backends is not None:
        parts += ["--backends", ",".join(backends)]
    parts += ["--device", device_type]
    if getattr(args, "peers", None) is not None:
        parts += ["--peers", ",".join(peers) or "none"]
    if args.reps is not None:
        parts += ["--reps", str(args.reps)]
    if args.json:
        parts += ["--json", args.json]
    if args.plot:
        parts += ["--plot", args.plot]
    options = runner.Options(
        ops=ops,
        cases=cases,
        dtype=DTYPES[dtype_name],
        backends=backends,
        device=device,
        reps=args.reps,
        peers=tuple(peers),
    )
    return options, shlex.join(parts)


def _cases(spec, device_type: str, shapes: list[str] | None, variants: list[str] | None):
    """[(variant, canonical shape, dims)] of one op: its default cases, or every given variant
    (default: the op's) with every given shape (default: the op's). A pair the op cannot run is
    an error when both were given, else left out (one op's default variants with another's shapes)."""
    try:
        if shapes is None and variants is None:
            pairs = list(spec.cases_for(device_type))
        else:
            vs = [spec.parse_variant(v) for v in variants] if variants is not None else list(spec.variants)
            pairs = [(v, s) for v in dict.fromkeys(vs) for s in (shapes or spec.shapes_for(device_type))]
        chosen, reasons = [], []
        for variant, text in pairs:
            dims = spec.parse_shape(text.strip())
            canonical = "x".join(str(d) for d in dims)
            why = spec.check_case(variant, dims)
            if why is not None:
                reasons.append(f"{spec.name} {canonical}{' ' + variant if variant else ''}: {why}")
                continue
            if (variant, canonical) not in [(v, c) for v, c, _ in chosen]:
                chosen.append((variant, canonical, dims))
    except ShapeError as e:
        raise UsageError(str(e)) from None
    if reasons and (not chosen or (shapes is not None and variants is not None)):
        raise UsageError(reasons[0])
    return chosen


def run(args) -> int:
    """Run ``kernels bench`` with parsed ``args``. 0: all recorded; 1: something FAILED or nothing
    could be timed; 2: bad arguments."""
    try:
        options, command = _options(args)
    except UsageError as e:
        print(f"kernels bench: error: {e}", file=sys.stderr)
        return 2
    dtype = runner.dtype_name(options.dtype)
    if options.device.type == "cpu":
        print(f"cpu: {torch.get_num_threads()} torch threads")

    per_op_files = args.json and len(report.json_targets(args.json, options.ops)) == len(options.ops) > 1

    def op_done(op, outcome):
        print()
        print(report.format_table(op, outcome, options.device))
        print()
        if per_op_files:  # written as each op finishes, so that a long run keeps what it measured
            for path in report.write_json(args.json, [op], options.device, command, outcome):
                print(f"wrote {path}")

    outcome = runner.run(options, on_op_done=op_done)
    if args.json and not per_op_files:
        for path in report.write_json(args.json, options.ops, options.device, command, outcome):
            print(f"wrote {path}")
    if args.plot:
        title = f"{dtype} on {report.device_name(options.device)}"
        for path in _plot.plot(args.plot, options.ops, outcome.records, title):
            print(f"wrote {path}")
    if not outcome.records:
        print(
            "kernels bench: nothing was timed: no backend of ours could run here "
            "(see the notes above; --backends reference times the reference for a smoke run)",
            file=sys.stderr,
        )
        return 1
    if outcome.failures:
        print(f"kernels bench: {len(outcome.failures)} implementation(s) FAILED the correctness check", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m kernels.bench.cli``), until the lead's ``kernels`` CLI wires it."""
    parser = argparse.ArgumentParser(prog="kernels")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
