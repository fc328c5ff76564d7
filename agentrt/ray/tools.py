"""`RayToolExecutor`: the ToolExecutor that runs tool calls as Ray tasks placed by resource.

CPU tools ask for `num_cpus`, storage-bound tools for the custom `storage` resource (give it to the
nodes with fast disks: `ray start --resources '{"storage": 4}'`), GPU tools for `num_gpus`; "local"
tools run in the driver (LocalToolExecutor). The DAG executor keeps running the job on the driver;
only the call moves. A remote tool sees its arguments only: context variables of the job (such as
a per-job database) do not travel with it, so tools bound to job state stay "local".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass
from typing import Any

import ray

from agentrt.api import Tool
from agentrt.errors import ToolError
from agentrt.pools import LocalToolExecutor


@dataclass(slots=True, frozen=True)
class Placement:
    tool: str
    resource: str
    node_id: str


def _run_tool(fn: Any, args: dict[str, Any]) -> tuple[Any, float, str]:
    """Runs on the worker: the result, the CPU seconds it took, and the node it ran on."""
    start = time.thread_time()
    result = fn(**args)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result, time.thread_time() - start, ray.get_runtime_context().get_node_id()


class RayToolExecutor:
    """Run tools as Ray tasks. `resources` maps tool names to "cpu", "storage", "gpu" or "local";
    other tools get `default`."""

    def __init__(self, resources: dict[str, str] | None = None, num_cpus: float = 1.0, default: str = "cpu") -> None:
        self.resources = dict(resources or {})
        self.default = default
        self.local = LocalToolExecutor()
        remote = ray.remote(_run_tool)
        self._remotes = {
            "cpu": remote.options(num_cpus=num_cpus),
            "storage": remote.options(num_cpus=0, resources={"storage": 1}),
            "gpu": remote.options(num_cpus=0, num_gpus=1),
        }
        self.placements: list[Placement] = []  # where each call ran, in completion order

    async def run(self, tool: Tool, args: dict[str, Any]) -> tuple[Any, float]:
        resource = self.resources.get(tool.name, self.default)
        if resource == "local":
            return await self.local.run(tool, args)
        try:
            result, cpu, node = await self._remotes[resource].remote(tool.fn, args)
        except ray.exceptions.RayTaskError as exc:  # the tool raised: surface its own error, as locally
            if isinstance(exc.cause, Exception):
                raise exc.cause from None
            raise ToolError(tool.name, str(exc)) from exc
        self.placements.append(Placement(tool.name, resource, node))
        return result, cpu

    def close(self) -> None:
        """Release the local pools (Ray owns its workers)."""
        self.local.close()
