"""The speculative decoding benchmark: eval turns in conversation order, one run per task first,
and a run fails when a drafter's output differs from plain decoding (no speed asserted)."""

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
needs_data = pytest.mark.skipif(not HAS_DATA, reason="needs ../shared/data/tau-bench-airline")


def test_a_drafter_whose_output_differs_from_plain_decoding_fails_the_run() -> None:
    from benchmarks.spec_decode import Tally, check_lossless

    same = {None: Tally(outputs=[[1, 2], [3]]), "suffix": Tally(outputs=[[1, 2], [3]])}
    check_lossless(same, [8, 14])
    differs = {None: Tally(outputs=[[1, 2], [3]]), "suffix": Tally(outputs=[[1, 2], [4]])}
    with pytest.raises(SystemExit, match=r"suffix.*turns \[1\].*tasks \[14\]"):
        check_lossless(differs, [8, 14])


@needs_data
def test_runs_cover_every_eval_task_before_repeating_one() -> None:
    from benchmarks.spec_decode import pick_runs
    from engine.train.data import airline_split

    runs = pick_runs(6, seed=0)
    tasks = [r["task_id"] for r in runs]
    assert sorted(tasks[:4]) == sorted(airline_split().eval) and set(tasks[4:]) <= airline_split().eval
    assert len({(r["task_id"], r["trial"]) for r in runs}) == 6


@needs_data
def test_quick_mode_completes_with_outputs_equal_to_plain_decoding() -> None:
    from engine.kernels.cpu import attention as cpu_attention

    trees = cpu_attention.tree_supported(64)  # the default model's head size; tree rows only where trees run
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "spec_decode.py"), "--quick", "--drafters", "suffix,ngram,suffix+mtp",
                          *(["--tree"] if trees else [])],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("none", "suffix", "ngram", "suffix+mtp", *(["suffix-tree"] if trees else [])):
        assert name in out.stdout


@needs_data
def test_a_warm_tree_is_seeded_from_training_tasks_only() -> None:
    from benchmarks.spec_decode import pick_runs, warm_documents, warm_runs
    from engine.train.data import airline_split

    seeded = {r["task_id"] for r in warm_runs()}
    assert seeded and seeded <= airline_split().train
    assert not seeded & {r["task_id"] for r in pick_runs(16, seed=0)}
    docs = warm_documents()  # --warm-source recorded; the served history's prompts come from the same runs
    assert len(docs) > len(warm_runs())  # several assistant turns per run
    assert all(doc[-1] == docs[0][-1] for doc in docs[:50])  # each ends at the turn's end token


@needs_data
def test_the_served_history_is_the_models_own_output_on_training_tasks() -> None:
    from benchmarks.spec_decode import history_prompts, served_documents
    from engine import LLM, SamplingParams
    from engine.speculative.suffix import SuffixDrafter

    prompts = history_prompts(3000, limit=2)
    train_prefix = history_prompts(3000)[:2]
    assert prompts == train_prefix and all(len(p) <= 3000 for p in prompts)
    params = SamplingParams(temperature=0.0, max_tokens=6)
    docs = served_documents(prompts, params, "cpu")
    keep = SuffixDrafter().prompt_context
    plain = LLM(kv_cache_memory_gb=0.25)
    try:
        outs = plain.generate(prompts, params)
    finally:
        plain.close()
    # each document: the prompt's last tokens, then exactly what plain decoding produces
    assert docs == [p[-keep:] + list(o.token_ids) for p, o in zip(prompts, outs, strict=True)]
