"""The CPU engine imports and generates where Triton is not installed (macOS, Windows, ARM wheels
missing): a subprocess in which `import triton` fails imports every engine module except the two
that hold `@triton.jit` kernels, and serves a tiny model on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import importlib, pkgutil, sys
sys.modules["triton"] = None  # import triton -> ImportError, as on a machine without its wheel
import engine
from engine.kernels.triton import triton_available
assert not triton_available()
skipped = {"engine.kernels.triton.attention_kernels", "engine.kernels.triton.moe_kernels"}
names = [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.") if m.name not in skipped]
for name in names:
    if not name.endswith("__main__"):
        importlib.import_module(name)
from engine import LLM, SamplingParams
llm = LLM(sys.argv[1], device="cpu", dtype="float32", block_size=4, num_kv_blocks=64)
out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=3, temperature=0.0))
assert len(out[0].token_ids) == 3, out
assert sys.modules["triton"] is None
print("ok", len(names))
"""


def test_cpu_engine_imports_and_generates_without_triton(tiny_qwen: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_qwen)], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ")
