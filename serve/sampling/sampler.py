"""Choose the next token of every sequence of a batch from its logits."""

from dataclasses import dataclass

import torch

from .params import SamplingParams
from .penalties import apply_penalties


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(dim=-1)`` of a ``[B, V]`` tensor: the first index of each row's max.

    On CUDA, in two passes: torch reduces each row in one thread block, so 64 rows of a 128k
    vocabulary keep half of an H100's SMs idle (41 us where the read takes 11). The CPU already
    spreads rows over its threads and takes one pass.
    """
    vocab = x.shape[-1]
    chunks = next((c for c in range(64, 1, -1) if vocab % c == 0 and vocab // c >= 1024), 1)
    if chunks == 1 or not x.is_cuda:
        return x.argmax(dim=-1)
    return chunked_argmax(x, chunks)


def chunked_argmax(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """``x.argmax(dim=-1)`` with each row cut into ``chunks`` equal pieces (``chunks`` divides the
    row): every piece's max and its first index, then the first piece holding the row's max. The
    same index as one pass, ties and NaN included: both reductions take the first max, and NaN
    counts as the max."""
    width = x.shape[-1] // chunks
    values, index = x.unflatten(-1, (chunks, width)).max(dim=-1)
    best = values.argmax(dim=-1, keepdim=True)
    return index.gather(-1, best).add_(best, alpha=width)[:, 0]


def make_generator(seed: int, device) -> torch.Generator:
    """A generator for one seeded request, on the device its logits will live on."""
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class SampleOutput:
    """The tokens chosen for a batch, and their logprobs.

    All logprobs are taken from the log-softmax of the logits after the penalties and before
    temperature, top-k, top-p and min-p: the model's distribution as the penalties shaped it, the
    same for a greedy and a sampled request (temperature 0 has no distribution of its own).
    """

    token_ids: torch.Tensor  # [B] int64
    # [B] float32, the chosen token's logprob; None when no row asked for logprobs (the
    # normaliser is a full pass over [B, V] that a plain generation does not need)
    logprobs: torch.Tensor | None
    # [B, n] int64 / float32, the n most likely tokens, n the largest `logprobs` asked for in the
    # batch (a row that asked for fewer reads its first ones); None when no row asked for any.
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


class Sampler:
    """Penalties, temperature, top-k, top-p, min-p, then a draw, for a whole batch at once.

    Every step is a tensor operation over ``[B, V]`` with per-row parameters, so one batch mixes
    greedy and random rows and any parameters; the only per-row work is one noise draw for each
    seeded row. Nothing waits on the device.
    """

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        prompt_ids: list[list[int]],
        output_ids: list[list[int]],
        generators: list[torch.Generator | None],
    ) -> SampleOutput:
        """Sample one token per row.

        Parameters
        ----------
        logits : torch.Tensor
            ``[B, V]`` logits of the last position of each sequence, in any float dtype (the
            model's); not modified. Penalties, filters and logprobs work on a float32 copy.
        params : list of SamplingParams
            One per row.
        prompt_ids, output_ids : list of list of int
            Each row's prompt and the tokens generated so far (for the penalties).
        generators : list of torch.Generator or None
            One per row, on the logits' device: the row's own generator (``make_generator(seed,
            device)``, kept by the caller for the life of the request) for a seeded request,
            ``None`` to draw from torch's default generator of the device.

        Returns
        -------
        SampleOutput
            The chosen token ids and their logprobs (see ``SampleOutput`` for which distribution).

        Notes
        -----
        Filters act in this order on the distribution after temperature: top-k keeps the ``k``
        most likely tokens; top-p then keeps the fewest most likely tokens whose renormalised
        probability reaches ``top_p``; min-p drops tokens less likely than ``min_p`` times the most
        likely. The draw is the exponential race ``argmax(p_i / E_i)``, ``E_i ~ Exp(1)``, which
        picks ``i`` with probability ``p_i``; a seeded row draws its ``E`` from its own generator,
        ``V`` numbers per step whatever the batch, so its tokens do not depend on the other rows.
        """
        self._check(logits, params, prompt_ids, output_ids, generators)
        vocab = logits.shape[1]
        device = logits.device
        logits = apply_penalties(logits, params, prompt_ids, output_ids)
        want_logprobs = any(p.logprobs is not None for p in params)
        random_rows = [not p.greedy for p in params]
        if not (want_logprobs or any(random_rows)):
            # Greedy only: the argmax is exact in the logits' own dtype, so a bfloat16 model's
            # logits (half the bytes) need no float32 copy.
            return SampleOutput(argmax_rows(logits), None)
        logits = logits.float()

        # Logprobs before temperature and the filters (see SampleOutput), when asked for.
        log_norm = torch.logsumexp(logits, dim=-1, keepdim=True) if want_logprobs else None
        num_top = max((p.logprobs or 0 for p in params), default=0)
        top_ids = top_logprobs = None
        if num_top > 0:
            top_values, top_ids = logits.topk(min(num_top, vocab), dim=-1)
            top_logprobs = top_values - log_norm

        if not any(random_rows):
            token_ids = argmax_rows(logits)
        else:
            sampled = self._draw(self._filter(logits, params), generators, random_rows)
            if all(random_rows):
                token_ids = sampled
            else:
                is_random = torch.tensor(random_rows).to(device, non_blocking=True)
                token_ids = torch.where(is_random, sampled, argmax_rows(logits))

        if not want_logprobs:
            return SampleOutput(token_ids, None)
        chosen = logits.gather(1, token_ids[:, None]) - log_norm
        return SampleOutput(token_ids, chosen[:, 0], top_ids, top_logprobs)

    @staticmethod
    def _filter(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Temperature, top-k, top-p and min-p: log-probabilities up to a per-row constant, with
        the excluded tokens at -inf. Greedy rows come out at temperature 1 and are not used."""
        vocab = logits.shape[1]
        device = logits.device
        settings = torch.tensor(
            [
                [p.temperature or 1.0, p.top_k if p.top_k > 0 else vocab, p.top_p, p.min_p]
                for p in params
            ],
            dtype=torch.float32,
        ).to(device, non_blocking=True)
        temperature, top_k, top_p, min_p = (settings[:, i : i + 1] for i in range(4))

        # Shifting by the row max first keeps a tiny temperature from overflowing: the best token
        # sits at 0 and the others go towards -inf.
        scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature

        if any(not p.greedy and (0 < p.top_k < vocab or p.top_p < 1.0) for p in params):
            values, order = scaled.sort(dim=-1, descending=True)
            rank = torch.arange(vocab, device=device)
            drop = rank >= top_k
            probs = values.masked_fill(drop, float("-inf")).softmax(dim=-1)
            # Keep a token while the mass strictly before it is short of top_p; the first is always
            # kept. Rows with top_p = 1 skip the test, which rounding in cumsum could fail.
            mass_before = probs.cumsum(dim=-1) - probs
            drop |= (mass_before >= top_p) & (top_p < 1.0)
            dropped = torch.zeros_like(drop).scatter_(1, order, drop)
            scaled = scaled.masked_fill(dropped, float("-inf"))

        if any(not p.greedy and p.min_p > 0 for p in params):
            # With the max at 0, p_i / p_max = exp(scaled_i); log(0) = -inf drops nothing.
            scaled = scaled.masked_fill(scaled < min_p.log(), float("-inf"))
        return scaled

    @staticmethod
    def _draw(
        scores: torch.Tensor, generators: list[torch.Generator | None], random_rows: list[bool]
    ) -> torch.Tensor:
        """The exponential race over ``scores`` (log-probabilities up to a per-row constant)."""
        # Rows left undrawn are greedy ones, whose result the caller discards.
        noise = torch.empty_like(scores)
        if any(r and g is None for r, g in zip(random_rows, generators)):
            noise.exponential_()
        for i, g in enumerate(generators):
            if g is not None and random_rows[i]:
                noise[i].exponential_(generator=g)
        # argmax(p / E) = argmax(log p - log E); E is clamped away from 0 so that an excluded
        # token stays at -inf instead of becoming -inf + inf = nan (which argmax would pick).
        return argmax_rows(scores - noise.clamp_min(torch.finfo(noise.dtype).tiny).log())

    @staticmethod
    def _check(logits, params, prompt_ids, output_ids, generators) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError("logits must be a 2-D tensor [batch, vocab]")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be floating point, got {logits.dtype}")
        batch = logits.shape[0]
        for name, value in (
            ("params", params),
            ("prompt_ids", prompt_ids),
            ("output_ids", output_ids),
            ("generators", generators),
        ):
            if len(value) != batch:
                raise ValueError(f"{name} has {len(value)} entries for {batch} rows of logits")
        for i, (p, g) in enumerate(zip(params, generators)):
            if not isinstance(p, SamplingParams):
                raise TypeError(f"params[{i}] must be SamplingParams, got {type(p).__name__}")
            # A seeded request drawing from the shared generator would silently lose its
            # reproducibility: that is a caller bug worth stopping at.
            if p.seed is not None and g is None:
                raise ValueError(f"generators[{i}] is None but params[{i}] has seed {p.seed}")
