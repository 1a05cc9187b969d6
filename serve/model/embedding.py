"""The token embedding lookup, from a float table or from an INT8 one (the int8 LM head it is tied to).

A model whose LM head is tied to its token embedding holds one table for both; when that table is
kept int8 for the head's GEMM (:class:`kernels.Int8Weight`), the lookup dequantises only the rows
of the tokens in the batch rather than keeping a float copy of the whole table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kernels import Int8Weight


def embedding(ids: torch.Tensor, table: torch.Tensor | Int8Weight, dtype: torch.dtype) -> torch.Tensor:
    """``table[ids]`` in ``dtype`` (``ids`` ``[T]`` int64 -> ``[T, hidden]``)."""
    if isinstance(table, Int8Weight):
        return table.rows(ids, dtype)
    return F.embedding(ids, table)
