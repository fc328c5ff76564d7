"""Page-aligned radix prefix tree over token ids (the prefix cache). Pure Python.

Every edge key is a whole number of pages (`block_size` tokens) and every node stores one KV block
id per page of its key. The tree holds one reference (in the BlockPool) on every block it stores.
A node's lock count is the number of locks on it or on any descendant (locking a node locks its
whole path to the root); locked nodes are never evicted. Eviction takes unlocked leaves in LRU order
from a heap of evictable leaves keyed by last use, kept up to date where leaves appear (insert, an
eviction that bares the parent, unlock, a refreshing match) with lazy deletion: an entry is skipped
when its node is gone, has children, is locked or was used since. Evicting e leaves costs
O((e + k) log n) for k leaves announced by `next_use`, not a walk of the tree.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.kv.block_pool import BlockPool


@dataclass(slots=True, eq=False)
class RadixNode:
    key: tuple[int, ...]
    blocks: list[int]
    parent: RadixNode | None = None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    lock: int = 0
    last_access: int = 0
    hits: int = 0  # prefix matches that used this node (the request that computed it not counted)

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(slots=True, frozen=True)
class PrefixMatch:
    node: RadixNode  # the deepest matched node; the match ends exactly at its end
    block_ids: list[int]  # the matched blocks, in order
    num_tokens: int  # len(block_ids) * block_size


class RadixCache:
    def __init__(self, block_pool: BlockPool, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.pool = block_pool
        self.block_size = block_size
        self._clock = itertools.count(1)
        self._seq = itertools.count()  # heap tie-break
        self._evictable: list[tuple[int, int, RadixNode]] = []  # (last_access, seq, leaf), lazily deleted
        self._num_nodes = 0
        # Called with (token path up to the node's end, the node's blocks, its hit count) before a
        # node is evicted.
        self.on_evict: Callable[[list[int], list[int], int], None] | None = None
        # Graph knowledge for eviction: returns {node: steps until a task needs it}. Leaves nobody
        # announced go first (LRU among them), then announced ones, the furthest-off first.
        self.next_use: Callable[[], dict[RadixNode, float]] | None = None
        self.reset()

    def reset(self) -> None:
        """Drop every cached entry (releasing the tree's references) and zero the counters."""
        root = getattr(self, "root", None)
        if root is not None:
            stack = list(root.children.values())
            while stack:
                node = stack.pop()
                stack.extend(node.children.values())
                self.pool.decref(node.blocks)
        self.root = RadixNode((), [])
        self._evictable, self._num_nodes = [], 0
        self.num_cached_blocks = 0
        self.num_locked_blocks = 0
        self.num_queries = 0
        self.num_query_tokens = 0
        self.num_hit_tokens = 0

    # ---- lookup ------------------------------------------------------------------------
    def match_prefix(self, token_ids: Sequence[int], *, count: bool = True) -> PrefixMatch:
        """Longest cached page-aligned prefix of `token_ids`. Splits an edge so the match ends on a
        node; refreshes LRU time along the path. `count=False` leaves the hit counters alone."""
        bs = self.block_size
        n = len(token_ids) // bs * bs
        node, i, blocks = self.root, 0, []
        stamp = next(self._clock)
        while i < n:
            child = node.children.get(tuple(token_ids[i : i + bs]))
            if child is None:
                break
            pages = self._common_pages(child.key, token_ids, i, n)
            if pages * bs < len(child.key):
                child = self._split(child, pages)
            node = child
            node.last_access = stamp
            node.hits += count
            blocks.extend(node.blocks)
            i += len(node.key)
        self._offer(node)  # its LRU time changed (its older heap entries are now stale)
        if count:
            self.num_queries += 1
            self.num_query_tokens += len(token_ids)
            self.num_hit_tokens += i
        return PrefixMatch(node, blocks, i)

    def cached_prefix_len(self, token_ids: Sequence[int]) -> int:
        """Tokens of the longest cached page-aligned prefix, without touching LRU state or counters."""
        return self._walk(token_ids)[1]

    def path_nodes(self, token_ids: Sequence[int]) -> list[RadixNode]:
        """The nodes holding any cached page-aligned prefix of `token_ids` (a partly matched last
        edge included), root excluded; changes nothing (no split, no LRU refresh, no counters)."""
        return self._walk(token_ids)[0]

    def prefix_blocks(self, token_ids: Sequence[int]) -> list[int]:
        """The blocks of the longest cached page-aligned prefix of `token_ids`, in order; changes
        nothing (no split, no LRU refresh, no counters)."""
        nodes, cached = self._walk(token_ids)
        return [b for node in nodes for b in node.blocks][: cached // self.block_size]

    def _walk(self, token_ids: Sequence[int]) -> tuple[list[RadixNode], int]:
        """Read-only descent: (nodes touched, cached prefix length in tokens)."""
        bs = self.block_size
        n = len(token_ids) // bs * bs
        node, i, out = self.root, 0, []
        while i < n:
            child = node.children.get(tuple(token_ids[i : i + bs]))
            if child is None:
                break
            out.append(child)
            pages = self._common_pages(child.key, token_ids, i, n)
            i += pages * bs
            if pages * bs < len(child.key):
                break
            node = child
        return out, i

    def _common_pages(self, key: tuple[int, ...], token_ids: Sequence[int], start: int, end: int) -> int:
        """Pages of `key` (its first already matched through the children dict) that equal
        token_ids[start:] within `end`: the whole span compared in one tuple comparison, and on a
        mismatch the first differing page found by bisection over prefix comparisons (O(log pages)
        C-level comparisons instead of a Python loop per page: walking agent prompts of thousands
        of tokens page by page was ~8% of agent serving's step thread). `_common_pages_ref` is the
        page-by-page reference (tests compare them)."""
        bs = self.block_size
        most = max(1, min(len(key), end - start) // bs)  # pages that could match (at least the first)
        if most == 1 or key[bs : most * bs] == tuple(token_ids[start + bs : start + most * bs]):
            return most
        lo, hi = 1, most - 1  # pages lo match; the answer is in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if key[lo * bs : mid * bs] == tuple(token_ids[start + lo * bs : start + mid * bs]):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _common_pages_ref(self, key: tuple[int, ...], token_ids: Sequence[int], start: int, end: int) -> int:
        bs = self.block_size
        pages = 1  # the first page matched through the children dict
        while pages * bs < len(key) and start + (pages + 1) * bs <= end:
            lo = pages * bs
            if key[lo : lo + bs] != tuple(token_ids[start + lo : start + lo + bs]):
                break
            pages += 1
        return pages

    def _split(self, child: RadixNode, pages: int) -> RadixNode:
        """Cut `child`'s edge after `pages` pages; return the new upper node."""
        cut = pages * self.block_size
        parent = child.parent
        assert parent is not None
        upper = RadixNode(child.key[:cut], child.blocks[:pages], parent, lock=child.lock, last_access=child.last_access, hits=child.hits)
        child.key, child.blocks, child.parent = child.key[cut:], child.blocks[pages:], upper
        upper.children[child.key[: self.block_size]] = child
        parent.children[upper.key[: self.block_size]] = upper
        self._num_nodes += 1
        return upper

    # ---- insertion ---------------------------------------------------------------------
    def insert(self, token_ids: Sequence[int], block_ids: Sequence[int]) -> int:
        """Cache the page-aligned prefix of `token_ids` whose KV lives in `block_ids`.

        Pages already cached keep the tree's blocks; new pages take a reference on the caller's.
        Returns the number of tokens that were already cached. Raises ValueError when `block_ids`
        does not cover the page-aligned prefix.
        """
        bs = self.block_size
        n = len(token_ids) // bs * bs
        if len(block_ids) < n // bs:
            raise ValueError(f"{n} tokens need {n // bs} blocks, got {len(block_ids)}")
        match = self.match_prefix(token_ids[:n], count=False)
        i = match.num_tokens
        if i < n:
            new_blocks = list(block_ids[i // bs : n // bs])
            leaf = RadixNode(tuple(token_ids[i:n]), new_blocks, match.node, last_access=next(self._clock))
            match.node.children[leaf.key[:bs]] = leaf
            self._num_nodes += 1
            self._offer(leaf)
            self.pool.incref(new_blocks)
            self.num_cached_blocks += len(new_blocks)
        return i

    # ---- locking -----------------------------------------------------------------------
    def lock(self, node: RadixNode) -> None:
        """Protect `node` and its ancestors from eviction until a matching `unlock`."""
        while node is not self.root and node is not None:
            if node.lock == 0:
                self.num_locked_blocks += len(node.blocks)
            node.lock += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: RadixNode) -> None:
        """Undo one `lock(node)`. Raises ValueError when the node is not locked."""
        if node is not self.root and node.lock <= 0:
            raise ValueError("unlock of a node that is not locked")
        first = node
        while node is not self.root and node is not None:
            node.lock -= 1
            if node.lock == 0:
                self.num_locked_blocks -= len(node.blocks)
            node = node.parent  # type: ignore[assignment]
        self._offer(first)  # only the first node can be a leaf: the others are its ancestors

    @property
    def num_evictable_blocks(self) -> int:
        return self.num_cached_blocks - self.num_locked_blocks

    # ---- eviction ----------------------------------------------------------------------
    def evict(self, num_blocks: int, announced: bool = True) -> int:
        """Evict unlocked leaves until `num_blocks` blocks have left the tree or nothing is
        evictable: leaves nobody announced (`next_use`) first, least recently used first, then
        announced ones, the furthest-off first (never, when `announced` is False: a prefetch
        must not push out what is needed as soon as what it brings). Returns the number of
        blocks released."""
        soon = self.next_use() if self.next_use is not None else {}
        waiting: list[tuple[float, int, int, RadixNode]] = []  # announced leaves: (-steps, last_access, seq, leaf)
        released = 0
        while released < num_blocks:
            node = self._pop_evictable()
            if node is not None and node in soon:
                heapq.heappush(waiting, (-soon[node], node.last_access, next(self._seq), node))
                continue
            if node is None:
                if not waiting or not announced:
                    break
                node = heapq.heappop(waiting)[3]
                if node.parent is None or node.parent.children.get(node.key[: self.block_size]) is not node:
                    continue  # a duplicate entry of a leaf already evicted
            released += self._remove(node)
        for _, _, _, node in waiting:  # not needed after all: evictable again later
            self._offer(node)
        return released

    def _remove(self, node: RadixNode) -> int:
        """Take an unlocked leaf out of the tree (releasing its blocks); returns its block count."""
        parent = node.parent
        assert parent is not None
        del parent.children[node.key[: self.block_size]]
        self._num_nodes -= 1
        if self.on_evict is not None:
            self.on_evict(self.path_tokens(node), node.blocks, node.hits)
        self.pool.decref(node.blocks)
        self.num_cached_blocks -= len(node.blocks)
        self._offer(parent)
        return len(node.blocks)

    def _offer(self, node: RadixNode) -> None:
        """Queue `node` for eviction if it is an unlocked leaf now (entries go stale, not away)."""
        if node is self.root or node.children or node.lock:
            return
        heapq.heappush(self._evictable, (node.last_access, next(self._seq), node))
        if len(self._evictable) > 2 * self._num_nodes + 64:  # mostly stale: rebuild, O(n) amortised over the pushes
            self._evictable = [e for e in self._evictable if self._is_current(e)]
            heapq.heapify(self._evictable)

    def _is_current(self, entry: tuple[int, int, RadixNode]) -> bool:
        stamp, _, node = entry
        parent = node.parent
        return (stamp == node.last_access and not node.children and not node.lock and parent is not None
                and parent.children.get(node.key[: self.block_size]) is node)

    def _pop_evictable(self) -> RadixNode | None:
        """The least recently used unlocked leaf, or None (skipping stale entries)."""
        while self._evictable:
            entry = heapq.heappop(self._evictable)
            if self._is_current(entry):
                return entry[2]
        return None

    def path_tokens(self, node: RadixNode) -> list[int]:
        """All token ids from the root to the end of `node`."""
        parts = []
        while node is not None and node is not self.root:
            parts.append(node.key)
            node = node.parent  # type: ignore[assignment]
        return [t for key in reversed(parts) for t in key]

    def _nodes(self) -> list[RadixNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    @property
    def hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_query_tokens if self.num_query_tokens else 0.0

    def pretty(self) -> str:
        lines: list[str] = []

        def walk(node: RadixNode, depth: int) -> None:
            for child in node.children.values():
                lines.append(f"{'  ' * depth}{list(child.key)} blocks={child.blocks} lock={child.lock}")
                walk(child, depth + 1)

        walk(self.root, 0)
        return "\n".join(lines)
