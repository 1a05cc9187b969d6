"""CUDA graphs for decode steps: one graph per bucketed batch size, replayed with padded inputs.

A decode step launches a few hundred small kernels whose launch cost, not their work, bounds a
small batch. :class:`CudaGraphRunner` captures the model's forward once per batch size of
:func:`capture_sizes` (at engine start) and replays it: a decode batch is padded to the next
captured size, its inputs copied into the graphs' static buffers (:class:`DecodeInputs`), the graph
replayed, and the real rows of the static logits handed back. Prefill and mixed steps, and decode
batches larger than the largest graph, run eagerly.

Padded rows are harmless by construction: their slot is ``-1`` (``store_kv_cache`` skips them,
so they never write the KV cache), they attend to one token of page 0 (``kv_len`` 1, a valid
page, read only), and their logits are dropped.

All graphs share one memory pool (``torch.cuda.graph_pool_handle()``) and are captured from the
largest down, so the smaller ones reuse the largest one's activation memory. The static page table
is ``max_pages`` wide (the most pages one sequence can hold): the decode kernels size their split-KV
work from the table's width, never from the values in it, so one graph serves every context length.
"""

from __future__ import annotations

import bisect

import torch

from .forward_batch import ForwardBatch

MAX_CAPTURE_BATCH = 256  # graphs beyond this size save little: the step is no longer launch-bound


def capture_sizes(max_batch: int) -> list[int]:
    """The batch sizes to capture, ascending: 1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, ... (steps of
    8 up to 32, 16 up to 128, 32 beyond), up to ``max_batch`` (capped at ``MAX_CAPTURE_BATCH``),
    which is always the last one so that every batch up to it has a graph."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    top = min(max_batch, MAX_CAPTURE_BATCH)
    sizes = [1, 2, 4, 8] + list(range(16, 33, 8)) + list(range(48, 129, 16)) + list(range(160, MAX_CAPTURE_BATCH + 1, 32))
    sizes = [s for s in sizes if s < top]
    return sizes + [top]


def bucket_for(sizes: list[int], batch_size: int) -> int | None:
    """The smallest of ``sizes`` (ascending) holding ``batch_size`` rows; ``None`` if none does."""
    i = bisect.bisect_left(sizes, batch_size)
    return sizes[i] if i < len(sizes) else None


class DecodeInputs:
    """The static input buffers of the decode graphs, ``max_batch`` rows each.

    :meth:`view` is the :class:`ForwardBatch` a graph of ``n`` rows was captured with (views of the
    first ``n`` rows); :meth:`load` copies a decode batch into those buffers and pads it to ``n``
    rows. Separate from the graphs, so the padding can be checked eagerly, on any device.
    """

    def __init__(self, max_batch: int, max_pages: int, device):
        if max_batch < 1 or max_pages < 1:
            raise ValueError(f"max_batch and max_pages must be positive, got {max_batch} and {max_pages}")
        self.max_batch, self.max_pages = max_batch, max_pages
        self.device = torch.device(device)
        with torch.inference_mode():
            kw = {"device": self.device}
            self.input_ids = torch.zeros(max_batch, dtype=torch.int64, **kw)
            self.positions = torch.zeros(max_batch, dtype=torch.int64, **kw)
            self.slot_mapping = torch.full((max_batch,), -1, dtype=torch.int64, **kw)
            self.page_table = torch.zeros(max_batch, max_pages, dtype=torch.int32, **kw)
            self.kv_lens = torch.ones(max_batch, dtype=torch.int32, **kw)
            self.qo_indptr = torch.arange(max_batch + 1, dtype=torch.int32, **kw)  # one token per row
            self.logits_indices = torch.arange(max_batch, dtype=torch.int64, **kw)
        self._dirty = 0  # rows [0, _dirty) may hold a real sequence's inputs from an earlier load

    def view(self, n: int) -> ForwardBatch:
        """The decode batch of the first ``n`` rows of the buffers."""
        return ForwardBatch(
            input_ids=self.input_ids[:n],
            positions=self.positions[:n],
            slot_mapping=self.slot_mapping[:n],
            page_table=self.page_table[:n],
            qo_indptr=self.qo_indptr[: n + 1],
            kv_lens=self.kv_lens[:n],
            logits_indices=self.logits_indices[:n],
            is_decode=True,
        )

    def fits(self, batch: ForwardBatch) -> bool:
        return (batch.is_decode and batch.batch_size <= self.max_batch and batch.num_tokens == batch.batch_size
                and batch.page_table.shape[1] <= self.max_pages)

    def load(self, batch: ForwardBatch, n: int) -> ForwardBatch:
        """Copy decode ``batch`` (``b <= n`` rows) into rows ``[0, b)``, make rows ``[b, n)`` padding,
        and return :meth:`view` ``(n)``. Device-side copies only: nothing waits on the device."""
        b = batch.batch_size
        if not self.fits(batch) or not b <= n <= self.max_batch:
            raise ValueError(f"a decode batch of {b} rows and {batch.page_table.shape[1]} pages does not fit "
                             f"{n} rows of {self.max_pages} pages")
        width = batch.page_table.shape[1]
        with torch.inference_mode():
            self.input_ids[:b].copy_(batch.input_ids, non_blocking=True)
            self.positions[:b].copy_(batch.positions, non_blocking=True)
            self.slot_mapping[:b].copy_(batch.slot_mapping, non_blocking=True)
            self.kv_lens[:b].copy_(batch.kv_lens, non_blocking=True)
            # Columns past `width` keep stale page ids: the kernels read no page past kv_len.
            self.page_table[:b, :width].copy_(batch.page_table, non_blocking=True)
            # Rows a larger batch used before become padding again; rows never used still are.
            if self._dirty > b:
                self.input_ids[b : self._dirty].zero_()
                self.positions[b : self._dirty].zero_()
                self.slot_mapping[b : self._dirty].fill_(-1)  # never stored
                self.page_table[b : self._dirty].zero_()  # page 0 ...
                self.kv_lens[b : self._dirty].fill_(1)  # ... one token of it, read only
        self._dirty = b
        return self.view(n)


class CudaGraphRunner:
    """Runs decode batches by replaying CUDA graphs of the model's forward.

    Parameters
    ----------
    model : CausalLM
        On a CUDA device.
    kv_caches : list of (k_cache, v_cache)
        The KV pool's tensors (the graphs bake in their addresses).
    max_batch : int
        The largest batch to capture (capped at ``MAX_CAPTURE_BATCH``); see :func:`capture_sizes`.
    max_pages : int
        The most pages one sequence can hold: the width of the static page table.

    The logits :meth:`run` returns are rows of the graph's static output: valid until the next
    replay of a graph (the next decode step), so use or copy them before that.
    """

    def __init__(self, model, kv_caches, *, max_batch: int, max_pages: int):
        self.model, self.kv_caches = model, kv_caches
        self.device = model.device
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model; this one is on {self.device}")
        self.sizes = capture_sizes(max_batch)
        self.inputs = DecodeInputs(self.sizes[-1], max_pages, self.device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.num_replays = 0  # decode steps served by a graph (tests and stats)
        self.capture()

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def can_run(self, batch: ForwardBatch) -> bool:
        return self.inputs.fits(batch)

    def capture(self) -> None:
        """Capture a graph for every size, the largest first, into one shared memory pool."""
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        with torch.inference_mode(), torch.cuda.device(self.device):
            torch.cuda.synchronize(self.device)
            for n in reversed(self.sizes):
                batch = self.inputs.view(n)
                # Warm up on the capture stream: lazy initialisation (cuBLAS handles and
                # workspaces, Triton compiles, the caching allocator's blocks) must not be captured.
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        self.model(batch, self.kv_caches)
                torch.cuda.current_stream().wait_stream(stream)
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    out = self.model(batch, self.kv_caches)
                self.graphs[n], self.outputs[n] = graph, out
            torch.cuda.synchronize(self.device)

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """The logits ``[batch.batch_size, vocab]`` (the model dtype) of a decode batch (see
        :meth:`can_run`), as the model's forward gives them, its K/V written to the cache."""
        n = bucket_for(self.sizes, batch.batch_size)
        with torch.inference_mode():
            self.inputs.load(batch, n)
            self.graphs[n].replay()
        self.num_replays += 1
        return self.outputs[n][: batch.batch_size]
