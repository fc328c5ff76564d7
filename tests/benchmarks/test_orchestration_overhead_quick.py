"""Smoke test of the orchestration-overhead benchmark: every shape runs in both frameworks (shape only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_orchestration_overhead_quick_mode_runs_every_shape() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "orchestration_overhead.py"), "--quick", "--no-write"],
                         capture_output=True, text=True, timeout=280, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["wide", "wide (100)", "deep", "wide-sync"]
    assert all(len(r.split("│")) == 11 for r in rows)  # shape, tasks, 5 timings/spread, 2 ratios (+ the borders)
