"""`kernels info | bench | serve`: the command-line entry point."""

from __future__ import annotations

import argparse
import json
import sys

from . import platform as _platform
from . import registry



def support_matrix() -> list[dict]:
    """One row per (op, platform): each backend's verification level and whether it runs here."""
    local = _platform.local_platforms()
    rows = []
    for op in registry.ops():
        impls = registry.implementations(op)
        for plat in _platform.PLATFORMS:
            cells = {}
            for impl in impls:
                level = impl.platforms.get(plat)
                if level is None:
                    continue
                runs_here = plat in local and impl.available(plat) is None
                cells[impl.backend] = {"level": level, "runs_here": runs_here}
            rows.append({"op": op, "platform": plat, "backends": cells})
    return rows


def _format_table(rows: list[dict], markdown: bool) -> str:
    headers = ["op", "platform", *registry.BACKENDS]
    table = []
    for row in rows:
        cells = []
        for backend in registry.BACKENDS:
            cell = row["backends"].get(backend)
            if cell is None:
                cells.append("-")
            else:
                cells.append(cell["level"] + ("" if markdown or not cell["runs_here"] else " *"))
        table.append([row["op"], row["platform"], *cells])
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in table]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [headers, *table]) for i in range(len(headers))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [headers, *table])


def _info(args: argparse.Namespace) -> int:
    import torch

    import kernels
    from .native import library

    rows = support_matrix()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.markdown:
        print(_format_table(rows, markdown=True))
        return 0
    reason = library.load()
    print(f"kernels {kernels.__version__}  torch {torch.__version__}")
    print(f"native library: {'loaded' if reason is None else reason}")
    for plat in _platform.local_platforms():
        info = _platform.device_info("cuda" if plat in ("cuda", "rocm") else plat)
        extra = f", capability {info.capability}" if info.capability else f", ISA {' '.join(info.cpu_isa) or 'baseline'}"
        print(f"device here: {plat}: {info.name}{extra}")
    print()
    print(_format_table(rows, markdown=False))
    print()
    print("verified: the test suite runs it on that hardware; emulated: tested without it (Triton")
    print("interpreter, ahead-of-time compile, the same torch ops on CPU); -: no implementation.")
    print("* : runs on this machine now.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import kernels
    from .bench import cli as bench_cli

    parser = argparse.ArgumentParser(
        prog="kernels",
        description="LLM inference kernels across NVIDIA, ROCm, Intel XPU and CPU.",
        epilog="Examples: `kernels info`, `kernels bench rms_norm --dtype bfloat16`, "
        "`kernels bench offline --help` (serving throughput), "
        "`kernels bench serve --help` (load on a running server).",
    )
    parser.add_argument("--version", action="version", version=f"kernels {kernels.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    info = sub.add_parser(
        "info",
        help="print the support matrix: op x platform x backend, and what runs here",
        description="Print the support matrix generated from the registry: for each op and platform, each "
        "backend's verification level (verified: tested on that hardware; emulated: tested without it), "
        "and mark with * what can run on this machine.",
    )
    fmt = info.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the matrix as JSON")
    fmt.add_argument("--markdown", action="store_true", help="print the matrix as a Markdown table (docs/support-matrix.md)")
    info.set_defaults(func=_info)
    bench_cli.add_parser(sub)
    # Listed here for `kernels --help`; main() hands `kernels serve ...` to the serving package.
    sub.add_parser("serve", add_help=False,
                   help="serve a model behind an OpenAI-compatible HTTP API (`kernels serve --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the serving layer lives in serve/, imported only here
        from kernels.serve.server import main as server

        return server.main(argv[1:])
    if argv[:2] == ["bench", "offline"]:  # the serving benchmarks live in serve/, imported only here
        from kernels.serve.bench import offline

        return offline.main(argv[2:])
    if argv[:2] == ["bench", "serve"]:
        from kernels.serve.bench import online

        return online.main(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
