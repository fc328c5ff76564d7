"""Training data: tau-bench airline conversations (split by task) and Python standard-library source.

Both are read from their sources at run time and never copied into the repository.

The airline split is the one source of truth for what the project trains on and what it measures on:
training (`python -m engine.train`) reads only `train` runs, and every benchmark that replays airline
runs draws its default workload from `eval` runs only (tests/benchmarks/test_workload_split.py
checks this). The split is by task, never by run: the 4 recorded trials of a task are near-copies of
each other, so a run split would leak. Tasks are ordered by a hash of their id and the last 10% are
held out for evaluation: of the 40 tasks, 8, 14, 16 and 31 (16 runs). The shipped default and draft
models were trained on exactly the other 36 tasks (their eval.json records the held-out list).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.config import data_file
from engine.tokenizer import render_chat

HELD_OUT_FRACTION = 0.10
Split = Literal["train", "eval"]


@dataclass(slots=True, frozen=True)
class TaskSplit:
    """Task ids of the airline runs, by split (disjoint, together every recorded task)."""

    train: frozenset[int]
    eval: frozenset[int]

    def of(self, split: Split) -> frozenset[int]:
        """The task ids of `split` (ValueError for another name)."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        return self.train if split == "train" else self.eval


@dataclass(slots=True)
class AirlineData:
    tools: list[dict[str, Any]]
    train: list[list[dict[str, Any]]]  # conversations (OpenAI message lists)
    held_out: list[list[dict[str, Any]]]
    held_out_tasks: list[int]


def _task_rank(task_id: int) -> str:
    return hashlib.sha256(f"task-{task_id}".encode()).hexdigest()


def split_tasks(task_ids: set[int] | frozenset[int]) -> TaskSplit:
    """The train/eval split of a set of task ids: ordered by a hash of the id, the last
    `HELD_OUT_FRACTION` (at least one) are eval. Deterministic; independent of run order."""
    tasks = sorted(task_ids, key=_task_rank)
    num_held = max(1, round(len(tasks) * HELD_OUT_FRACTION))
    return TaskSplit(frozenset(tasks[:-num_held]), frozenset(tasks[-num_held:]))


def airline_runs(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every recorded run ({task_id, trial, traj, ...}) in file order. Raises DataDirError when absent."""
    runs: list[dict[str, Any]] = json.loads(data_file("tau-bench-airline", "trajectories.json", override=data_dir).read_text())
    return runs


def airline_tools(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The 14 airline tools' JSON schemas (OpenAI function format)."""
    tools: list[dict[str, Any]] = json.loads(data_file("tau-bench-airline", "tools.json", override=data_dir).read_text())
    return tools


def airline_split(data_dir: str | Path | None = None) -> TaskSplit:
    """The split of the recorded airline tasks (see the module docstring)."""
    return split_tasks({r["task_id"] for r in airline_runs(data_dir)})


def split_runs(split: Split, data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The recorded runs of `split`'s tasks, ordered by (task id, trial): a fixed order that
    benchmarks sample from with their own seeded generators."""
    runs = airline_runs(data_dir)
    keep = split_tasks({r["task_id"] for r in runs}).of(split)
    return sorted((r for r in runs if r["task_id"] in keep), key=lambda r: (r["task_id"], r["trial"]))


def load_airline(data_dir: str | Path | None = None) -> AirlineData:
    """Load the recorded runs and split them by task id. Raises DataDirError when absent."""
    runs = airline_runs(data_dir)
    split = split_tasks({r["task_id"] for r in runs})
    train = [r["traj"] for r in runs if r["task_id"] in split.train]
    held_out = [r["traj"] for r in runs if r["task_id"] in split.eval]
    return AirlineData(airline_tools(data_dir), train, held_out, sorted(split.eval))


def render_conversations(convs: list[list[dict[str, Any]]], tools: list[dict[str, Any]]) -> list[str]:
    return [render_chat(c, tools, add_generation_prompt=False) for c in convs]


def stdlib_texts(max_chars: int = 3_000_000) -> list[str]:
    """Python standard-library modules of this interpreter, in sorted path order, up to max_chars.

    Skips tests, idlelib, lib2to3 and files over 200 KB, so the corpus is reproducible for a given
    Python version."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "ensurepip")
    texts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in skip for part in rel.parts) or path.stat().st_size > 200_000:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return texts
