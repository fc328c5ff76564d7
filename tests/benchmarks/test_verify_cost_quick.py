"""The verify-cost benchmark: its instrumentation times the kernels' entry points and always
restores them, and its quick mode prints a row per row count (no speed asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import data_dir

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
HAS_DATA = (data_dir() / "tau-bench-airline" / "trajectories.json").exists()


def test_instrumentation_charges_each_call_to_its_part_and_restores_the_kernels() -> None:
    from benchmarks.verify_cost import Clock, instrumented
    from engine.kernels.cpu import attention as cpu_attention
    from engine.kernels.cpu import moe_dense as cpu_dense

    before = (cpu_attention.paged_attention, cpu_dense.DenseExperts.run)
    clock = Clock()
    with pytest.raises(RuntimeError), instrumented(clock):
        assert cpu_attention.paged_attention is not before[0]
        sleepy = clock.timed("attention", lambda: sum(range(200_000)))
        sleepy()
        raise RuntimeError("a failing step still restores the kernels")
    assert (cpu_attention.paged_attention, cpu_dense.DenseExperts.run) == before
    assert clock.parts["attention"] > 0 and set(clock.parts) == {"attention"}


@pytest.mark.skipif(not HAS_DATA, reason="needs ../shared/data/tau-bench-airline")
def test_quick_mode_prints_every_row_count() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "verify_cost.py"), "--quick"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("│")]
    assert [ln.split("│")[1].strip() for ln in lines] == ["1", "2", "3", "5", "9", "17"]
    assert lines[0].split("│")[4].strip() == "1.00"  # a plain step is the unit
