"""Host-memory KV tier: bit-identical offload/restore, unchanged generation, capacity limits."""

from __future__ import annotations

from pathlib import Path

import torch

from engine import LLM, SamplingParams
from engine.kv.tiers import HostKVTier, block_keys

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
    assert out.token_ids == ref
    assert len(tier) <= 64
    sched = llm.core.scheduler
    sched.radix.evict(10**6)  # type: ignore[union-attr]
    assert sched.pool.num_free_blocks == sched.pool.num_blocks
