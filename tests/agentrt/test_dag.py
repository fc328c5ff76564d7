"""The job DAG: dependencies, cycles, readiness, steps to execution, critical path, export."""

from __future__ import annotations

import json

import pytest

from agentrt.dag import JobDAG
from agentrt.errors import GraphError
from agentrt.types import Pool, Task, TaskKind, TaskState


def t(i: str) -> Task:
    return Task(i, "j", f"task-{i}", TaskKind.TOOL, Pool.CPU)


def test_ready_set_follows_dependencies() -> None:
    d = JobDAG("j")
    d.add_task(t("a"))
    d.add_task(t("b"), ["a"])
    d.add_task(t("c"), ["a"])
    d.add_task(t("d"), ["b", "c"])
    assert [x.id for x in d.ready()] == ["a"]
    d.set_state("a", TaskState.SUCCEEDED)
    assert {x.id for x in d.ready()} == {"b", "c"}
    assert d.steps_to_execution("d") == 1 and d.steps_to_execution("b") == 0
    assert d.blocked_by("a") == ["b", "c", "d"]


def test_unknown_dependencies_duplicates_and_cycles_are_rejected() -> None:
    d = JobDAG("j")
    d.add_task(t("a"))
    with pytest.raises(GraphError, match="unknown"):
        d.add_task(t("b"), ["zzz"])
    with pytest.raises(GraphError, match="already"):
        d.add_task(t("a"))


def test_critical_path_takes_the_slowest_chain_and_exports_json_and_dot() -> None:
    d = JobDAG("j")
    for i, deps in (("a", []), ("slow", ["a"]), ("fast", ["a"]), ("end", ["slow", "fast"])):
        d.add_task(t(i), deps)
    d.tasks["slow"].started, d.tasks["slow"].finished = 0.0, 5.0
    d.tasks["fast"].started, d.tasks["fast"].finished = 0.0, 1.0
    assert d.critical_path() == ["a", "slow", "end"]
    data = json.loads(d.dumps())
    assert {x["id"]: x["deps"] for x in data["tasks"]}["end"] == ["slow", "fast"]
    assert '"a" -> "slow";' in d.to_dot()
