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


def test_autotune_ab_reports_both_settings_per_workload(tmp_path: Path) -> None:
    from benchmarks.engine_vs_hf import autotune_ab, build_checkpoint
    from engine import LLM
    from engine.kernels.cpu import linear as cpu_linear

    if not cpu_linear.available():
        pytest.skip("no C kernels here: nothing to tune")
    build_checkpoint(tmp_path, quick=True, arch="qwen3")
    llm = LLM(tmp_path, device="cpu", dtype="float32", num_kv_blocks=64)
    before = cpu_linear._KERNELS.choice
    rows, data = autotune_ab(llm, {"decode-b1": ([[5, 6, 7, 8]], 3), "decode-b2": ([[5, 6], [7, 8]], 2)}, repeats=2)
    assert [r[:2] for r in rows] == [["decode-b1", 1], ["decode-b2", 2]] and all(r[4] > 0 for r in rows)
    assert len(data["decode-b1"]["defaults_s"]) == len(data["decode-b1"]["tuned_s"]) == 2  # type: ignore[index]
    assert "linear" in data["choices"] and cpu_linear._KERNELS.choice == before  # the tuned split is back in force


def test_rows_report_medians_and_the_spread_of_the_per_run_speedups() -> None:
    from benchmarks.engine_vs_hf import _row

    row = _row("decode-b1", 2, 100, t_hf=[2.0, 4.0, 3.0], t_engine=[1.0, 1.0, 2.0])  # speedups 2, 4, 1.5
    assert row == ["decode-b1", 2, 100 / 3.0, 100 / 1.0, 2.0, "1.50-4.00"]
