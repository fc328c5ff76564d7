"""The routing benchmark: its quick mode runs, and the simulator behaves as routing says it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
