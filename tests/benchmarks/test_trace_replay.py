"""The prefix cache reproduces the Mooncake trace's reference hit rate; capacity limits hold."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engine.config import data_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
TRACE = data_dir() / "mooncake" / "synthetic_trace.jsonl"


@pytest.mark.skipif(not TRACE.exists(), reason="needs ../shared/data/mooncake")
def test_unlimited_cache_reproduces_the_reference_hit_rate_and_capacity_lowers_it() -> None:
    from benchmarks.trace_replay import load, replay

    trace = load(TRACE)
    unlimited, evicted = replay(trace, None)
    assert round(unlimited * 100, 1) == 65.1 and evicted == 0
    small, evicted_small = replay(trace[:800], 2e5)
    assert small < replay(trace[:800], None)[0] and evicted_small > 0


@pytest.mark.skipif(not TRACE.exists(), reason="needs ../shared/data/mooncake")
def test_host_and_disk_tiers_win_back_what_device_capacity_loses() -> None:
    from benchmarks.trace_replay import load, replay, replay_tiers

    trace = load(TRACE)[:1500]
    device_only, _ = replay(trace, 3e5)
    some, _ = replay_tiers(trace, 3e5, 3e5, 0, disk_min_hits=0)
    ample, writes = replay_tiers(trace, 3e5, 3e6, 3e7, disk_min_hits=0)
    assert device_only < some < ample
    assert abs(ample - replay(trace, None)[0]) < 1e-9
    # Admitting only blocks used twice to disk writes fewer blocks and keeps most of the benefit.
    picky, picky_writes = replay_tiers(trace, 3e5, 3e5, 3e7, disk_min_hits=2)
    everything, all_writes = replay_tiers(trace, 3e5, 3e5, 3e7, disk_min_hits=0)
    assert picky_writes < all_writes and device_only < picky <= everything
