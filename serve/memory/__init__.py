"""KV memory: the paged pool and the radix prefix cache over it."""

from .kv_pool import KVPool, OutOfPagesError, PageAllocator
from .radix_cache import PrefixMatch, RadixCache

__all__ = ["KVPool", "OutOfPagesError", "PageAllocator", "PrefixMatch", "RadixCache"]
