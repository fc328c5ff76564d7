"""Paged KV block allocator: a FIFO free list and per-block reference counts. Pure Python."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from engine.errors import OutOfKVCacheError


class BlockPool:
    """Blocks `0..num_blocks-1`. Invariant: a block is on the free list iff its ref count is 0."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._refs = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Take `n` free blocks (each with ref count 1). Raises OutOfKVCacheError if too few are free."""
        if n > len(self._free):
            raise OutOfKVCacheError(f"asked for {n} KV blocks, {len(self._free)} free of {self.num_blocks}")
        out = [self._free.popleft() for _ in range(n)]
        for b in out:
            self._refs[b] = 1
        return out

    def incref(self, block_ids: Iterable[int]) -> None:
        """Add a reference to blocks that are in use. Raises ValueError for a free block."""
        for b in block_ids:
            if self._refs[b] == 0:
                raise ValueError(f"incref of free block {b}")
            self._refs[b] += 1

    def decref(self, block_ids: Iterable[int]) -> None:
        """Drop a reference; a block whose count reaches 0 returns to the free list.

        Raises ValueError naming the block when it is already free."""
        for b in block_ids:
            if self._refs[b] == 0:
                raise ValueError(f"decref of free block {b}")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)

    def ref_count(self, block_id: int) -> int:
        return self._refs[block_id]
