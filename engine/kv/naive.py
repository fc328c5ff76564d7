"""The slow reference prefix cache: one dict entry per cached page-aligned prefix.

Same public surface as RadixCache (match_prefix/insert/lock/unlock/evict/counters); used only to
check the radix tree in property tests. Nodes are represented by the prefix tuple they end at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.kv.block_pool import BlockPool


@dataclass(slots=True, frozen=True)
class NaiveMatch:
    node: tuple[int, ...]
    block_ids: list[int]
    num_tokens: int


class NaiveCache:
    def __init__(self, block_pool: BlockPool, block_size: int) -> None:
        self.pool, self.block_size = block_pool, block_size
        self.block: dict[tuple[int, ...], int] = {}  # prefix (whole pages) -> block of its last page
        self.access: dict[tuple[int, ...], int] = {}
        self.locks: dict[tuple[int, ...], int] = {}
        self.clock = 0
        self.num_queries = self.num_query_tokens = self.num_hit_tokens = 0

    def _prefixes(self, token_ids: Sequence[int]) -> list[tuple[int, ...]]:
        n = len(token_ids) // self.block_size
        return [tuple(token_ids[: (i + 1) * self.block_size]) for i in range(n)]

    def match_prefix(self, token_ids: Sequence[int], *, count: bool = True) -> NaiveMatch:
        self.clock += 1
        matched = []
        for p in self._prefixes(token_ids):
            if p not in self.block:
                break
            matched.append(p)
            self.access[p] = self.clock
        if count:
            self.num_queries += 1
            self.num_query_tokens += len(token_ids)
            self.num_hit_tokens += len(matched) * self.block_size
        return NaiveMatch(matched[-1] if matched else (), [self.block[p] for p in matched], len(matched) * self.block_size)

    def insert(self, token_ids: Sequence[int], block_ids: Sequence[int]) -> int:
        present = 0
        self.clock += 1
        for i, p in enumerate(self._prefixes(token_ids)):
            if p in self.block:
                present += self.block_size
                continue
            self.block[p] = block_ids[i]
            self.access[p] = self.clock
            self.pool.incref([block_ids[i]])
        return present

    def lock(self, node: tuple[int, ...]) -> None:
        for k in range(self.block_size, len(node) + 1, self.block_size):
            self.locks[node[:k]] = self.locks.get(node[:k], 0) + 1

    def unlock(self, node: tuple[int, ...]) -> None:
        for k in range(self.block_size, len(node) + 1, self.block_size):
            self.locks[node[:k]] -= 1

    def evict(self, num_blocks: int) -> int:
        """Evict least-recently-used unlocked leaf pages one page at a time."""
        released = 0
        while released < num_blocks:
            leaves = [p for p in self.block if self.locks.get(p, 0) == 0 and not any(
                q != p and len(q) == len(p) + self.block_size and q[: len(p)] == p for q in self.block)]
            if not leaves:
                break
            victim = min(leaves, key=lambda p: (self.access[p], len(p)))
            self.pool.decref([self.block.pop(victim)])
            self.access.pop(victim)
            released += 1
        return released

    @property
    def num_cached_blocks(self) -> int:
        return len(self.block)
