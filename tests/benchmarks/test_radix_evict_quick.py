"""Smoke test of the radix eviction benchmark: its quick mode runs both caches (no speed asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_radix_evict_quick_mode_prints_both_sizes() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "radix_evict.py"), "--quick", "--no-write"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Radix eviction" in out.stdout and "1000" in out.stdout.replace(",", "") and "5000" in out.stdout.replace(",", "")
    assert "CPU:" in out.stdout  # every table names the CPU it ran on
