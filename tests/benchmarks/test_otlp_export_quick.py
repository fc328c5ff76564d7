"""Smoke test of the OTLP export benchmark: every mode runs and the collector decodes the spans (no speed asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_otlp_export_quick_mode_runs_every_mode_and_the_collector_receives_spans() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "otlp_export.py"), "--quick", "--no-write"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "COLUMNS": "200", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    assert out.returncode == 0, out.stderr[-2000:]
    for mode in ("none", "simple", "batch"):
        assert f"│ {mode}" in out.stdout
    # 2 repeats x 2 traced modes x (1 job span + 3 tool spans)
    assert "spans received by the collector: 16" in out.stdout
