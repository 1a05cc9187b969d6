"""A radix tree over token ids that maps cached prefixes to KV pages (prefix caching).

The tree works in whole pages: every edge holds a multiple of ``page_size`` tokens and one page
per ``page_size`` tokens, so a cached page is always full and never written again, and a request
that reuses a prefix writes its own tokens starting on a fresh page. Children are keyed by the
tokens of their first page.

Ownership: pages in the tree belong to the tree. A request that uses a matched prefix locks the
node where its match ends (which pins that node and its ancestors); unlocked leaves are evicted in
least-recently-used order when the pool needs pages, and their pages go back to the allocator.
"""

import heapq
import itertools
from typing import NamedTuple

from .kv_pool import PageAllocator


class _Node:
    __slots__ = ("key", "pages", "parent", "children", "ref", "last_access")

    def __init__(self, key: tuple, pages: list[int], parent: "_Node | None", last_access: int = 0):
        self.key = key
        self.pages = pages
        self.parent = parent
        self.children: dict[tuple, _Node] = {}
        # Locks held on this node or on any node below it; > 0 means not evictable.
        self.ref = 0
        self.last_access = last_access


class PrefixMatch(NamedTuple):
    """A cached prefix: its pages in order, its length in tokens, and the node to lock for it."""

    pages: list[int]
    num_tokens: int
    node: _Node


class RadixCache:
    """Prefix cache of KV pages keyed by token ids.

    Parameters
    ----------
    page_size : int
        Tokens per page; every cached prefix is a multiple of it.
    allocator : PageAllocator
        Where evicted pages go back to.
    """

    def __init__(self, page_size: int, allocator: PageAllocator):
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        self.page_size = page_size
        self.allocator = allocator
        self.root = _Node((), [], None)
        self.root.ref = 1  # the root holds no pages and is never evicted
        self._clock = itertools.count(1)
        self.num_pages = 0  # pages held by the tree
        self.evictable_pages = 0  # of those, pages in unlocked nodes

    def match_prefix(self, ids) -> PrefixMatch:
        """The longest cached prefix of ``ids`` usable by a new request.

        At most ``len(ids) - 1`` tokens, rounded down to whole pages, so that at least one token is
        computed (the model needs it to produce the next token's logits). Lock ``node`` before
        using ``pages``: until then they may be evicted.
        """
        limit = (len(ids) - 1) // self.page_size * self.page_size
        return self._walk(tuple(ids[:limit]), None)

    def insert(self, ids, pages) -> PrefixMatch:
        """Cache ``pages`` as the KV of ``ids`` (``len(ids) == len(pages) * page_size``).

        Returns the tree's pages for ``ids`` afterwards. Where a prefix was cached already, the
        tree keeps its own pages: every page of ``pages`` that differs from the returned one at the
        same position was not taken, and the caller frees it (after switching to the returned one
        if it keeps using the sequence).
        """
        ids = tuple(ids)
        pages = list(pages)
        if len(ids) != len(pages) * self.page_size:
            raise ValueError(
                f"ids must hold page_size = {self.page_size} tokens per page: got {len(ids)} ids for {len(pages)} pages"
            )
        return self._walk(ids, pages)

    def lock(self, node: _Node) -> None:
        """Pin ``node`` and its ancestors so eviction leaves them alone (counted: lock per use)."""
        while node is not self.root:
            if node.ref == 0:
                self.evictable_pages -= len(node.pages)
            node.ref += 1
            node = node.parent

    def unlock(self, node: _Node) -> None:
        """Undo one :meth:`lock` of ``node``."""
        while node is not self.root:
            if node.ref <= 0:
                raise ValueError("unlock of a node that is not locked")
            node.ref -= 1
            if node.ref == 0:
                self.evictable_pages += len(node.pages)
            node = node.parent

    def evict(self, num_pages: int) -> int:
        """Free at least ``num_pages`` pages (fewer if not enough are evictable), least recently
        used unlocked leaves first; a parent left childless and unlocked becomes a candidate in
        turn. Returns the number of pages freed."""
        if num_pages <= 0:
            return 0
        heap = [(n.last_access, id(n), n) for n in self._nodes() if not n.children and n.ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_pages and heap:
            _, _, leaf = heapq.heappop(heap)
            self.allocator.free(leaf.pages)
            freed += len(leaf.pages)
            self.num_pages -= len(leaf.pages)
            self.evictable_pages -= len(leaf.pages)
            parent = leaf.parent
            del parent.children[leaf.key[: self.page_size]]
            if parent is not self.root and not parent.children and parent.ref == 0:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return freed

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            yield node

    def _walk(self, ids: tuple, new_pages: list[int] | None) -> PrefixMatch:
        # Follow ids down the tree; with new_pages, add what is missing (insert), else stop there.
        ps = self.page_size
        now = next(self._clock)
        node, pos, pages = self.root, 0, []
        while pos < len(ids):
            child = node.children.get(ids[pos : pos + ps])
            if child is None:
                if new_pages is None:
                    break
                child = _Node(ids[pos:], new_pages[pos // ps :], node, now)
                node.children[ids[pos : pos + ps]] = child
                self.num_pages += len(child.pages)
                self.evictable_pages += len(child.pages)
            n = ps  # the first page matched: that is how child was found
            while n < len(child.key) and ids[pos + n : pos + n + ps] == child.key[n : n + ps]:
                n += ps
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            pages.extend(child.pages)
            pos += n
            node = child
        return PrefixMatch(pages, pos, node)

    def _split(self, node: _Node, n: int) -> _Node:
        # Cut node's edge after n tokens; the new upper node inherits the locks that pass through.
        ps = self.page_size
        upper = _Node(node.key[:n], node.pages[: n // ps], node.parent, node.last_access)
        upper.ref = node.ref
        upper.children[node.key[n : n + ps]] = node
        node.parent.children[node.key[:ps]] = upper
        node.key = node.key[n:]
        node.pages = node.pages[n // ps :]
        node.parent = upper
        return upper
