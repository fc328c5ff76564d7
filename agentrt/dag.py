"""A job's task graph (networkx): tasks, dependencies, states, critical path, export. Pure, no I/O.

Tasks are added while the job runs (an agent's calls become tasks when it makes them). An edge
u -> v means v started after consuming u's result (data dependency) or v was spawned by u.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import networkx as nx

from agentrt.errors import GraphError
from agentrt.types import Task, TaskState

_COLORS = {
    TaskState.PENDING: "lightgrey", TaskState.RUNNING: "gold", TaskState.SUCCEEDED: "palegreen",
    TaskState.FAILED: "salmon", TaskState.CANCELLED: "lightblue",
}


class JobDAG:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._graph: nx.DiGraph = nx.DiGraph()
        self._unsynced: list[Task] = []  # added since `graph` was last read
        self.tasks: dict[str, Task] = {}

    @property
    def graph(self) -> nx.DiGraph:
        """The tasks and their dependency edges as a networkx graph. Built on demand: adding a
        task is on every call's path, reading the graph (critical path, export) is rare."""
        for task in self._unsynced:
            # A new node only gains edges from existing nodes, so the graph stays acyclic by construction.
            self._graph.add_node(task.id)
            self._graph.add_edges_from((d, task.id) for d in task.deps)
        self._unsynced.clear()
        return self._graph

    def add_task(self, task: Task, deps: Iterable[str] = ()) -> None:
        """Add a task after `deps` (and its parent, if any). Raises GraphError on an unknown
        dependency or a duplicate id. (Edges only point into the new task, so no cycle can form.)"""
        if task.id in self.tasks:
            raise GraphError(f"task id {task.id!r} already in job {self.job_id}")
        deps = tuple(dict.fromkeys([task.parent, *deps] if task.parent else deps))
        for d in deps:
            if d not in self.tasks:
                raise GraphError(f"task {task.name!r} depends on unknown task(s) {[d for d in deps if d not in self.tasks]}")
        task.deps = deps
        self.tasks[task.id] = task
        self._unsynced.append(task)

    def set_state(self, task_id: str, state: TaskState, error: str | None = None) -> None:
        task = self.tasks[task_id]
        task.state = state
        if error is not None:
            task.error = error

    def ready(self) -> list[Task]:
        """Pending tasks whose dependencies all succeeded (parents may still be running)."""
        out = []
        for t in self.tasks.values():
            if t.state is TaskState.PENDING and all(
                self.tasks[d].state is TaskState.SUCCEEDED or d == t.parent for d in t.deps
            ):
                out.append(t)
        return out

    def blocked_by(self, task_id: str) -> list[str]:
        """Every task downstream of `task_id` (what can no longer run if it fails)."""
        return sorted(nx.descendants(self.graph, task_id))

    def steps_to_execution(self, task_id: str) -> int:
        """Unfinished dependency levels before `task_id` can run (0 when ready or running)."""
        task = self.tasks[task_id]
        if task.state is not TaskState.PENDING:
            return 0
        pending = [d for d in task.deps if self.tasks[d].state in (TaskState.PENDING, TaskState.RUNNING) and d != task.parent]
        return 0 if not pending else 1 + max(self.steps_to_execution(d) for d in pending)

    def critical_path(self) -> list[str]:
        """The chain of tasks with the longest total duration (task ids, in order)."""
        for u, v in self.graph.edges:
            self.graph.edges[u, v]["w"] = self.tasks[v].duration + 1e-9  # zero-length tasks still extend a path
        path = nx.dag_longest_path(self.graph, weight="w", default_weight=0.0)
        return list(path)

    @property
    def is_done(self) -> bool:
        return all(t.state not in (TaskState.PENDING, TaskState.RUNNING) for t in self.tasks.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "tasks": [
                {"id": t.id, "name": t.name, "kind": t.kind.value, "pool": t.pool.value, "units": t.units,
                 "est_tokens": t.est_tokens, "state": t.state.value, "deps": list(t.deps), "parent": t.parent,
                 "attempts": t.attempts, "error": t.error, "seconds": round(t.duration, 6)}
                for t in self.tasks.values()
            ],
        }

    def to_dot(self) -> str:
        lines = [f'digraph "{self.job_id}" {{', "  rankdir=LR; node [style=filled, shape=box];"]
        for t in self.tasks.values():
            label = f"{t.name}\\n{t.kind.value}@{t.pool.value}\\n{t.state.value}"
            lines.append(f'  "{t.id}" [label="{label}", fillcolor={_COLORS[t.state]}];')
        lines += [f'  "{u}" -> "{v}";' for u, v in self.graph.edges]
        lines.append("}")
        return "\n".join(lines)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)
