"""Smoke test of benchmarks/soak.py --quick: it runs and prints its table (shape only, no speed asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_soak_quick_mode_prints_its_table() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--quick", "--no-write"], capture_output=True,
                         text=True, timeout=280, cwd=ROOT, env={**os.environ, "COLUMNS": "250", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    for col in ("lost", "misrouted", "p99 ms", "RSS growth MB", "SIGKILL restarts"):
        assert col in out.stdout
