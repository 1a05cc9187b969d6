"""The one structure the scheduler hands to the model each step.

A step runs any mix of sequences: some prefilling a chunk of their prompt, some decoding one token.
Their new tokens are concatenated (``qo_indptr`` marks where each sequence's tokens start), their
K/V go to ``slot_mapping`` in the paged pool, and each sequence attends to ``kv_lens[i]`` cached
tokens through row ``i`` of ``page_table``: the layout of ``kernels.paged_prefill_attention``.
"""

from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [num_tokens] int64, the new tokens of every sequence, in order
    positions: torch.Tensor  # [num_tokens] int64, each token's position in its sequence
    slot_mapping: torch.Tensor  # [num_tokens] int64, page * page_size + offset where its K/V go
    page_table: torch.Tensor  # [batch, max_pages] int32, row i: sequence i's pages in order
    qo_indptr: torch.Tensor  # [batch + 1] int32, sequence i's new tokens are [qo_indptr[i], qo_indptr[i+1])
    kv_lens: torch.Tensor  # [batch] int32, cached tokens after this step, the new ones included
    logits_indices: torch.Tensor  # [batch] int64, the token of each sequence whose logits are wanted
    is_decode: bool  # every sequence has exactly one new token (paged_decode_attention applies)

    @property
    def batch_size(self) -> int:
        return self.kv_lens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]
