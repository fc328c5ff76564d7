"""What the Runtime (agentrt.executor) and a JobContext (agentrt.context) share: a running job's
record (`JobRun`), the runtime services a context calls (`TaskRunner`, implemented by `Runtime`),
and the span roll-up of usage. Kept apart so that neither module imports the other at import time:
the executor creates contexts (a lazy import), contexts only see this protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from agentrt.api import Registry
from agentrt.cost import CostModel
from agentrt.dag import JobDAG
from agentrt.engine_client import EngineClient
from agentrt.pools import ToolExecutor
from agentrt.scheduler import Scheduler, ServingPolicy
from agentrt.sessions import ToolLatencies
from agentrt.types import HeldResult, JobSpec, RetryPolicy, Task, Usage

EventSink = Callable[[dict[str, Any]], None]


@dataclass(slots=True, eq=False)
class JobRun:
    spec: JobSpec
    dag: JobDAG
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    on_event: EventSink | None = None
    usage: Usage = field(default_factory=Usage)
    sessions: list[Any] = field(default_factory=list)
    hints: set[str] = field(default_factory=set)  # next-turn hints still announced to the engine
    held: list[HeldResult] = field(default_factory=list)  # HeldResults of this job's tool calls, released when it ends
    task_group: Any = None
    replay: Any = None  # agentrt.durable.Replay: recorded task results of this job

    def emit(self, kind: str, task: Task | None = None, **data: Any) -> None:
        if self.on_event is not None:
            event = {"kind": kind, "job_id": self.spec.job_id, **data}
            if task is not None:
                event |= {"task_id": task.id, "name": task.name, "task_kind": task.kind.value, "parent_task_id": task.parent}
            self.on_event(event)


class TaskRunner(Protocol):
    """The runtime as a JobContext sees it (`agentrt.executor.Runtime`)."""

    registry: Registry
    engine: EngineClient | None
    scheduler: Scheduler
    tools: ToolExecutor
    cost: CostModel
    prefix_hints: dict[str, list[int]]
    serving: ServingPolicy
    tool_latency: ToolLatencies

    def new_id(self, prefix: str) -> str: ...

    async def run_task(self, job: JobRun, task: Task, deps: list[str], fn: Callable[[], Awaitable[Any]], retry: RetryPolicy) -> Any: ...


def set_rollup(sp: Any, usage: Usage) -> None:
    """Parent spans carry sums of their leaves under agentrt.rollup.* (marked, never summed twice)."""
    sp.set_attribute("agentrt.rollup", True)
    for name in usage.__struct_fields__:
        sp.set_attribute(f"agentrt.rollup.{name}", getattr(usage, name))
