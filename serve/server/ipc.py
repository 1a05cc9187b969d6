"""The messages between the main process and the scheduler process (pickled over ZeroMQ).

Token ids, never text, go to the scheduler. One PUSH/PULL pair each way: the main process binds
both sockets, the scheduler process connects.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import EngineLoad
from ..outputs import StepOutput
from ..sampling import SamplingParams

# ---- main process -> scheduler ---------------------------------------------------------------


@dataclass
class AddRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class AbortRequest:
    request_id: str


@dataclass
class Shutdown:
    pass


# ---- scheduler -> main process ---------------------------------------------------------------


@dataclass
class Ready:
    """The model is loaded and the loop is running."""

    model_name: str
    device: str
    dtype: str
    context_length: int
    vocab_size: int
    max_total_tokens: int  # the KV pool's size


@dataclass
class Outputs:
    """One step's outputs (possibly none: then it is a heartbeat) and the load after it."""

    outputs: list[StepOutput]
    load: EngineLoad


@dataclass
class Rejected:
    """The engine refused a request at admission (it can never fit, or bad ids)."""

    request_id: str
    message: str


@dataclass
class Fatal:
    """The scheduler loop failed; the process exits after sending this."""

    message: str
