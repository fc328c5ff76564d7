"""Radix prefix cache: page alignment, locks, LRU eviction, ref counts, counters; and a property
test against the naive reference cache."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import OutOfKVCacheError
from engine.kv import radix as radix_module
from engine.kv.block_pool import BlockPool
from engine.kv.naive import NaiveCache
from engine.kv.radix import RadixCache

BS = 4


def cache(num_blocks: int = 64) -> tuple[BlockPool, RadixCache]:
    pool = BlockPool(num_blocks)
    return pool, RadixCache(pool, BS)


def put(pool: BlockPool, c: RadixCache, tokens: list[int]) -> list[int]:
    """Insert like a finished sequence: allocate, insert, drop the sequence's own references."""
    blocks = pool.allocate(len(tokens) // BS)
    c.insert(tokens, blocks)
    pool.decref(blocks)
    return blocks


def test_block_pool_ref_counts_and_errors() -> None:
    pool = BlockPool(4)
    a = pool.allocate(3)
    assert pool.num_free_blocks == 1 and not pool.can_allocate(2)
    with pytest.raises(OutOfKVCacheError):
        pool.allocate(2)
    pool.incref(a[:1])
    pool.decref(a)
    assert pool.num_free_blocks == 3 and pool.ref_count(a[0]) == 1
    pool.decref(a[:1])
    with pytest.raises(ValueError, match="free block"):
        pool.decref(a[:1])


def test_partial_matches_are_page_aligned_and_split_edges() -> None:
    pool, c = cache()
    blocks = put(pool, c, list(range(12)))
    m = c.match_prefix([0, 1, 2, 3, 4, 5, 99, 7, 8])  # 1.5 pages shared -> 1 page
    assert m.num_tokens == 4 and m.block_ids == blocks[:1]
    assert len(m.node.key) == 4 and list(m.node.children.values())[0].key == tuple(range(4, 12))
    assert c.match_prefix(list(range(12))).block_ids == blocks


def test_duplicate_insert_keeps_the_trees_blocks() -> None:
    pool, c = cache()
    first = put(pool, c, list(range(8)))
    second = pool.allocate(2)
    assert c.insert(list(range(8)), second) == 8
    pool.decref(second)
    assert c.match_prefix(list(range(8))).block_ids == first and pool.num_free_blocks == 62


def test_locked_nodes_are_never_evicted_and_eviction_is_lru_over_leaves() -> None:
    pool, c = cache()
    put(pool, c, [1] * 8)
    put(pool, c, [2] * 8)
    put(pool, c, [3] * 8)
    c.match_prefix([1] * 8)  # [1] recently used; [2] is now the LRU leaf
    locked = c.match_prefix([3] * 8).node
    c.lock(locked)
    assert c.evict(2) == 2
    assert c.match_prefix([2] * 8).num_tokens == 0 and c.match_prefix([1] * 8).num_tokens == 8
    assert c.evict(100) == 2  # [1] goes; locked [3] stays
    assert c.match_prefix([3] * 8).num_tokens == 8 and c.num_evictable_blocks == 0
    c.unlock(locked)
    assert c.evict(100) == 2 and pool.num_free_blocks == 64  # every reference returned
    with pytest.raises(ValueError):
        c.unlock(locked)


def test_counters_are_exact() -> None:
    pool, c = cache()
    put(pool, c, list(range(8)))
    c.match_prefix(list(range(10)))
    c.match_prefix([9, 9, 9, 9, 9])
    c.match_prefix(list(range(8)), count=False)
    assert (c.num_queries, c.num_query_tokens, c.num_hit_tokens) == (2, 15, 8)
    assert c.hit_rate == 8 / 15


ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.lists(st.integers(0, 2), min_size=0, max_size=14)),
        st.tuples(st.just("match"), st.lists(st.integers(0, 2), min_size=0, max_size=14)),
        st.tuples(st.just("lock"), st.lists(st.integers(0, 2), min_size=0, max_size=14)),
        st.tuples(st.just("unlock"), st.just([])),
        st.tuples(st.just("evict"), st.integers(1, 5)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_radix_cache_agrees_with_the_naive_reference(program: list[tuple[str, object]]) -> None:
    pool_r, pool_n = BlockPool(512), BlockPool(512)
    radix, naive = RadixCache(pool_r, BS), NaiveCache(pool_n, BS)
    locks: list[tuple[object, object]] = []
    for op, arg in program:
        if op == "insert":
            tokens = list(arg)  # type: ignore[call-overload]
            n = len(tokens) // BS
            br, bn = pool_r.allocate(n), pool_n.allocate(n)
            assert radix.insert(tokens, br) == naive.insert(tokens, bn)
            pool_r.decref(br)
            pool_n.decref(bn)
        elif op == "match":
            mr, mn = radix.match_prefix(list(arg)), naive.match_prefix(list(arg))  # type: ignore[call-overload]
            assert mr.num_tokens == mn.num_tokens
        elif op == "lock":
            mr, mn = radix.match_prefix(list(arg), count=False), naive.match_prefix(list(arg), count=False)  # type: ignore[call-overload]
            radix.lock(mr.node)
            naive.lock(mn.node)
            locks.append((mr.node, mn.node))
        elif op == "unlock" and locks:
            nr, nn = locks.pop(0)
            radix.unlock(nr)  # type: ignore[arg-type]
            naive.unlock(nn)  # type: ignore[arg-type]
        elif op == "evict":
            before = radix.num_cached_blocks
            released = radix.evict(arg)  # type: ignore[arg-type]
            assert released == before - radix.num_cached_blocks
            assert released >= arg or radix.num_evictable_blocks == 0  # type: ignore[operator]
            for _nr, nn in locks:  # locked prefixes survive
                assert radix.cached_prefix_len(list(nn)) == len(nn)  # type: ignore[arg-type]
            _sync_naive(radix, naive)
        assert radix.num_cached_blocks + pool_r.num_free_blocks == 512
        assert (radix.num_queries, radix.num_query_tokens, radix.num_hit_tokens) == (naive.num_queries, naive.num_query_tokens, naive.num_hit_tokens)
    for nr, _ in locks:
        radix.unlock(nr)  # type: ignore[arg-type]
    radix.evict(10**6)
    assert pool_r.num_free_blocks == 512


def _sync_naive(radix: RadixCache, naive: NaiveCache) -> None:
    """Drop from the reference the pages the radix tree evicted (eviction granularity differs:
    the tree evicts whole leaf edges), keeping later match comparisons meaningful."""
    for prefix in sorted(naive.block, key=len, reverse=True):
        if radix.cached_prefix_len(list(prefix)) < len(prefix):
            assert naive.locks.get(prefix, 0) == 0, "the tree evicted a locked page"
            naive.pool.decref([naive.block.pop(prefix)])
            naive.access.pop(prefix)


def test_eviction_takes_unannounced_leaves_first_then_the_furthest_off() -> None:
    pool = BlockPool(16)
    cache = RadixCache(pool, 2)
    paths = {name: [base + j for j in range(4)] for name, base in (("a", 10), ("b", 20), ("c", 30), ("d", 40))}
    for name in "abcd":  # inserted (and last used) in this order: a is the LRU leaf
        blocks = pool.allocate(2)
        cache.insert(paths[name], blocks)
        pool.decref(blocks)
    cache.next_use = lambda: {n: steps for name, steps in (("a", 0.0), ("b", 5.0)) for n in cache.path_nodes(paths[name])}
    evicted: list[list[int]] = []
    cache.on_evict = lambda path, blocks, hits: evicted.append(path)
    cache.evict(8)
    assert evicted == [paths["c"], paths["d"], paths["b"], paths["a"]]


def test_path_nodes_changes_nothing_and_covers_partial_edges() -> None:
    pool = BlockPool(8)
    cache = RadixCache(pool, 2)
    blocks = pool.allocate(3)
    cache.insert([1, 2, 3, 4, 5, 6], blocks)
    before = (cache.num_queries, [n.last_access for n in cache._nodes()], cache.pretty())
    nodes = cache.path_nodes([1, 2, 3, 4, 9, 9])
    assert len(nodes) == 1 and nodes[0].blocks == blocks  # the one edge, partly matched, not split
    assert (cache.num_queries, [n.last_access for n in cache._nodes()], cache.pretty()) == before
    assert cache.path_nodes([7, 7]) == []


class _CountingHeapq:
    """Stands in for the heapq module inside engine.kv.radix and counts heap operations."""

    def __init__(self) -> None:
        self.ops = 0

    def heappush(self, heap: list, item: object) -> None:
        self.ops += 1
        heapq.heappush(heap, item)

    def heappop(self, heap: list) -> object:
        self.ops += 1
        return heapq.heappop(heap)

    def heapify(self, heap: list) -> None:
        heapq.heapify(heap)


def test_eviction_does_not_scan_the_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 20_000
    pool = BlockPool(n + 8)
    cache = RadixCache(pool, BS)
    for i in range(n):  # n one-page leaves under the root
        cache.insert([i] * BS, pool.allocate(1))
    for i in range(0, n, 2):  # refresh half of them: their first heap entries go stale
        cache.match_prefix([i] * BS)
    counting = _CountingHeapq()
    monkeypatch.setattr(radix_module, "heapq", counting)
    monkeypatch.setattr(RadixCache, "_nodes", lambda self: pytest.fail("eviction walked the tree"))
    evicted: list[list[int]] = []
    cache.on_evict = lambda path, blocks, hits: evicted.append(path)
    assert cache.evict(3) == 3
    assert evicted == [[1] * BS, [3] * BS, [5] * BS]  # least recently used: the odd ones never refreshed
    assert counting.ops <= 20  # a few pops/pushes, not n


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.integers(0, 12), st.integers(0, 60), st.data())
def test_common_pages_agrees_with_the_page_by_page_reference(bs: int, key_pages: int, extra: int, flip: int, data: st.DataObject) -> None:
    cache = RadixCache(BlockPool(4), block_size=bs)
    key = tuple(data.draw(st.lists(st.integers(0, 3), min_size=key_pages * bs, max_size=key_pages * bs)))
    start = data.draw(st.integers(0, 5))
    tokens = [9] * start + list(key) + data.draw(st.lists(st.integers(0, 3), min_size=extra, max_size=extra))
    if flip < len(tokens) - start:
        tokens[start + flip] += 1  # one differing token somewhere (or none)
    tokens[start : start + bs] = key[:bs]  # the first page matched through the children dict
    end = start + data.draw(st.integers(1, (len(tokens) - start) // bs)) * bs
    assert cache._common_pages(key, tokens, start, end) == cache._common_pages_ref(key, tokens, start, end)
