"""The printed table and the result file (the shape of DESIGN.md "Measuring")."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

from .. import platform as _platform
from .runner import Outcome


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _platform.device_info(device).name


def commit() -> str:
    """``git rev-parse --short HEAD`` of the source tree, else $KERNELS_COMMIT, else "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("KERNELS_COMMIT") or "unknown"


def result_file(name: str, device: torch.device, command: str, outcome: Outcome, records: list[dict]) -> dict:
    doc = {
        "name": name,
        "device": device_name(device),
        "commit": commit(),
        "torch": torch.__version__,
        "command": command,
    }
    if device.type == "cpu":
        doc["threads"] = torch.get_num_threads()
    doc["ceilings"] = dict(outcome.ceilings)
    doc["timing"] = dict(outcome.timing)
    doc["results"] = records
    return doc


def json_targets(path: str, ops: list[str]) -> list[tuple[Path, str, list[str]]]:
    """(file, name, ops) to write. A path ending in .json that is not a directory is one file (named
    after the op, or "all"); anything else is a directory that gets <op>.json per op."""
    p = Path(path)
    if p.suffix == ".json" and not p.is_dir():
        return [(p, ops[0] if len(ops) == 1 else "all", ops)]
    return [(p / f"{op}.json", op, [op]) for op in ops]


def write_json(path: str, ops: list[str], device: torch.device, command: str, outcome: Outcome) -> list[Path]:
    written = []
    for file, name, file_ops in json_targets(path, ops):
        records = [r for r in outcome.records if r["op"] in file_ops]
        if not records:
            continue
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(result_file(name, device, command, outcome, records), indent=1) + "\n")
        written.append(file)
    return written


# ---------------------------------------------------------------------------------------------
# The table


def _num(value, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _g(value, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:#.{digits}g}".rstrip(".")


def _us(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 1000 else f"{value:.0f}"


def format_table(op: str, outcome: Outcome, device: torch.device) -> str:
    records = [r for r in outcome.records if r["op"] == op]
    failures = [f for f in outcome.failures if f.op == op]
    peers = outcome.peer_names.get(op, [])
    ceiling_name = records[0]["ceiling"] if records else "copy_gbps"
    ceiling = outcome.ceilings.get(ceiling_name)
    where = device_name(device)
    if device.type == "cpu":
        where += f", {torch.get_num_threads()} threads"
    unit = "TFLOP/s" if ceiling_name.endswith("_tflops") else "GB/s"
    shown = "not measured on this device" if ceiling is None else f"{_num(ceiling, 1)} {unit}"
    lines = [f"{op} on {where};  ceiling {ceiling_name} = {shown}"]
    with_variant = any(r["variant"] for r in records) or any(f.variant for f in failures)
    with_flops = any(r.get("tflops") is not None for r in records)
    header = ["backend"] + (["variant"] if with_variant else []) + ["shape", "dtype", "median us", "GB/s"]
    header += (["TFLOP/s"] if with_flops else []) + ["fraction"]
    header += [f"{p} us" for p in peers] + ["vs_peer"]
    rows = []
    for r in records:
        row = [r["backend"]] + ([r["variant"]] if with_variant else []) + [r["shape"], r["dtype"], _us(r["median_us"])]
        row += [_g(r["gbps"], 4)] + ([_g(r.get("tflops"), 4)] if with_flops else []) + [_g(r["fraction"], 3)]
        row += [_us(r["peers"].get(p)) for p in peers]
        row += [_g(r["vs_peer"], 3)]
        rows.append(row)
    for f in failures:
        row = [f.backend] + ([f.variant] if with_variant else []) + [f.shape, f.dtype, "FAILED"]
        row += ["-"] * (3 if with_flops else 2) + ["-" for _ in peers] + ["-"]
        rows.append(row)
    if not rows:
        lines.append("  (no results)")
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    left = 3 + int(with_variant)  # text columns are left-aligned, numbers right-aligned
    for row in [header] + rows:
        cells = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    for f in failures:
        lines.append(f"FAILED {f.backend} {f.shape}{' ' + f.variant if f.variant else ''}: {f.detail}")
    return "\n".join(lines)
