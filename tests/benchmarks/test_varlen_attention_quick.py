"""Smoke test of the varlen attention benchmark: its quick mode runs both paths and they agree (no speed asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_varlen_attention_quick_mode_runs_both_paths_and_they_agree() -> None:
    pytest.importorskip("triton")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "varlen_attention.py"), "--quick", "--no-write"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "varlen paged attention vs the torch loop" in out.stdout and "mixed" in out.stdout and "shared" in out.stdout
