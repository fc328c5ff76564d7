"""Pins at tool-call boundaries: released under KV pressure (longest TTL first), paused to the host
tier and resumed with identical output."""

from __future__ import annotations

from pathlib import Path

import torch

from engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
OPTS = dict(device="cpu", dtype="float32", block_size=4)


def tokens(seed: int, n: int) -> list[int]:
    return torch.randint(2, 128, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_a_pin_is_released_when_a_waiting_request_needs_its_blocks(tiny_qwen: Path) -> None:
    agent, big = tokens(1, 40), tokens(2, 64)
    llm = LLM(tiny_qwen, num_kv_blocks=24, **OPTS)  # type: ignore[arg-type]
    llm.generate([agent + [1]], GREEDY)
    llm.core.pin("agent", agent, ttl=600.0)  # its tool would take minutes
    llm.core.step()  # apply
    # 64 + 8 tokens need 18 of the 24 blocks; 10 are pinned: without releasing the pin it would wait forever.
    out = llm.generate([big], GREEDY)[0]
    assert len(out.token_ids) == 8
    assert llm.core.num_pins_released == 1 and "agent" not in llm.core.pins


def test_pressure_releases_the_pin_expiring_last_and_keeps_untimed_pins(tiny_qwen: Path) -> None:
    soon, late, forever = tokens(3, 24), tokens(4, 24), tokens(5, 24)
    llm = LLM(tiny_qwen, num_kv_blocks=30, **OPTS)  # type: ignore[arg-type]
    llm.generate([soon + [1], late + [1], forever + [1]], GREEDY)
    llm.core.pin("soon", soon, ttl=5.0)
    llm.core.pin("late", late, ttl=500.0)
    llm.core.pin("forever", forever, ttl=None)
    llm.core.step()
    llm.generate([tokens(6, 48)], GREEDY)  # 14 blocks: 12 free or evictable, 18 once one pin goes
    assert set(llm.core.pins) == {"soon", "forever"}
    assert llm.core.scheduler.radix.cached_prefix_len(soon) == 24  # type: ignore[union-attr]


def test_a_pin_expires_at_its_ttl(tiny_qwen: Path) -> None:
    import time

    llm = LLM(tiny_qwen, num_kv_blocks=30, **OPTS)  # type: ignore[arg-type]
    llm.generate([tokens(7, 24) + [1]], GREEDY)
    llm.core.pin("agent", tokens(7, 24), ttl=0.05)
    llm.core.step()
    assert "agent" in llm.core.pins
    time.sleep(0.06)
    llm.core.step()
    assert "agent" not in llm.core.pins and llm.core.num_pins_released == 0  # expired, not released


def test_a_paused_agent_resumes_from_the_host_tier_with_identical_output(tiny_qwen: Path) -> None:
    agent, big, turn = tokens(8, 40), tokens(9, 64), tokens(10, 6)
    ref = LLM(tiny_qwen, num_kv_blocks=64, **OPTS).generate([agent + turn], GREEDY)[0]  # type: ignore[arg-type]
    llm = LLM(tiny_qwen, num_kv_blocks=24, host_kv_blocks=64, **OPTS)  # type: ignore[arg-type]
    llm.generate([agent + [1]], GREEDY)
    llm.core.pin("agent", agent, ttl=600.0)  # waiting on its tool ...
    llm.core.step()
    llm.generate([big], GREEDY)  # ... when another request needs the device: the agent is paused
    radix = llm.core.scheduler.radix
    assert radix is not None and radix.cached_prefix_len(agent) < 40
    out = llm.generate([agent + turn], GREEDY)[0]  # the tool returned: the agent resumes
    # Resumed from the host tier (engine.kv.pins) as soon as `big` finished, before its next turn:
    # that turn finds its whole prefix on the device.
    assert llm.core.pin_table is not None and llm.core.pin_table.num_resumed == 1 and out.usage.cached_tokens >= 40
    assert out.token_ids == ref.token_ids
