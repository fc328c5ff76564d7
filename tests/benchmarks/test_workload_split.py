"""No benchmark measures on training data: every benchmark that replays the airline runs declares
its default workload's task ids (`workload_task_ids()`), and none is a training task.

Benchmarks are found two ways, so a new one cannot slip past: by name (add yours to NAMED), and by
scanning benchmarks/*.py for any reference to the airline runs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from engine.config import data_dir
from engine.train.data import airline_split

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
NAMED = ("spec_decode", "agentic", "trace_replay", "agent_serving", "routing", "verify_cost", "spec_replay")
AIRLINE_MARKERS = ("tau-bench-airline", "trajectories", "load_airline", "airline_runs", "split_runs")
HAS_DATA = (data_dir() / "tau-bench-airline" / "trajectories.json").exists()


def reads_airline_runs(name: str) -> bool:
    text = (ROOT / "benchmarks" / f"{name}.py").read_text()
    return any(marker in text for marker in AIRLINE_MARKERS)


def training_tasks_in(tasks: set[int]) -> set[int]:
    """The training tasks among `tasks`."""
    return set(tasks) & airline_split().train


def benchmarks() -> list[str]:
    scanned = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__" and reads_airline_runs(p.stem)}
    return sorted(scanned | set(NAMED))


@pytest.mark.skipif(not HAS_DATA, reason="needs ../shared/data/tau-bench-airline")
@pytest.mark.parametrize("name", benchmarks())
def test_default_workload_contains_no_training_task(name: str) -> None:
    if not (ROOT / "benchmarks" / f"{name}.py").exists():
        pytest.skip(f"benchmarks/{name}.py is not in this checkout")
    module = importlib.import_module(f"benchmarks.{name}")
    if not reads_airline_runs(name):
        assert not hasattr(module, "workload_task_ids") or not module.workload_task_ids()
        return
    assert hasattr(module, "workload_task_ids"), f"benchmarks/{name}.py replays airline runs but declares no workload_task_ids()"
    tasks = set(module.workload_task_ids())
    assert tasks, f"benchmarks/{name}.py declares an empty default workload"
    assert not training_tasks_in(tasks), f"benchmarks/{name}.py measures on training tasks {sorted(training_tasks_in(tasks))}"


@pytest.mark.skipif(not HAS_DATA, reason="needs ../shared/data/tau-bench-airline")
def test_the_check_catches_a_training_task() -> None:
    train_task = min(airline_split().train)
    eval_task = min(airline_split().eval)
    assert training_tasks_in({eval_task, train_task}) == {train_task}
    assert reads_airline_runs("spec_decode") and not reads_airline_runs("trace_replay")
