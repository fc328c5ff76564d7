"""Smoke test of the stream-vs-generate benchmark: its quick mode prints all three rows (no speed asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stream_vs_generate_quick_mode_prints_every_api() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stream_vs_generate.py"), "--quick", "--no-write"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    for api in ("generate", "stream", "0.1 ms switch"):
        assert api in out.stdout
