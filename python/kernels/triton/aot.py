"""Ahead-of-time compile check: every kernel of the Triton backend, compiled for GPU targets without a GPU.

    python -m kernels.triton.aot [--target hip:gfx942] [--target cuda:90] ...

Each kernel is compiled with representative sizes and dtypes (the launch parameters the wrappers
would pick for them) down to the target's binary (an AMD code object, hsaco, for ``hip``; a cubin
for ``cuda``). One line per kernel; the exit status is non-zero if any compile fails. This proves
the kernels lower for AMD on a machine with no ROCm and no GPU.

The Triton interpreter must be off (with ``TRITON_INTERPRET=1``, ``@triton.jit`` yields interpreted
functions that cannot be compiled): if it is set, the check re-runs itself in a child process
without it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import traceback
import warnings

DEFAULT_TARGETS = ("hip:gfx942", "cuda:90")
WARP_SIZE = {"hip": 64, "cuda": 32}
BINARY = {"hip": "hsaco", "cuda": "cubin"}


def parse_target(text: str):
    from triton.backends.compiler import GPUTarget

    backend, _, arch = text.partition(":")
    if backend not in WARP_SIZE or not arch:
        raise argparse.ArgumentTypeError(f"target must be hip:<gfx arch> or cuda:<sm number>, got {text!r}")
    if backend == "cuda":
        if not arch.isdigit():
            raise argparse.ArgumentTypeError(f"a cuda target's arch is a number such as 90, got {arch!r}")
        return GPUTarget("cuda", int(arch), WARP_SIZE["cuda"])
    return GPUTarget("hip", arch, WARP_SIZE["hip"])


def cases():
    from . import activation, attention, fp8, norm, quant, rope

    for module in (norm, rope, activation, attention, quant, fp8):
        yield from module.aot_cases()


def _amd_registers(amdgcn: str) -> str:
    """VGPR count and spills from the AMD assembly's kernel metadata (empty when absent)."""
    found = {}
    for key in ("vgpr_count", "vgpr_spill_count", "sgpr_spill_count"):
        m = re.search(rf"\.{key}:\s*(\d+)", amdgcn)
        if m:
            found[key] = m.group(1)
    if not found:
        return ""
    return f" vgprs={found.get('vgpr_count', '?')} spills={found.get('vgpr_spill_count', '?')}"


def specialize(fn, args: dict, constexprs: dict):
    """The signature and attributes the JIT would build for a launch with these arguments.

    ``args`` maps each runtime parameter to a pointer type (``"*fp16"``), a scalar type (``"fp32"``)
    or a representative integer. As at a real launch, pointers (torch allocations) and integers
    that are multiples of 16 are marked 16-divisible, which is what lets loads vectorise.
    """
    names = list(fn.arg_names)
    if set(names) != set(args) | set(constexprs):
        raise ValueError(f"{fn.__name__}: arguments {sorted(set(args) | set(constexprs))} != parameters {names}")
    signature, attrs = {}, {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f"{fn.__name__}.{name}: give a type string or a representative int, got {value!r}")
        if isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            aligned = value % 16 == 0
        else:
            signature[name] = value
            aligned = value.startswith("*")
        if aligned:
            attrs[(names.index(name),)] = [["tt.divisibility", 16]]
    return signature, attrs


def compile_one(fn, args, constexprs, num_warps, target) -> str:
    import triton
    from triton.compiler import ASTSource

    signature, attrs = specialize(fn, args, constexprs)
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=target, options={"num_warps": num_warps})
    binary = kernel.asm.get(BINARY[target.backend])
    if not binary:
        raise RuntimeError(f"no {BINARY[target.backend]} produced (stages: {', '.join(kernel.asm)})")
    extra = _amd_registers(kernel.asm.get("amdgcn", "")) if target.backend == "hip" else ""
    return f"{BINARY[target.backend]} {len(binary)} bytes, shared={kernel.metadata.shared}{extra}"


def _rerun_without_interpreter(argv) -> int:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.call([sys.executable, "-m", "kernels.triton.aot", *argv], env=env)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m kernels.triton.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", metavar="BACKEND:ARCH",
                        help=f"hip:gfx942, cuda:90, ... (repeatable; default: {' '.join(DEFAULT_TARGETS)})")
    parser.add_argument("-k", dest="match", default="", help="only kernels whose label contains this text")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        return _rerun_without_interpreter(argv)
    try:
        targets = [parse_target(t) for t in (args.target or DEFAULT_TARGETS)]
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    # Triton 3.9 warns on every process that leaves FP fusion to its default; the kernels accept either.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")

    failures = total = 0
    for target in targets:
        name = f"{target.backend}:{target.arch}"
        for label, fn, fn_args, constexprs, num_warps in cases():
            if args.match not in label:
                continue
            total += 1
            start = time.perf_counter()
            try:
                detail = compile_one(fn, fn_args, constexprs, num_warps, target)
            except Exception as e:  # report every kernel, then fail
                failures += 1
                print(f"FAIL {name} {label} num_warps={num_warps}: {type(e).__name__}: {e}", flush=True)
                traceback.print_exc(file=sys.stderr)
                continue
            ms = (time.perf_counter() - start) * 1e3
            print(f"ok   {name} {label} num_warps={num_warps}: {detail} ({ms:.0f} ms)", flush=True)
    print(f"{total - failures}/{total} kernels compiled for {', '.join(f'{t.backend}:{t.arch}' for t in targets)}")
    return 1 if failures or not total else 0


if __name__ == "__main__":
    sys.exit(main())
