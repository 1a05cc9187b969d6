"""The paged KV cache: one K and one V tensor per layer, and the allocator of their pages.

Every layer shares one page numbering: page ``p`` of a sequence holds its tokens
``[i * page_size, (i + 1) * page_size)`` in ``k[p]`` and ``v[p]`` of every layer, in the
``[num_pages, page_size, num_kv_heads, head_dim]`` layout of ``kernels.store_kv_cache`` and the
paged attention ops.
"""

import torch


# Without a free-memory query, a pool that fits beside the weights of a small model: 16384 tokens
# of SmolLM2-135M in float32 take 750 MB.
CPU_DEFAULT_TOKENS = 16384


class OutOfPagesError(RuntimeError):
    """Raised by :meth:`PageAllocator.alloc` when fewer pages are free than asked for."""


class PageAllocator:
    """Hands out page ids ``0 .. num_pages - 1`` and takes them back.

    Freeing a page that is already free, or that does not exist, raises ``ValueError``: a double
    free would let two sequences write the same page, so it must never pass silently.
    """

    def __init__(self, num_pages: int):
        if isinstance(num_pages, bool) or not isinstance(num_pages, int) or num_pages < 1:
            raise ValueError(f"num_pages must be a positive int, got {num_pages!r}")
        self.num_pages = num_pages
        # A stack: the most recently freed page is reused first, which keeps the working set warm.
        self._free = list(range(num_pages - 1, -1, -1))
        self._is_free = bytearray(b"\x01") * num_pages

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        """Take ``n`` free pages; raises :class:`OutOfPagesError` (taking none) if fewer are free."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n > len(self._free):
            raise OutOfPagesError(f"asked for {n} pages, {len(self._free)} free")
        if n == 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        for p in pages:
            self._is_free[p] = 0
        return pages

    def free(self, pages) -> None:
        """Give ``pages`` back. Checks them all before freeing any, so a bad call changes nothing."""
        pages = list(pages)
        seen = set()
        for p in pages:
            if not 0 <= p < self.num_pages:
                raise ValueError(f"page {p} does not exist (num_pages = {self.num_pages})")
            if self._is_free[p] or p in seen:
                raise ValueError(f"page {p} is already free (double free)")
            seen.add(p)
        for p in pages:
            self._is_free[p] = 1
        self._free.extend(pages)


class KVPool:
    """Per-layer K and V page tensors plus their :class:`PageAllocator`.

    Parameters
    ----------
    num_layers, num_kv_heads, head_dim : int
        The model's shape.
    page_size : int
        Tokens per page.
    num_pages : int
        Pages per layer; see :meth:`num_pages_for` to size it from memory.
    dtype, device
        Of the cache tensors (the model's dtype and device).
    """

    def __init__(self, num_layers, num_kv_heads, head_dim, page_size, num_pages, dtype, device):
        for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim), ("page_size", page_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.page_size = page_size
        self.allocator = PageAllocator(num_pages)
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)
        ]

    @property
    def num_pages(self) -> int:
        return self.allocator.num_pages

    @property
    def num_free_pages(self) -> int:
        return self.allocator.num_free

    @property
    def max_tokens(self) -> int:
        return self.num_pages * self.page_size

    def alloc(self, n: int) -> list[int]:
        return self.allocator.alloc(n)

    def free(self, pages) -> None:
        self.allocator.free(pages)

    @staticmethod
    def bytes_per_page(num_layers, num_kv_heads, head_dim, page_size, dtype) -> int:
        """Bytes one page takes over all layers, K and V."""
        return 2 * num_layers * page_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    @staticmethod
    def num_pages_for(num_layers, num_kv_heads, head_dim, page_size, dtype, device, *,
                      max_total_tokens: int | None = None, memory_fraction: float = 0.85) -> int:
        """How many pages to allocate.

        On CUDA the pool takes ``memory_fraction`` of the memory free now (call it after the weights
        are loaded; the rest is left for activations), capped by ``max_total_tokens`` when given.
        Elsewhere there is no reliable free-memory query, so ``max_total_tokens`` (default
        ``CPU_DEFAULT_TOKENS``) decides alone.
        """
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
        if max_total_tokens is not None and (isinstance(max_total_tokens, bool)
                                             or not isinstance(max_total_tokens, int) or max_total_tokens < 1):
            raise ValueError(f"max_total_tokens must be a positive int, got {max_total_tokens!r}")
        device = torch.device(device)
        cap = None if max_total_tokens is None else -(-max_total_tokens // page_size)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            per_page = KVPool.bytes_per_page(num_layers, num_kv_heads, head_dim, page_size, dtype)
            pages = int(free * memory_fraction) // per_page
            if cap is not None:
                pages = min(pages, cap)
        else:
            pages = cap if cap is not None else CPU_DEFAULT_TOKENS // page_size
        if pages < 1:
            raise ValueError("no memory is left for the KV cache: lower the model size or raise memory_fraction")
        return pages
