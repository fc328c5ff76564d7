"""Training data: tau-bench airline conversations (split by task) and Python standard-library source.

Both are read from their sources at run time and never copied into the repository. The split is
deterministic: tasks are ordered by a hash of their id and the last 10% are held out.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import data_file
from engine.tokenizer import render_chat

HELD_OUT_FRACTION = 0.10


@dataclass(slots=True)
class AirlineData:
    tools: list[dict[str, Any]]
    train: list[list[dict[str, Any]]]  # conversations (OpenAI message lists)
    held_out: list[list[dict[str, Any]]]
    held_out_tasks: list[int]


def _task_rank(task_id: int) -> str:
    return hashlib.sha256(f"task-{task_id}".encode()).hexdigest()


def load_airline(data_dir: str | Path | None = None) -> AirlineData:
    """Load the recorded runs and split them by task id. Raises DataDirError when absent."""
    runs = json.loads(data_file("tau-bench-airline", "trajectories.json", override=data_dir).read_text())
    tools = json.loads(data_file("tau-bench-airline", "tools.json", override=data_dir).read_text())
    tasks = sorted({r["task_id"] for r in runs}, key=_task_rank)
    num_held = max(1, round(len(tasks) * HELD_OUT_FRACTION))
    held = set(tasks[-num_held:])
    train = [r["traj"] for r in runs if r["task_id"] not in held]
    held_out = [r["traj"] for r in runs if r["task_id"] in held]
    return AirlineData(tools, train, held_out, sorted(held))


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
