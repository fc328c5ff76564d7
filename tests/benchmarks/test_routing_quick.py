"""The routing benchmark: its quick mode runs, and the simulator behaves as routing says it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.routing import build_model, tiny_context
from benchmarks.routing_bounds import Job, hit_rate_bound, kv_blocks_per_replica, round_robin_unbounded
from benchmarks.routing_sim import SimRequest, simulate
from engine.config import data_dir

ROOT = Path(__file__).resolve().parents[2]


def _conversations(num_jobs: int, num_turns: int) -> list[SimRequest]:
    """Each job: a shared system block, then its own blocks growing by one per turn."""
    out = []
    for j in range(num_jobs):
        for t in range(num_turns):
            blocks = ["system"] + [f"job{j}-{k}" for k in range(t + 1)]
            out.append(SimRequest(float(j) if t == 0 else 0.5, blocks, [16] * len(blocks), 4, session=f"job{j}", job=j))
    return out


def test_kv_aware_keeps_conversations_whole_where_round_robin_scatters_them() -> None:
    reqs = _conversations(num_jobs=8, num_turns=5)
    single = simulate(reqs, 1, "round-robin", 10_000, 1e-3, 1e-2)
    kv = simulate(reqs, 4, "kv-aware", 10_000, 1e-3, 1e-2)
    rr = simulate(reqs, 4, "round-robin", 10_000, 1e-3, 1e-2)
    assert kv.hit_rate >= single.hit_rate - 0.05
    assert kv.hit_rate > rr.hit_rate
    assert len(kv.jct_s) == 8 and set(kv.work_s) == {"r0", "r1", "r2", "r3"}


@pytest.mark.skipif(not (data_dir() / "mooncake" / "synthetic_trace.jsonl").exists(), reason="needs ../shared/data/mooncake")
def test_routing_quick_mode_simulates_every_policy() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "routing.py"), "--quick", "--no-cluster"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["sim"] == ["8"]
    (row,) = data["agent_budget_sweep"]  # the agent replay over KV budgets, at quick sizes one budget
    assert 0 < row["round-robin"] <= row["single"] + 1e-9 and row["kv_vs_round_robin"] == row["kv-aware"] / row["round-robin"]
    for policy in ("kv-aware", "round-robin", "least-loaded"):
        assert policy in out.stdout


def _two_jobs() -> list[Job]:
    """Two 2-turn jobs on a 32-token shared prefix: prompts 48 then 64 tokens, 4 output tokens."""
    shared = [7] * 32
    jobs = []
    for j in (1, 2):
        own1, own2 = [100 * j + i for i in range(16)], [200 * j + i for i in range(16)]
        jobs.append(Job([(shared + own1, 4), (shared + own1 + own2, 4)]))
    return jobs


def test_the_hit_rate_bound_is_the_shared_share_and_the_never_evicting_cache() -> None:
    """16-token blocks. Shared: 4 x 32 of 224 prompt tokens; a never-evicting cache holds 32 then
    48 of each job."""
    b = hit_rate_bound(_two_jobs(), 16)
    assert b["turns"] == 4 and b["mean_prompt_tokens"] == 56
    assert b["shared_share"] == 128 / 224 and b["ideal_hit_rate"] == 160 / 224
    assert b["max_ratio_vs_round_robin"] == 160 / 128


def test_round_robin_without_pressure_finds_the_last_turn_on_its_replica_one_time_in_n() -> None:
    """The second turn lands on the first turn's replica with probability 1/n (48 tokens cached),
    else finds the shared 32; the first turn finds the shared 32. One replica: the never-evicting cache."""
    jobs = _two_jobs()
    assert round_robin_unbounded(jobs, 1, 16) == hit_rate_bound(jobs, 16)["ideal_hit_rate"]
    assert round_robin_unbounded(jobs, 2, 16) == 2 * (32 + 0.5 * 48 + 0.5 * 32) / 224
    assert round_robin_unbounded(jobs, 4, 16) == 2 * (32 + 0.25 * 48 + 0.75 * 32) / 224


def test_the_kv_budget_is_a_share_of_the_live_conversations_and_fits_the_longest_call() -> None:
    """Calls of 52 and 68 tokens (prompt + output) past a 32-token shared prefix: a conversation
    holds 28 own tokens on average. 8 in flight on 2 replicas, factor 1.25: 1.25 x (32 + 4 x 28) =
    180 tokens = 12 blocks; 2 in flight, factor 1: 60 tokens, below the longest call's 5 blocks."""
    jobs = _two_jobs()
    assert kv_blocks_per_replica(jobs, 2, 8, 1.25, 16) == 12
    assert kv_blocks_per_replica(jobs, 4, 8, 1.25, 16) == 7  # 1.25 x (32 + 2 x 28) = 110 tokens
    assert kv_blocks_per_replica(jobs, 2, 2, 1.0, 16) == 5


def test_the_tiny_model_takes_whole_runs(tmp_path: Path) -> None:
    """The tiny model's context fits the longest call; the engine serves a prompt past the shipped
    model's 4096 tokens on it."""
    from engine import LLM, SamplingParams

    jobs = [Job([([5] * 4500, 8)])]
    context = tiny_context(jobs)
    assert context == 5120
    path, desc = build_model("tiny", context, tmp_path / "m")
    assert path is not None and "5120-token context" in desc
    assert json.loads((Path(path) / "config.json").read_text())["max_position_embeddings"] == 5120
    llm = LLM(path, device="cpu", dtype="float32", num_kv_blocks=320, num_threads=1)
    out = llm.generate([jobs[0].turns[0][0]], SamplingParams(max_tokens=2, ignore_eos=True))
    assert len(out[0].token_ids) == 2
    assert build_model("default", 4096, tmp_path / "d") == (None, "the shipped default model (4096-token context)")
