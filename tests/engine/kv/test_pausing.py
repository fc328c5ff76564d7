"""ThunderAgent pausing and Continuum's cost-benefit release (engine.kv.pins): agents waiting on
tools are paused to the host tier when the KV working set passes the line, resumed smallest first
with identical output; a pin is released for a waiting request only when that pays."""

from __future__ import annotations

from pathlib import Path

import torch

from engine import LLM, SamplingParams
from engine.kv.block_pool import BlockPool
from engine.kv.pins import PinHooks, PinTable, worth_releasing
from engine.kv.radix import RadixCache
from engine.kv.tiers import block_keys

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
OPTS = dict(device="cpu", dtype="float32", block_size=4)


def tokens(seed: int, n: int) -> list[int]:
    return torch.randint(2, 128, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_an_agent_paused_past_the_line_resumes_with_identical_output(tiny_qwen: Path) -> None:
    agent, big, turn = tokens(8, 40), tokens(9, 48), tokens(10, 6)
    ref = LLM(tiny_qwen, num_kv_blocks=64, **OPTS).generate([agent + turn], GREEDY)[0]  # type: ignore[arg-type]
    llm = LLM(tiny_qwen, num_kv_blocks=24, host_kv_blocks=64, **OPTS)  # type: ignore[arg-type]
    llm.generate([agent + [1]], GREEDY)
    llm.core.pin("agent", agent, ttl=600.0)  # waiting on its tool: 10 blocks pinned
    llm.core.step()
    # 12 + 2 blocks for `big` beside the 10 pinned: past 95% of 24 blocks without ever running out.
    llm.generate([big], GREEDY)
    table, host = llm.core.pin_table, llm.core.host_tier
    assert table is not None and host is not None
    assert table.num_paused == 1 and table.num_released == 0  # proactive, not forced by a waiting request
    assert all(host.resident(k) for k in block_keys(agent, 4))  # its KV went to the host tier
    llm.core.step()  # `big` is done: the working set is low again, the agent resumes
    assert table.num_resumed == 1 and "agent" in llm.core.pins and not table.paused
    out = llm.generate([agent + turn], GREEDY)[0]  # the tool returned: the next turn
    assert out.usage.cached_tokens >= 40 and out.token_ids == ref.token_ids


def test_paused_agents_resume_smallest_first() -> None:
    pool = BlockPool(20)
    radix = RadixCache(pool, 4)
    sizes = {"a": 2, "b": 4, "c": 3}
    prompts = {k: tokens(i, 4 * n) for i, (k, n) in enumerate(sizes.items())}
    for key, n in sizes.items():
        blocks = pool.allocate(n)
        radix.insert(prompts[key], blocks)
        pool.decref(blocks)  # the tree holds them
    restored: list[str] = []
    running: list[int] = []
    waiting = [0]
    hooks = PinHooks(copy_to_host=lambda ids: None,
                     restore_from_host=lambda ids: restored.append(next(k for k, p in prompts.items() if p == ids)),
                     resume_seconds_per_token=lambda: 0.0, working_set=lambda: radix.num_locked_blocks + len(running),
                     num_waiting=lambda: waiting[0])
    table = PinTable(radix, pool, hooks, pause_fraction=0.95, resume_fraction=0.8)
    for ttl, key in ((100.0, "a"), (200.0, "b"), (300.0, "c")):
        table.pin(key, prompts[key], ttl)
    table.apply()
    running += pool.allocate(11)  # 9 pinned + 11 running = 20 > 19: over the line
    table.balance()
    assert set(table.paused) == {"c"}  # the agent expected back last goes first
    radix.evict(3)  # a request takes the paused agent's blocks (its KV is on the host)
    running += pool.allocate(3)
    table.balance()
    assert set(table.paused) == {"c", "b"}
    pool.decref(running)  # the running requests finished
    running.clear()
    waiting[0] = 1  # a request waits for admission: the free blocks are its, nobody resumes
    table.balance()
    assert restored == [] and set(table.paused) == {"c", "b"}
    waiting[0] = 0
    table.balance()
    assert restored == ["c", "b"] and set(table.pins) == {"a", "b", "c"} and table.num_resumed == 2


def test_continuum_releases_a_pin_only_when_the_wait_it_saves_exceeds_the_resume_cost(tiny_qwen: Path) -> None:
    assert worth_releasing(time_left=5.0, resume_cost=0.1) and not worth_releasing(time_left=0.2, resume_cost=3.0)
    agent, big = tokens(1, 40), tokens(2, 64)
    llm = LLM(tiny_qwen, num_kv_blocks=24, **OPTS)  # type: ignore[arg-type]  # no host tier: resuming recomputes
    llm.generate([agent + [1]], GREEDY)
    llm.core.stats.device_seconds, llm.core.stats.num_tokens = 1e4, 1  # recomputing looks very slow
    llm.core.pin("agent", agent, ttl=0.3)
    llm.core.step()
    out = llm.generate([big], GREEDY)[0]  # waits for the pin to expire rather than evict it
    assert len(out.token_ids) == 8
    table = llm.core.pin_table
    assert table is not None and table.num_released == 0 and table.num_kept >= 1 and "agent" not in llm.core.pins


def test_with_a_host_tier_a_release_is_priced_as_a_copy_before_the_first_restore(tiny_qwen: Path) -> None:
    # No restore has happened yet, but evictions copied blocks to the host: resuming a released pin
    # costs such a copy, not a recompute, so the pin goes to the host and the request runs at once.
    agent, big, filler = tokens(1, 40), tokens(2, 64), tokens(3, 20)
    llm = LLM(tiny_qwen, num_kv_blocks=24, host_kv_blocks=96, kv_pause_fraction=None, **OPTS)  # type: ignore[arg-type]
    llm.generate([filler], GREEDY)
    llm.generate([agent + [1]], GREEDY)
    llm.core.stats.device_seconds, llm.core.stats.num_tokens = 1e4, 1  # recomputing looks very slow
    llm.core.pin("agent", agent, ttl=60.0)
    llm.core.step()
    out = llm.generate([big], GREEDY)[0]  # evicts the filler (copied to the host), then needs the pin's blocks
    host, table = llm.core.host_tier, llm.core.pin_table
    assert host is not None and table is not None and len(out.token_ids) == 8
    assert host.num_offloaded > 0 and host.offload_seconds > 0
    assert table.num_released == 1 and "agent" in table.paused  # released to the host, not waited out
    assert llm.core._resume_seconds_per_token() < 1.0
