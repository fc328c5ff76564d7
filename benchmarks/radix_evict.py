"""Radix prefix-cache eviction: the heap of evictable leaves vs a full scan of the tree per call.

The tree holds N one-page leaves under the root (N cached prefixes); each call evicts one block.
`scan` is the previous algorithm (collect every unlocked leaf, heapify, pop), kept here as the
baseline; `heap` is RadixCache.evict (a lazily-deleted heap kept up to date as leaves appear).
Both run side by side in this process; median and p10-p90 of the per-call time.

    python benchmarks/radix_evict.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from engine.kv.block_pool import BlockPool  # noqa: E402
from engine.kv.radix import RadixCache  # noqa: E402

BS = 4


class ScanEvictRadix(RadixCache):
    """The baseline: every eviction call walks the whole tree for its unlocked leaves."""

    def evict(self, num_blocks: int) -> int:
        heap = [(n.last_access, id(n), n) for n in self._nodes() if n.is_leaf and n.lock == 0]
        heapq.heapify(heap)
        released = 0
        while heap and released < num_blocks:
            node = heapq.heappop(heap)[2]
            parent = node.parent
            assert parent is not None
            del parent.children[node.key[:BS]]
            self.pool.decref(node.blocks)
            released += len(node.blocks)
            self.num_cached_blocks -= len(node.blocks)
            if parent is not self.root and parent.is_leaf and parent.lock == 0:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return released


def filled(cls: type[RadixCache], n: int) -> RadixCache:
    pool = BlockPool(n + 8)
    cache = cls(pool, BS)
    for i in range(n):
        blocks = pool.allocate(1)
        cache.insert([i] * BS, blocks)
        pool.decref(blocks)
    for i in range(0, n, 2):  # half the prefixes used again: stale heap entries, a realistic LRU order
        cache.match_prefix([i] * BS)
    return cache


def per_call_us(cache: RadixCache, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        assert cache.evict(1) == 1
        out.append((time.perf_counter() - t0) * 1e6)
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small trees only (a smoke test)")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    sizes, calls = ([1_000, 5_000], 5) if args.quick else ([1_000, 10_000, 100_000], 20)
    columns = ["leaves", "scan median us", "scan p10-p90", "heap median us", "heap p10-p90", "scan / heap"]
    rows, data = [], []
    for n in sizes:
        scan, heap = per_call_us(filled(ScanEvictRadix, n), calls), per_call_us(filled(RadixCache, n), calls)
        p = max(0, calls // 10)
        ms, mh = statistics.median(scan), statistics.median(heap)
        rows.append([n, ms, f"{scan[p]:.1f}-{scan[-1 - p]:.1f}", mh, f"{heap[p]:.1f}-{heap[-1 - p]:.1f}", ms / mh])
        data.append({"leaves": n, "calls": calls, "scan_us": scan, "heap_us": heap})
    print_table("Radix eviction: one block per call", columns, rows)
    if not args.no_write:
        body = ("Per `evict(1)` call on a tree of N one-page leaves (half of them used again after insertion). "
                "`scan` walks the tree on every call (the previous algorithm); `heap` pops a lazily-deleted heap "
                "of evictable leaves. The machine was shared with other jobs: medians with p10-p90.\n\n"
                + markdown_table(columns, rows))
        write_section("radix_evict", "Radix cache eviction", body, "python benchmarks/radix_evict.py", {"runs": data})


if __name__ == "__main__":
    main()
