"""Moving KV blocks between the device cache and the host tier, on the engine's step thread.

The radix cache calls `offload` when it evicts (the blocks' KV is copied into host slots); the
scheduler calls `restore` to extend a request's cached prefix from the host tier (or disk); hints
`prefetch` a prefix needed soon (host blocks now, disk blocks read on the storage worker); the pin
table pauses an agent with `copy_to_host` and resumes it with `restore_from_host`.
"""

from __future__ import annotations

from typing import Any

from engine.kv.tiers import HostKVTier, block_keys


class TierMover:
    """`scheduler` is the engine's engine.scheduler.Scheduler (typed Any: engine.kv stays below it)."""

    def __init__(self, scheduler: Any, kv_cache: Any, host: HostKVTier) -> None:
        assert scheduler.radix is not None, "a host tier needs prefix caching"
        self.scheduler, self.radix, self.kv, self.host = scheduler, scheduler.radix, kv_cache, host
        self.block_size = scheduler.block_size

    def offload(self, path: list[int], blocks: list[int], hits: int = 0) -> None:
        """Radix eviction hook: keep the evicted blocks' KV in host memory."""
        bs = self.block_size
        keys = block_keys(path, bs)  # once: the evicted blocks' keys chain through the whole path
        for key, block in zip(keys[len(keys) - len(blocks) :], blocks, strict=True):
            self.host.offload(key, self.kv.k[:, block], self.kv.v[:, block], hits)

    def restore(self, tokens: list[int], cached: int, host_only: bool = False, release_pins: bool = True,
                evict_announced: bool = True, keys: list[bytes] | None = None, partial: bool = True) -> tuple[int, int]:
        """Scheduler hook: bring the blocks after the cached prefix back from host memory (or disk,
        unless `host_only`), evicting cached prefixes to make room (announced ones only if
        `evict_announced`) and, if `release_pins`, releasing pins when that is not enough. When the
        room is too small for all of them, restores the leading blocks that fit (one block left
        for the request's next chunk), or, unless `partial`, none. Returns the bytes restored from
        host and from disk. `keys`: `block_keys(tokens)` when the caller has them."""
        bs, radix, sched = self.block_size, self.radix, self.scheduler
        keys = block_keys(tokens, bs) if keys is None else keys
        start = cached // bs
        found = 0
        has = self.host.resident if host_only else self.host.__contains__
        while start + found < len(keys) and has(keys[start + found]):
            found += 1
        if found == 0:
            return 0, 0
        prefix = radix.match_prefix(tokens[: start * bs], count=False)
        radix.lock(prefix.node)  # making room must not evict the prefix being extended
        for key in keys[start : start + found]:
            self.host.touch(key)  # nor may offloads push these blocks out of host memory
        try:
            if not sched._make_room(found, release_pins, evict_announced):
                # Room for part only. All or nothing recomputed every host-resident block when
                # chunked prefill then admitted the request with a chunk that fitted (preempted long
                # turns under a burst); a forecast (prefetch) still waits for room for the whole.
                found = sched.pool.num_free_blocks - 1 if partial else 0
                if found <= 0:
                    return 0, 0
        finally:
            radix.unlock(prefix.node)
        found = next((i for i in range(found) if not has(keys[start + i])), found)
        new = sched.pool.allocate(found)
        block_bytes = 2 * self.kv.k[:, 0].numel() * self.kv.k.element_size()
        moved = {"host": 0, "disk": 0}
        restored = 0
        for key, block in zip(keys[start : start + found], new, strict=True):
            source = self.host.restore(key, self.kv.k[:, block], self.kv.v[:, block])
            if source is None:
                break  # unreadable (corrupt disk block): recompute from here on
            restored += 1
            moved[source] += block_bytes
        if restored:
            radix.insert(tokens[: (start + restored) * bs], prefix.block_ids + new[:restored])
        sched.pool.decref(new)  # the tree holds the restored ones now; the rest return to the pool
        return moved["host"], moved["disk"]

    def prefetch(self, token_ids: list[int]) -> None:
        """A prefix needed soon: its host blocks to the device now, making room by evicting
        unannounced prefixes only (a prefetch is a forecast: it pushes out neither what a queued
        request or another hinted task will need, which it would restore again, nor another agent's
        pin; the request's own admission may, if it must); its disk-only blocks to host memory on
        the storage worker (the step thread never waits on the disk)."""
        limit = (len(token_ids) - 1) // self.block_size * self.block_size
        keys = block_keys(token_ids[:limit], self.block_size)  # once for both tiers
        self.restore(token_ids[:limit], self.radix.cached_prefix_len(token_ids[:limit]), host_only=True, release_pins=False,
                     evict_announced=False, keys=keys, partial=False)
        self.host.prefetch(keys)

    def copy_to_host(self, token_ids: list[int]) -> None:
        """A paused agent's cached prefix: its KV copied to the host tier (its device blocks stay
        cached, evictable; an eviction then finds the copy and moves nothing)."""
        match = self.radix.match_prefix(token_ids, count=False)
        for key, block in zip(block_keys(token_ids[: match.num_tokens], self.block_size), match.block_ids, strict=True):
            self.host.offload(key, self.kv.k[:, block], self.kv.v[:, block])

    def restore_from_host(self, token_ids: list[int]) -> None:
        self.restore(token_ids, self.radix.cached_prefix_len(token_ids), host_only=True)
