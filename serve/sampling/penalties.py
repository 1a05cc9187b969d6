"""Repetition, presence and frequency penalties, applied to a batch of logits at once."""

import torch

from .params import SamplingParams


def token_counts(token_ids: list[list[int]], vocab_size: int, device) -> torch.Tensor:
    """Count the occurrences of each token id in each row.

    Parameters
    ----------
    token_ids : list of list of int
        One list per row, ids in ``[0, vocab_size)``; rows may differ in length.
    vocab_size : int
    device : torch.device or str
        Where the counts are made.

    Returns
    -------
    counts : torch.Tensor
        ``[len(token_ids), vocab_size]`` float32.
    """
    for i, ids in enumerate(token_ids):
        # An out-of-range id would be a device-side assert on CUDA (a dead process), so check here.
        if ids and (min(ids) < 0 or max(ids) >= vocab_size):
            raise ValueError(f"token ids of row {i} must be in [0, {vocab_size})")
    width = max((len(ids) for ids in token_ids), default=0)
    # Padding goes to an extra column that is dropped, so the scatter needs no mask.
    padded = torch.tensor(
        [ids + [vocab_size] * (width - len(ids)) for ids in token_ids], dtype=torch.int64
    ).reshape(len(token_ids), width)
    padded = padded.to(device, non_blocking=True)
    counts = torch.zeros(len(token_ids), vocab_size + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.float32))
    return counts[:, :vocab_size]


def apply_penalties(
    logits: torch.Tensor,
    params: list[SamplingParams],
    prompt_ids: list[list[int]],
    output_ids: list[list[int]],
) -> torch.Tensor:
    """Apply each row's repetition, presence and frequency penalties.

    The repetition penalty ``r`` acts on the tokens seen in the prompt or the output (a positive
    logit is divided by ``r``, a negative one multiplied, as in Hugging Face and vLLM); then the
    presence and frequency penalties act on the tokens of the output only (OpenAI):
    ``logit -= frequency_penalty * count + presence_penalty * (count > 0)``.

    Parameters
    ----------
    logits : torch.Tensor
        ``[B, V]``, floating point; not modified.
    params : list of SamplingParams
        One per row.
    prompt_ids, output_ids : list of list of int
        Each row's prompt and generated tokens so far.

    Returns
    -------
    logits : torch.Tensor
        The penalised logits, a new float32 ``[B, V]`` tensor (the input itself if no row has a
        penalty).
    """
    use_repetition = any(p.repetition_penalty != 1.0 for p in params)
    use_additive = any(p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 for p in params)
    if not (use_repetition or use_additive):
        return logits
    logits = logits.float()
    batch, vocab = logits.shape
    device = logits.device
    # One host-to-device copy for all per-row factors; rows without a penalty get neutral ones.
    factors = torch.tensor(
        [[p.repetition_penalty, p.presence_penalty, p.frequency_penalty] for p in params],
        dtype=torch.float32,
    ).to(device, non_blocking=True)
    repetition, presence, frequency = factors[:, 0:1], factors[:, 1:2], factors[:, 2:3]
    out_counts = token_counts(output_ids, vocab, device)
    if use_repetition:
        seen = (token_counts(prompt_ids, vocab, device) > 0) | (out_counts > 0)
        penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits = torch.where(seen, penalised, logits)
    if use_additive:
        logits = logits - frequency * out_counts - presence * (out_counts > 0).float()
    return logits
