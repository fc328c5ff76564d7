"""benchmarks/engine_vs_hf.py builds a checkpoint of every --arch that both sides load and run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen3", "llama", "gpt_oss", "deepseek_v3"])
def test_each_arch_checkpoint_runs_in_the_engine_and_in_transformers(arch: str, tmp_path: Path) -> None:
    import transformers

    from benchmarks.engine_vs_hf import build_checkpoint, run_engine, run_hf
    from engine import LLM

    assert build_checkpoint(tmp_path, quick=True, arch=arch) > 1e6
    llm = LLM(tmp_path, device="cpu", dtype="float32", num_kv_blocks=64)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype="float32").eval()
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    assert run_engine(llm, prompts, 3) > 0 and run_hf(hf, prompts, 3) > 0


def test_rows_report_medians_and_the_spread_of_the_per_run_speedups() -> None:
    from benchmarks.engine_vs_hf import _row

    row = _row("decode-b1", 2, 100, t_hf=[2.0, 4.0, 3.0], t_engine=[1.0, 1.0, 2.0])  # speedups 2, 4, 1.5
    assert row == ["decode-b1", 2, 100 / 3.0, 100 / 1.0, 2.0, "1.50-4.00"]
