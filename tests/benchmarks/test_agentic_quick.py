"""Smoke test of the agentic benchmark: every configuration completes, usage adds up and no session stays
pinned after its job (the benchmark asserts both); no speed asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import data_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (data_dir() / "tau-bench-airline" / "trajectories.json").exists(), reason="needs ../shared/data/tau-bench-airline")
def test_agentic_quick_mode_completes_every_configuration() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "agentic.py"), "--quick", "--no-write"],
                         capture_output=True, text=True, timeout=420, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("(1) naive", "(2) +batching", "(3) +prefix reuse", "(4) +LAS", "(5) +spec (suffix)", "(6) +FP4 experts", "(7) +KV tiers", "LangGraph + agentrt engine"):
        assert name in out.stdout
