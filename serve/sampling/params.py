"""What a request asks of the sampler and of the stopping rules: one validated dataclass."""

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

# OpenAI's limits on the number of stop sequences and of top logprobs.
MAX_STOP_SEQUENCES = 16
MAX_LOGPROBS = 20


def _int(name: str, value, low: int, high: int | None = None) -> int:
    # bool is an int subclass in Python; `top_k=True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


@dataclass
class SamplingParams:
    """Sampling and stopping parameters of one request.

    Parameters
    ----------
    max_tokens : int
        Most tokens to generate, at least 1. The engine also stops at the model's context length.
    temperature : float
        Divides the logits before sampling; ``0`` means greedy (argmax), no randomness.
    top_k : int
        Sample only among the ``top_k`` most likely tokens; ``0`` or ``-1`` turns it off.
    top_p : float
        Nucleus sampling, in ``(0, 1]``: sample among the fewest most likely tokens whose
        probability (after temperature and top-k) sums to at least ``top_p``; ``1`` turns it off.
    min_p : float
        In ``[0, 1]``: drop tokens less likely than ``min_p`` times the most likely one.
    repetition_penalty : float
        Greater than 0 (1 = off). Logits of tokens already in the prompt or the output are
        divided by it when positive and multiplied by it when negative (Hugging Face, vLLM).
    presence_penalty : float
        In ``[-2, 2]``: subtracted once from the logit of every token already in the output
        (OpenAI).
    frequency_penalty : float
        In ``[-2, 2]``: subtracted from a token's logit once per time it appears in the output
        (OpenAI).
    seed : int or None
        In ``[0, 2**64)``: the request draws from its own generator seeded with it, so its output
        does not depend on the other requests of the batch. ``None`` uses the shared generator.
    stop : list of str
        Up to 16 non-empty strings; generation stops before the first one to appear in the output
        text. A single string is accepted and becomes a one-element list.
    stop_token_ids : list of int
        Token ids that end generation (the token is kept in the output ids).
    ignore_eos : bool
        Keep generating past the end-of-sequence tokens (benchmarks).
    logprobs : int or None
        ``None``: no logprobs. ``n`` in ``[0, 20]``: the chosen token's logprob and those of the
        ``n`` most likely tokens at each step.

    ``validate`` runs at construction and may be called again after fields change; it raises
    ``TypeError`` for a wrong type and ``ValueError`` for a value out of range, both naming the
    parameter, and normalises the fields in place (ints stay ints, ``stop`` becomes a list).
    """

    max_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_mapping(cls, params: Mapping) -> "SamplingParams":
        """Build from a dict (the engine's and the server's input), naming any unknown key.

        The dataclass constructor raises ``TypeError`` for an unknown keyword; this raises
        ``ValueError`` listing all of them, the error a caller reports as bad input.
        """
        if not isinstance(params, Mapping):
            raise TypeError(f"sampling params must be a mapping, got {type(params).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in params if k not in known)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        return cls(**params)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        self.max_tokens = _int("max_tokens", self.max_tokens, 1)

        self.temperature = _float("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

        self.top_k = _int("top_k", self.top_k, -1)

        self.top_p = _float("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

        self.min_p = _float("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")

        self.repetition_penalty = _float("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

        for name in ("presence_penalty", "frequency_penalty"):
            value = _float(name, getattr(self, name))
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
            setattr(self, name, value)

        if self.seed is not None:
            self.seed = _int("seed", self.seed, 0, 2**64 - 1)

        self.stop = self._stop_list(self.stop)

        if not isinstance(self.stop_token_ids, (list, tuple)):
            raise TypeError(
                f"stop_token_ids must be a list of ints, got {type(self.stop_token_ids).__name__}"
            )
        self.stop_token_ids = [
            _int(f"stop_token_ids[{i}]", t, 0) for i, t in enumerate(self.stop_token_ids)
        ]

        self.ignore_eos = _bool("ignore_eos", self.ignore_eos)

        if self.logprobs is not None:
            self.logprobs = _int("logprobs", self.logprobs, 0, MAX_LOGPROBS)

    @staticmethod
    def _stop_list(stop) -> list[str]:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, (list, tuple)):
            raise TypeError(f"stop must be a str or a list of str, got {type(stop).__name__}")
        if len(stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"stop takes at most {MAX_STOP_SEQUENCES} strings, got {len(stop)}")
        for i, s in enumerate(stop):
            if not isinstance(s, str):
                raise TypeError(f"stop[{i}] must be a str, got {type(s).__name__}")
            if not s:
                raise ValueError(f"stop[{i}] must not be empty")
        return list(stop)
