"""Host-memory KV tier: bit-identical offload/restore, unchanged generation, capacity limits."""

from __future__ import annotations

from pathlib import Path

import torch

from engine import LLM, SamplingParams
from engine.kv.tiers import HostKVTier, block_keys
from engine.sequence import FinishReason, Sequence

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def test_block_keys_chain_over_the_whole_prefix() -> None:
    a = block_keys([1, 2, 3, 4, 5, 6], 2)
    b = block_keys([9, 2, 3, 4, 5, 6], 2)
    assert len(a) == 3 and a[1] != b[1]  # same block tokens, different prefix -> different key
    assert block_keys([1, 2, 3, 4, 5, 6], 2, start_block=1, parent=a[0]) == a[1:]


def test_host_tier_round_trip_is_bit_identical_and_bounded() -> None:
    tier = HostKVTier(2)
    blocks = [torch.randn(3, 4, 2, 8) for _ in range(3)]
    for i, blk in enumerate(blocks):
        tier.offload(bytes([i]), blk, blk * 2)
    assert len(tier) == 2 and bytes([0]) not in tier and tier.num_dropped == 1
    k, v = torch.empty(3, 4, 2, 8), torch.empty(3, 4, 2, 8)
    tier.restore(bytes([2]), k, v)
    assert torch.equal(k, blocks[2]) and torch.equal(v, blocks[2] * 2)


def test_generation_from_restored_blocks_equals_generation_without_eviction(tiny_qwen: Path) -> None:
    g = torch.Generator().manual_seed(5)
    shared = torch.randint(2, 128, (40,), generator=g).tolist()
    others = [torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(4)]
    opts = dict(device="cpu", dtype="float32", block_size=4)
    ref = LLM(tiny_qwen, num_kv_blocks=512, **opts).generate([shared + [7, 7]], GREEDY)[0].token_ids  # type: ignore[arg-type]
    # A device cache of 24 blocks cannot keep `shared` while the others run; the host tier can.
    llm = LLM(tiny_qwen, num_kv_blocks=24, host_kv_blocks=64, **opts)  # type: ignore[arg-type]
    llm.generate([shared + [1]], GREEDY)
    for o in others:
        llm.generate([o], GREEDY)
    tier = llm.core.host_tier
    assert tier is not None and tier.num_offloaded > 0
    out = llm.generate([shared + [7, 7]], GREEDY)[0]
    assert tier.num_restored >= 9 and out.usage.cached_tokens >= 36
    kv = llm.core.runner.kv_cache
    block_bytes = 2 * kv.k[:, 0].numel() * kv.k.element_size()
    assert out.usage.kv_restored_bytes_host == tier.num_restored * block_bytes and out.usage.kv_restored_bytes_disk == 0
    assert out.token_ids == ref
    assert len(tier) <= 64
    sched = llm.core.scheduler
    sched.radix.evict(10**6)  # type: ignore[union-attr]
    assert sched.pool.num_free_blocks == sched.pool.num_blocks


def test_disk_tier_round_trips_and_treats_corrupt_blocks_as_absent(tmp_path: Path) -> None:
    from engine.kv.tiers import DiskKVTier

    disk = DiskKVTier(tmp_path, 2)
    host = HostKVTier(1, disk, disk_min_hits=0)
    blocks = [torch.randn(2, 4, 2, 8).to(torch.bfloat16) for _ in range(3)]
    for i, blk in enumerate(blocks):
        host.offload(bytes([i]), blk, -blk)
    assert len(host) == 1 and len(disk) == 2 and all(bytes([i]) in host for i in range(3))
    k, v = torch.empty(2, 4, 2, 8, dtype=torch.bfloat16), torch.empty(2, 4, 2, 8, dtype=torch.bfloat16)
    assert host.restore(bytes([0]), k, v) and torch.equal(k, blocks[0]) and torch.equal(v, -blocks[0])
    raw = bytearray(disk.path(bytes([1])).read_bytes())
    raw[-3] ^= 0xFF  # flip bits in the payload
    disk.path(bytes([1])).write_bytes(bytes(raw))
    assert not host.restore(bytes([1]), k, v) and disk.num_corrupt == 1 and bytes([1]) not in host
    host.offload(bytes([7]), blocks[0], blocks[0])  # pushes block 2 to disk, which drops the oldest
    assert len(disk) <= 2 and len(list(tmp_path.glob("*.kv"))) == len(disk)


def test_only_blocks_used_at_least_min_hits_times_are_written_to_disk(tmp_path: Path) -> None:
    from engine.kv.tiers import DiskKVTier

    disk = DiskKVTier(tmp_path, 8)
    host = HostKVTier(1, disk, disk_min_hits=2)
    blk = torch.randn(2, 4, 2, 8)
    host.offload(b"once", blk, blk, hits=1)  # used by one later request on the device
    host.offload(b"twice", blk, blk, hits=2)  # pushes "once" out of host memory: not admitted
    host.offload(b"restored", blk, blk, hits=1)  # pushes "twice" out: written
    out = torch.empty_like(blk), torch.empty_like(blk)
    assert host.restore(b"restored", *out)  # its second use
    host.offload(b"last", blk, blk)  # pushes "restored" out: written
    assert b"once" not in host and b"twice" in disk and b"restored" in disk
    assert host.num_not_admitted == 1 and disk.num_written == 2


def test_radix_hit_counts_reach_the_host_tier(tiny_qwen: Path, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(8)
    hot = torch.randint(2, 128, (40,), generator=g).tolist()
    cold = torch.randint(2, 128, (40,), generator=g).tolist()
    others = [torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(6)]
    opts = dict(device="cpu", dtype="float32", block_size=4)
    llm = LLM(tiny_qwen, num_kv_blocks=24, host_kv_blocks=2, disk_kv_dir=tmp_path, disk_kv_blocks=256, **opts)  # type: ignore[arg-type]
    for prompt in (hot + [1], hot + [2], hot + [3], cold + [1]):  # hot's blocks are hit twice
        llm.generate([prompt], GREEDY)
    for o in others:
        llm.generate([o], GREEDY)
    disk = llm.core.host_tier.disk  # type: ignore[union-attr]
    assert disk is not None and disk.num_written > 0 and llm.core.host_tier.num_not_admitted > 0  # type: ignore[union-attr]
    out = llm.generate([hot + [4]], GREEDY)[0]
    assert out.usage.cached_tokens >= 36  # hot came back from disk
    miss = llm.generate([cold + [2]], GREEDY)[0]
    assert miss.usage.cached_tokens < 36  # cold was used once and never written


def test_generation_with_blocks_restored_from_disk_equals_plain(tiny_qwen: Path, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(6)
    shared = torch.randint(2, 128, (40,), generator=g).tolist()
    others = [torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(4)]
    opts = dict(device="cpu", dtype="float32", block_size=4)
    ref = LLM(tiny_qwen, num_kv_blocks=512, **opts).generate([shared + [3]], GREEDY)[0].token_ids  # type: ignore[arg-type]
    llm = LLM(tiny_qwen, num_kv_blocks=24, host_kv_blocks=4, disk_kv_dir=tmp_path, disk_kv_blocks=256, disk_kv_min_hits=0, **opts)  # type: ignore[arg-type]
    llm.generate([shared + [1]], GREEDY)
    for o in others:
        llm.generate([o], GREEDY)
    disk = llm.core.host_tier.disk  # type: ignore[union-attr]
    assert disk is not None and disk.num_written > 0
    out = llm.generate([shared + [3]], GREEDY)[0]
    assert disk.num_read > 0 and out.usage.cached_tokens >= 36 and out.token_ids == ref
    assert out.usage.kv_restored_bytes_disk > 0


def test_a_pinned_prefix_survives_eviction_pressure_until_its_ttl(tiny_qwen: Path) -> None:
    import time as _time

    g = torch.Generator().manual_seed(8)
    pinned = torch.randint(2, 128, (40,), generator=g).tolist()
    llm = LLM(tiny_qwen, device="cpu", dtype="float32", block_size=4, num_kv_blocks=40)
    llm.generate([pinned + [1]], GREEDY)
    llm.core.pin("session", pinned, ttl=1.0)
    radix = llm.core.scheduler.radix
    assert radix is not None
    for _ in range(3):  # pressure: other requests need the space
        llm.generate([torch.randint(2, 128, (30,), generator=g).tolist()], GREEDY)
        assert radix.cached_prefix_len(pinned) == 40
    _time.sleep(1.05)
    for _ in range(3):
        llm.generate([torch.randint(2, 128, (30,), generator=g).tolist()], GREEDY)
    assert radix.cached_prefix_len(pinned) < 40  # after its TTL the pin no longer protects it


def test_a_hinted_prefix_outlives_newer_ones_and_is_prefetched_from_host(tiny_qwen: Path) -> None:
    g = torch.Generator().manual_seed(9)
    soon, later = (torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(2))
    others = [torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(3)]
    opts = dict(device="cpu", dtype="float32", block_size=4)
    llm = LLM(tiny_qwen, num_kv_blocks=32, host_kv_blocks=64, **opts)  # type: ignore[arg-type]
    radix = llm.core.scheduler.radix
    assert radix is not None
    llm.generate([soon + [1]], GREEDY)
    llm.core.hint("job-1", soon, steps=3)  # a task of the graph will continue it in ~3 steps
    llm.generate([later + [1]], GREEDY)
    for o in others:  # pressure: the device holds about one prompt besides the running one
        llm.generate([o], GREEDY)
    assert radix.cached_prefix_len(soon) >= 36  # kept although least recently used
    assert radix.cached_prefix_len(later) < 36  # the unannounced one went first
    queued = [Sequence(o + [5], SamplingParams(max_tokens=1)) for o in others[:2]]
    for q in queued:  # requests already waiting in the engine run before job-2's: 2 steps ahead
        llm.core.scheduler.add(q)
    llm.core.hint("job-2", later, steps=0)
    llm.core._apply_hints()
    assert radix.cached_prefix_len(later) < 36  # not yet: a prefetch now would be evicted again
    for q in queued:
        llm.core.scheduler.finish(q, FinishReason.ABORT)
    llm.core.hint("job-2", later, steps=0)  # imminent: restored from host before it is requested
    llm.core.step()
    assert radix.cached_prefix_len(later) >= 36 and llm.core.host_tier.num_restored >= 9  # type: ignore[union-attr]
    llm.core.unhint("job-1")
    llm.core.unhint("job-2")
    llm.core.step()
    assert llm.core.hints == {}


def test_a_prefetch_releases_no_pin(tiny_qwen: Path) -> None:
    """A hint is a forecast: prefetching its prefix from the host tier may evict unannounced cached
    prefixes, never release another agent's pinned conversation (its own admission may, if it
    must). The eviction hook walks the hints once per step, again after they change."""
    g = torch.Generator().manual_seed(11)
    pinned = [torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(2)]
    wanted = torch.randint(2, 128, (40,), generator=g).tolist()
    llm = LLM(tiny_qwen, num_kv_blocks=26, host_kv_blocks=64, device="cpu", dtype="float32", block_size=4)
    core, radix = llm.core, llm.core.scheduler.radix
    assert radix is not None and core.host_tier is not None
    llm.generate([wanted + [1]], GREEDY)
    for i, p in enumerate(pinned):  # two agents' conversations pinned: `wanted` goes to the host tier
        llm.generate([p + [1]], GREEDY)
        core.pin(f"agent{i}", p, ttl=60.0)  # released under pressure, by admissions only
    assert radix.cached_prefix_len(wanted) < 36 and core.host_tier.num_offloaded > 0
    released = core.num_pins_released
    core.hint("next", wanted, steps=0)
    core.step()  # no room without releasing a pin: the prefetch waits for the request
    assert all(radix.cached_prefix_len(p) == 40 for p in pinned) and core.num_pins_released == released
    first = core._next_use()
    assert core._next_use() is first  # one walk per step
    core.unhint("next")
    core.step()
    assert core._next_use() is not first and core._next_use() == {}
    out = llm.generate([wanted + [1]], GREEDY)  # the request itself may release a pin to run
    assert len(out[0].token_ids) > 0


def test_block_keys_chain_each_blocks_little_endian_ids_and_resume_from_a_parent() -> None:
    import hashlib
    import struct

    def slow(ids: list[int], bs: int) -> list[bytes]:  # the definition, one block at a time
        keys, key = [], b""
        for b in range(len(ids) // bs):
            key = hashlib.blake2b(key + struct.pack(f"<{bs}I", *ids[b * bs : (b + 1) * bs]), digest_size=16).digest()
            keys.append(key)
        return keys

    ids = [0, 1, 151_935, 2**32 - 1] + list(range(100, 150))
    assert block_keys(ids, 4) == slow(ids, 4) and len(block_keys(ids, 4)) == 13  # the partial block has no key
    keys = block_keys(ids, 4)
    assert block_keys(ids, 4, 5, keys[4]) == keys[5:]  # resuming from block 5's parent
    assert block_keys(ids[:3], 4) == [] and block_keys([9] * 8, 4)[0] != block_keys([9] * 8, 4)[1]


def test_eviction_order_walks_only_the_soonest_hints(tiny_qwen: Path) -> None:
    from engine.core import HINT_WALK

    g = torch.Generator().manual_seed(13)
    prompts = [torch.randint(2, 128, (12,), generator=g).tolist() for _ in range(HINT_WALK + 2)]
    llm = LLM(tiny_qwen, num_kv_blocks=256, device="cpu", dtype="float32", block_size=4)
    core, radix = llm.core, llm.core.scheduler.radix
    assert radix is not None
    llm.generate([p + [1] for p in prompts], GREEDY)
    for i, p in enumerate(prompts):  # prompt i is needed in i steps
        core.hint(f"h{i}", p, steps=float(i))
    core.step()
    soon = core._next_use()
    walked = {i for i, p in enumerate(prompts) if all(n in soon for n in radix.path_nodes(p))}
    assert walked == set(range(HINT_WALK))  # the two furthest off count as unannounced


def test_with_hints_live_a_queued_requests_prefix_outlives_a_hinted_one(tiny_qwen: Path) -> None:
    """A request waiting in the engine runs before any task still in a tool call: while hints are
    live, eviction counts the queued requests' prefixes as announced for 0 steps (without hints: LRU)."""
    g = torch.Generator().manual_seed(12)
    queued, hinted = (torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(2))
    llm = LLM(tiny_qwen, num_kv_blocks=64, host_kv_blocks=64, device="cpu", dtype="float32", block_size=4)
    core, radix = llm.core, llm.core.scheduler.radix
    assert radix is not None
    llm.generate([queued + [1]], GREEDY)  # older: LRU would evict it first
    llm.generate([hinted + [1]], GREEDY)
    core.scheduler.add(Sequence(queued + [5], SamplingParams(max_tokens=1)))  # its next turn, waiting
    core._apply_hints()
    radix.evict(radix.num_evictable_blocks - 10)  # no hints: LRU takes the queued request's prefix
    assert radix.cached_prefix_len(queued) < 36 and radix.cached_prefix_len(hinted) >= 36
    llm.generate([queued + [1]], GREEDY)  # both cached again (the waiting request ran too)
    llm.generate([hinted + [1]], GREEDY)
    core.scheduler.add(Sequence(queued + [6], SamplingParams(max_tokens=1)))
    core.hint("agent", hinted, steps=2)  # an agent in a tool call, back in ~2 steps
    core._apply_hints()
    radix.evict(radix.num_evictable_blocks - 10)
    assert radix.cached_prefix_len(queued) >= 36 and radix.cached_prefix_len(hinted) < 36


def test_a_prefetch_pushes_out_no_announced_prefix(tiny_qwen: Path) -> None:
    """A prefetch is a forecast: it may evict unannounced prefixes only, not the prefix of a request
    queued in the engine (announced for 0 steps), which would only be restored again."""
    g = torch.Generator().manual_seed(13)
    hinted, queued = (torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(2))
    llm = LLM(tiny_qwen, num_kv_blocks=13, host_kv_blocks=64, device="cpu", dtype="float32", block_size=4)
    core, radix = llm.core, llm.core.scheduler.radix
    assert radix is not None and core.host_tier is not None
    llm.generate([hinted + [1]], GREEDY)
    llm.generate([queued + [1]], GREEDY)  # the device holds about one prompt: `hinted` moves to the host tier
    assert radix.cached_prefix_len(hinted) < 36 and radix.cached_prefix_len(queued) >= 36
    core.scheduler.add(Sequence(queued + [5], SamplingParams(max_tokens=1)))  # its next turn, waiting
    core.hint("agent", hinted, steps=0)  # due now: one queued request ahead, so a prefetch is tried
    restored = core.host_tier.num_restored
    core._apply_hints()
    assert radix.cached_prefix_len(queued) >= 36  # kept: the queued request needs it first
    assert core.host_tier.num_restored == restored  # and the prefetch waited rather than push it out


def test_a_restore_with_room_for_part_brings_back_the_leading_blocks(tiny_qwen: Path) -> None:
    """Admission restores what fits of a host-resident prefix (one block left for the next chunk)
    instead of nothing: chunked prefill admits the request anyway, and all or nothing recomputed
    every block past the room. A prefetch (partial=False) still waits for room for the whole."""
    g = torch.Generator().manual_seed(17)
    long = torch.randint(2, 128, (60,), generator=g).tolist()
    others = [torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(2)]
    opts = dict(device="cpu", dtype="float32", block_size=4)
    ref = LLM(tiny_qwen, num_kv_blocks=512, **opts).generate([long + [7]], GREEDY)[0].token_ids  # type: ignore[arg-type]
    llm = LLM(tiny_qwen, num_kv_blocks=24, host_kv_blocks=64, **opts)  # type: ignore[arg-type]
    llm.generate([long + [1]], GREEDY)
    for o in others:
        llm.generate([o], GREEDY)
    core, sched = llm.core, llm.core.scheduler
    radix, mover = sched.radix, core.mover
    assert radix is not None and mover is not None and core.host_tier is not None
    radix.evict(10**6)  # everything to the host tier
    held = sched.pool.allocate(sched.pool.num_free_blocks - 6)  # running requests' blocks: 6 stay free
    assert mover.restore(long, 0, partial=False) == (0, 0) and radix.cached_prefix_len(long) == 0
    host, disk = mover.restore(long, 0)
    kv = core.runner.kv_cache
    block_bytes = 2 * kv.k[:, 0].numel() * kv.k.element_size()
    assert (host, disk) == (5 * block_bytes, 0) and radix.cached_prefix_len(long) == 5 * 4
    assert sched.pool.num_free_blocks == 1
    sched.pool.decref(held)
    out = llm.generate([long + [7]], GREEDY)[0]
    assert out.token_ids == ref and out.usage.cached_tokens >= 5 * 4
