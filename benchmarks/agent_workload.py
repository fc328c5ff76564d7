"""The agent-serving benchmark's workload (benchmarks/agent_serving.py): replayed tau-bench airline
runs as jobs of LLM turns, each turn's tool calls with a seeded latency drawn per tool.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.routing_bounds import Job as CallsJob
from engine.config import DEFAULT_MODEL_DIR, data_file
from engine.tokenizer import ChatTokenizer, render_chat, render_message

CONTEXT = 4096  # the shipped model's context; the tiny model's fits the longest run (agent_serving.MODEL)
Z99 = 2.3263  # the standard normal's 99th percentile


@dataclass(slots=True)
class Turn:
    prompt_ids: list[int]
    out_len: int
    calls: list[tuple[str, float]]  # (tool name, seconds it takes)


@dataclass(slots=True)
class Job:
    turns: list[Turn]
    arrival: float = 0.0  # unit-rate Poisson; scaled by 1 / rate


def calls_jobs(jobs: list[Job]) -> list[CallsJob]:
    """`jobs` as benchmarks/routing_bounds.py's (prompt, output tokens) calls, for its arithmetic."""
    return [CallsJob([(t.prompt_ids, t.out_len) for t in j.turns]) for j in jobs]


class LatencyModel:
    """Per-tool lognormal latencies: tool t has median `median * 2**u_t` (u_t in [-1, 1], fixed by
    the tool's name) and the p99/median ratio `p99 / median` of the defaults."""

    def __init__(self, median: float, p99: float) -> None:
        if not 0 < median < p99:
            raise ValueError(f"--tool-latency needs 0 < median < p99, got {median}, {p99}")
        self.median, self.sigma = median, math.log(p99 / median) / Z99

    def tool_median(self, name: str) -> float:
        u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") / 2**32 * 2 - 1
        return self.median * 2**u

    def draw(self, name: str, rng: random.Random) -> float:
        return self.tool_median(name) * math.exp(self.sigma * rng.gauss(0.0, 1.0))


def select_replay_runs(path: Path | None) -> list[dict[str, Any]]:
    """The runs to replay: by default the eval split of engine/train/data.py (tasks the default
    model never trained on); a given file is used whole."""
    if path is not None:
        return json.loads(path.read_text())
    from engine.train.data import split_runs

    return split_runs("eval")


def workload_task_ids() -> set[int]:
    """Task ids of the default workload (tests/benchmarks/test_workload_split.py)."""
    return {r["task_id"] for r in select_replay_runs(None)}


def build_jobs(runs: list[dict[str, Any]], num_jobs: int, seed: int, max_turns: int | None, max_out: int | None,
               latency: LatencyModel, system: bool = True, context: int | None = CONTEXT) -> list[Job]:
    """`system=False` (--quick) drops the system prompt and the tool list: short prompts. A run ends
    at its first turn that does not fit `context` (None: replayed whole) or past `max_turns`; each
    turn's output is the recorded message's length (capped at `max_out` if given)."""
    tools = json.loads(data_file("tau-bench-airline", "tools.json").read_text()) if system else None
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    rng = random.Random(seed)
    jobs, t = [], 0.0
    for j in range(num_jobs):
        traj = [dict(m) for m in runs[rng.randrange(len(runs))]["traj"] if system or m["role"] != "system"]
        first = next(m for m in traj if m["role"] == "user")
        first["content"] = f"[ticket {j}] {first['content']}"  # jobs share the system prompt only
        turns: list[Turn] = []
        for i, m in enumerate(traj):
            if m["role"] != "assistant":
                continue
            prompt = tok.encode(render_chat(traj[:i], tools, add_generation_prompt=False))
            out_len = max(1, len(tok.encode(render_message(m))) - 1)
            out_len = out_len if max_out is None else min(max_out, out_len)
            if (context is not None and len(prompt) + 1 + out_len > context) or (max_turns is not None and len(turns) >= max_turns):
                break
            calls = [(c["function"]["name"], latency.draw(c["function"]["name"], rng)) for c in m.get("tool_calls") or ()]
            turns.append(Turn(prompt, out_len, calls))
        t += rng.expovariate(1.0)
        jobs.append(Job(turns, t))
    return jobs
