"""One benchmark run: ceilings, then per op, variant and shape: check, time, and make the records."""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import registry
from . import ceilings as _ceilings
from . import correctness, peers as _peers
from .specs import SPECS, OpSpec, clone_tensor
from .timing import Timed, Timer, TimingError

OUR_BACKENDS = ("native", "triton")
SEED = 1234


@dataclass
class Options:
    ops: list[str]
    cases: dict[str, list[tuple[str, str, tuple[int, ...]]]]  # op -> [(variant, canonical shape, dims)]
    dtype: torch.dtype
    backends: list[str]
    device: torch.device
    reps: int | None = None
    peers: tuple[str, ...] = _peers.PEER_NAMES


@dataclass
class Failure:
    op: str
    backend: str
    variant: str
    shape: str
    dtype: str
    detail: str


@dataclass
class Outcome:
    ceilings: dict[str, float | None]
    records: list[dict] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timing: dict = field(default_factory=dict)
    peer_names: dict[str, list[str]] = field(default_factory=dict)  # op -> peers timed, in order


def sig(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` significant digits (small fractions keep their information)."""
    return float(f"{value:.{digits}g}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fmt_variant(op: str, variant: str) -> str:
    return f"{op}[{variant}]" if variant else op


class _Notes:
    """Printed once each: why a backend or peer is not in the table."""

    def __init__(self, outcome: Outcome, log: Callable[[str], None]):
        self.outcome, self.log, self.seen = outcome, log, set()

    def __call__(self, text: str) -> None:
        if text not in self.seen:
            self.seen.add(text)
            self.outcome.notes.append(text)
            self.log(f"note: {text}")


def _our_context(spec: OpSpec, backend: str, args: tuple) -> Callable[[], contextlib.AbstractContextManager]:
    """What to wrap calls of the public op in so that they run on ``backend``.

    Nothing when plain dispatch already picks ``backend``: the op is then timed exactly as users
    call it (forcing takes a slower, uncached path through the registry, which shows on CPU).
    """
    try:
        default = registry.select(spec.name, *spec.dispatch_args(args)).backend
    except registry.BackendUnavailableError:
        default = None
    if default == backend:
        return contextlib.nullcontext
    return lambda: registry.backend(backend)


def _runnable(spec: OpSpec, backend: str, args: tuple, device: torch.device) -> str | None:
    """None when ``backend`` can run these arguments here, else why not."""
    if backend == "triton" and device.type == "cpu":
        return "Triton runs on CPU only in its interpreter (TRITON_INTERPRET=1), which is not worth timing"
    try:
        with registry.backend(backend):
            registry.select(spec.name, *spec.dispatch_args(args))
    except registry.BackendUnavailableError as e:
        return str(e)
    return None


def _finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def run(options: Options, log: Callable[[str], None] = print, on_op_done: Callable[[str, Outcome], None] | None = None) -> Outcome:
    device = options.device
    log(f"measuring ceilings on {device} ...")
    outcome = Outcome(ceilings=_ceilings.measure(device))
    log("ceilings: " + ", ".join(f"{k} {v}" for k, v in outcome.ceilings.items()))
    timer = Timer(device, options.reps)
    note = _Notes(outcome, log)
    dname = dtype_name(options.dtype)

    with torch.no_grad():
        for op in options.ops:
            spec = SPECS[op]
            peer_order: list[str] = []
            for variant, shape, dims in options.cases[op]:
                try:
                    _run_shape(spec, variant, shape, dims, options, timer, outcome, note, peer_order, log, dname)
                except Exception as e:  # one broken shape (out of memory, a harness bug) must not lose the run
                    traceback.print_exc()
                    detail = f"harness error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    log(f"ERROR {_fmt_variant(op, variant)} {shape} {dname}: {detail} (nothing recorded)")
                    outcome.failures.append(Failure(op, "-", variant, shape, dname, detail))
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                        torch.cuda.empty_cache()
            outcome.peer_names[op] = peer_order
            outcome.timing = timer.describe()
            if on_op_done is not None:
                on_op_done(op, outcome)
    outcome.timing = timer.describe()
    return outcome


def _run_shape(spec, variant, shape, dims, options, timer, outcome, note, peer_order, log, dname) -> None:
    device, dtype = options.device, options.dtype
    what = f"{_fmt_variant(spec.name, variant)} {shape} {dname}"
    gen = torch.Generator(device=device)
    gen.manual_seed(SEED)
    check_args = spec.make_inputs(dims, dtype, device, variant, gen)

    # Ours: every requested backend that can run here, checked against the reference first.
    ours: list[tuple[str, Callable]] = []
    for backend in options.backends:
        why = _runnable(spec, backend, check_args, device)
        if why is not None:
            note(f"backend {backend} skipped for {spec.name} on {device.type}: {why}")
            continue
        context = _our_context(spec, backend, check_args)
        with context():
            ok, detail = correctness.check(spec, check_args, spec.public)
        if not ok:
            log(f"FAILED {backend} {what}: {detail} (not timed, not recorded)")
            outcome.failures.append(Failure(spec.name, backend, variant, shape, dname, detail))
            continue
        ours.append((backend, context))
    if not ours:
        note(f"{what}: none of the backends {', '.join(options.backends)} ran, nothing to time")
        return

    # Peers, each checked too: a peer that computes something else is not a peer. A peer that is
    # also one of our rows (our Triton backend, for attention) is checked and timed once, as ours.
    peer_list = []
    aliases: list[str] = []  # peers whose time is that of our row of the same name
    notes: list[str] = []
    ours_names = [b for b, _ in ours]
    for peer in _peers.peers_for(spec, variant, device, notes, options.peers, args=check_args):
        if peer.name in ours_names:
            aliases.append(peer.name)
            continue
        ok, detail = correctness.check(spec, check_args, peer.fn, peer.prepare, peer.outputs, peer.context)
        if ok:
            peer_list.append(peer)
        else:
            note(f"peer {peer.name} skipped for {what}: failed the correctness check ({detail})")
    for text in notes:
        note(text)
    del check_args
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # Input sets, rotated past the cache; in-place ops get them restored before each callable.
    # One set alone far larger than the cache streams from DRAM already: it is timed on its own.
    nbytes = spec.bytes_moved(dims, dtype, variant)
    alone = spec.single_set_over_cache is not None and nbytes > spec.single_set_over_cache * timer.cache_bytes
    sets = [spec.make_inputs(dims, dtype, device, variant, gen) for _ in range(1 if alone else timer.num_sets(nbytes))]
    mutated = [spec.outputs(s, None) for s in sets] if spec.inplace else []
    pristine = [[clone_tensor(t) for t in ts] for ts in mutated]

    def restore() -> None:
        for ts, copies in zip(mutated, pristine):
            for t, c in zip(ts, copies):
                t.copy_(c)

    items = [Timed(f"ours:{b}", spec.public, sets, context) for b, context in ours]
    items += [Timed(p.name, p.fn, [p.prepare(s) for s in sets], p.context) for p in peer_list]
    times: dict[str, float] = {}
    while items:
        try:
            times = timer.measure(items, restore, what)
            break
        except TimingError as e:
            name = getattr(e, "name", None)
            if name is None or name not in [i.name for i in items]:
                raise
            note(f"{what}: {e}; left out")
            if name.startswith("ours:"):
                outcome.failures.append(Failure(spec.name, name[5:], variant, shape, dname, str(e)))
            items = [i for i in items if i.name != name]
    if spec.inplace and not _finite([t for ts in mutated for t in ts]):
        note(f"{what}: in-place inputs became non-finite while timing; times may not be representative")
    del items, sets, mutated, pristine
    if device.type == "cuda":
        torch.cuda.empty_cache()

    peer_times = {p.name: times[p.name] for p in peer_list if p.name in times}
    for name in aliases:
        if f"ours:{name}" in times:
            peer_times[name] = times[f"ours:{name}"]
    for name in peer_times:
        if name not in peer_order:
            peer_order.append(name)
    ceiling = outcome.ceilings.get(spec.ceiling)
    flops = spec.flops(dims, dtype, variant)
    compute_bound = spec.ceiling.endswith("_tflops")
    for backend, _ in ours:
        us = times.get(f"ours:{backend}")
        if us is None:
            continue
        gbps = nbytes / us / 1e3
        tflops = flops / us / 1e6 if flops is not None else None
        achieved = tflops if compute_bound else gbps
        unit = "TFLOP/s" if compute_bound else "GB/s"
        if ceiling and achieved is not None and achieved > ceiling:
            note(
                f"{spec.name}: {backend} {shape} ran above the measured {spec.ceiling} ({achieved:.1f} > {ceiling} "
                f"{unit}): the ceiling run was disturbed (a busy machine?) or the inputs stayed in a cache"
            )
        others = {k: v for k, v in peer_times.items() if k != backend}  # our Triton row is no peer of itself
        outcome.records.append(
            {
                "op": spec.name,
                "backend": backend,
                "variant": variant,
                "shape": shape,
                "dtype": dname,
                "median_us": sig(us, 4),
                "gbps": sig(gbps, 4),
                "tflops": sig(tflops, 4) if tflops is not None else None,
                "ceiling": spec.ceiling,
                "fraction": sig(achieved / ceiling, 3) if ceiling and achieved is not None else None,
                "peers": {k: sig(v, 4) for k, v in others.items()},
                "vs_peer": sig(min(others.values()) / us, 3) if others else None,
            }
        )
