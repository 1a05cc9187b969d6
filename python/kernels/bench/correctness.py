"""Before anything is timed, its output is compared with the float32 reference on fresh inputs.

A fast wrong answer is not a result: an implementation (ours or a peer) whose relative norm error
exceeds the tolerance of the dtype is reported as FAILED and not timed.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from .specs import OpSpec, clone_args

# Relative norm error ||out - ref|| / ||ref|| allowed per dtype (math in float32 everywhere; the
# half types round once at the store, Liger's kernels round twice in places).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return float("inf")
    return ((o - r).norm() / r.norm().clamp_min(1e-30)).item()


def check(
    spec: OpSpec,
    args: tuple,
    fn: Callable,
    prepare: Callable[[tuple], tuple] | None = None,
    outputs: Callable[[tuple, object], list[torch.Tensor]] | None = None,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[bool, str]:
    """Run ``fn`` (inside ``context()``) on (a prepared copy of) ``args`` and compare with the
    reference on the same values.

    In-place ops get copies of the inputs for each side; the others share them (an attention KV
    cache of 17 GB is not copied twice).

    Returns (passed, detail): detail gives the worst relative error, or the exception raised.
    """
    dtype = next(a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()).dtype
    ref_args = clone_args(args) if spec.inplace else args
    ref_result = spec.reference(*ref_args)
    expected = spec.outputs(ref_args, ref_result)

    run_args = clone_args(args) if spec.inplace else args
    try:
        if prepare is not None:
            run_args = prepare(run_args)
        with context():
            result = fn(*run_args)
        got = (outputs or spec.outputs)(run_args, result)
    except Exception as e:  # a backend or peer that raises is a failure to report, not a crash
        return False, f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if len(got) != len(expected):
        return False, f"produced {len(got)} outputs, expected {len(expected)}"
    worst = 0.0
    for g, e in zip(got, expected):
        if tuple(g.shape) != tuple(e.shape):
            return False, f"output shape {tuple(g.shape)} != {tuple(e.shape)}"
        worst = max(worst, relative_error(g, e))
    # By the inputs' dtype; an op whose inputs have no tolerance of their own (FP8) by its output's.
    tol = TOLERANCE[dtype] if dtype in TOLERANCE else TOLERANCE[expected[0].dtype]
    if worst > tol:
        return False, f"relative error {worst:.2e} > {tol:.0e}"
    return True, f"relative error {worst:.1e}"
