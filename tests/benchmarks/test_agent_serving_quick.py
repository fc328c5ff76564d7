"""Smoke test of the agent-serving benchmark: every configuration completes and the table has its
columns (shape only; no figure asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import data_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (data_dir() / "tau-bench-airline" / "trajectories.json").exists(), reason="needs ../shared/data/tau-bench-airline")
def test_agent_serving_quick_mode_prints_every_configuration_and_column() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "agent_serving.py"), "--quick", "--no-write"],
                         capture_output=True, text=True, timeout=280, cwd=ROOT, env={**os.environ, "COLUMNS": "400"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = next(line for line in lines if "JCT mean s" in line)
    for col in ("p50 s", "p99 s", "jobs/min", "TTFT p50", "TTFT p99", "hit", "preempt", "recomp tok", "pins rel", "paused", "MB to host", "MB from host"):
        assert col in header
    rows = {name: [line for line in lines if line.startswith(f"│ {name} ")] for name in ("vllm-like", "+LAS", "+pins", "+graph", "agentrt")}
    assert all(len(r) == 1 for r in rows.values()), rows
    assert all(r[0].count("│") == header.count("┃") for r in rows.values())  # every cell filled
    summary = json.loads(next(line for line in lines if line.startswith("{")))
    floor = summary["floor"]  # every job alone: what bounds any configuration's gain on the mean
    assert floor["jobs"] == 3 and 0 < floor["jct_p50_s"] <= floor["jct_p99_s"] and floor["jct_mean_s"] > 0
    assert summary["unloaded_s"] == floor["jct_p50_s"]
