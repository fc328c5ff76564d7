"""The routing benchmark: its quick mode runs, and the simulator behaves as routing says it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.routing import Job, hit_rate_bound
from benchmarks.routing_sim import SimRequest, simulate
from engine.config import data_dir

ROOT = Path(__file__).resolve().parents[2]


def _conversations(num_jobs: int, num_turns: int) -> list[SimRequest]:
    """Each job: a shared system block, then its own blocks growing by one per turn."""
    out = []
    for j in range(num_jobs):
        for t in range(num_turns):
            blocks = ["system"] + [f"job{j}-{k}" for k in range(t + 1)]
            out.append(SimRequest(float(j) if t == 0 else 0.5, blocks, [16] * len(blocks), 4, session=f"job{j}", job=j))
    return out


def test_kv_aware_keeps_conversations_whole_where_round_robin_scatters_them() -> None:
    reqs = _conversations(num_jobs=8, num_turns=5)
    single = simulate(reqs, 1, "round-robin", 10_000, 1e-3, 1e-2)
    kv = simulate(reqs, 4, "kv-aware", 10_000, 1e-3, 1e-2)
    rr = simulate(reqs, 4, "round-robin", 10_000, 1e-3, 1e-2)
    assert kv.hit_rate >= single.hit_rate - 0.05
    assert kv.hit_rate > rr.hit_rate
    assert len(kv.jct_s) == 8 and set(kv.work_s) == {"r0", "r1", "r2", "r3"}


@pytest.mark.skipif(not (data_dir() / "mooncake" / "synthetic_trace.jsonl").exists(), reason="needs ../shared/data/mooncake")
def test_routing_quick_mode_simulates_every_policy() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "routing.py"), "--quick", "--no-cluster"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"sim": ["8"]}
    for policy in ("kv-aware", "round-robin", "least-loaded"):
        assert policy in out.stdout


def test_the_hit_rate_bound_is_the_shared_share_and_the_never_evicting_cache() -> None:
    """Two 2-turn jobs on a 32-token shared prefix, 16-token blocks: prompts 48 then 64 tokens.
    Shared: 4 x 32 of 224 prompt tokens; a never-evicting cache holds 32 then 48 of each job."""
    shared = [7] * 32
    jobs = []
    for j in (1, 2):
        own1, own2 = [100 * j + i for i in range(16)], [200 * j + i for i in range(16)]
        jobs.append(Job([(shared + own1, 4), (shared + own1 + own2, 4)]))
    b = hit_rate_bound(jobs, 16)
    assert b["turns"] == 4 and b["mean_prompt_tokens"] == 56
    assert b["shared_share"] == 128 / 224 and b["ideal_hit_rate"] == 160 / 224
    assert b["max_ratio_vs_round_robin"] == 160 / 128
