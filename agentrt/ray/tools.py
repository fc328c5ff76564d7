"""`RayToolExecutor`: the ToolExecutor that runs tool calls as Ray tasks placed by resource.

CPU tools ask for `num_cpus`, storage-bound tools for the custom `storage` resource (give it to the
nodes with fast disks: `ray start --resources '{"storage": 4}'`), GPU tools for `num_gpus`; "local"
tools run in the driver (LocalToolExecutor). The DAG executor keeps running the job on the driver;
only the call moves. A remote tool sees its arguments only: context variables of the job (such as
a per-job database) do not travel with it, so tools bound to job state stay "local".

Large results stay in Ray's object store. With `large_result_bytes` set, a result whose JSON is
larger comes back to the job as a HeldResult: the task returns it as its second object, which the
driver owns (so it outlives the worker, unlike a worker's `ray.put`) but never fetches. Passed to
another tool, its reference goes as a top-level task argument, so Ray hands the value to that
tool's worker from the store (across nodes, not through the driver); `resolve` fetches it into the
driver only when asked (a model's tool turn asks: the conversation needs the text). The driver
drops its reference when the job that made the result ends, so the store frees it then.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import ray

from agentrt.api import Tool
from agentrt.errors import HeldResultError, ToolError
from agentrt.pools import LocalToolExecutor
from agentrt.types import HeldResult


@dataclass(slots=True, frozen=True)
class Placement:
    tool: str
    resource: str
    node_id: str


@dataclass(slots=True, frozen=True)
class _Done:
    """What the driver fetches of a call: the result itself unless it is held in the store."""

    value: Any
    cpu_seconds: float
    node_id: str
    nbytes: int  # size of the result's JSON (0 when no threshold is set)
    held: bool


def _run_tool(fn: Any, args: dict[str, Any], threshold: int | None, held_names: list[str], *held_values: Any) -> tuple[_Done, Any]:
    """Runs on the worker (Ray resolved the held arguments into `held_values`). Returns what the
    driver reads, and the result again as the second object when it is larger than `threshold`."""
    start = time.thread_time()
    result = fn(**args, **dict(zip(held_names, held_values, strict=True)))
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    cpu = time.thread_time() - start
    node = ray.get_runtime_context().get_node_id()
    nbytes = len(msgspec.json.encode(result)) if threshold is not None else 0
    if threshold is not None and nbytes > threshold:
        return _Done(None, cpu, node, nbytes, True), result
    return _Done(result, cpu, node, nbytes, False), None


class RayToolExecutor:
    """Run tools as Ray tasks. `resources` maps tool names to "cpu", "storage", "gpu" or "local";
    other tools get `default`. Results larger than `large_result_bytes` (JSON) are held in the
    object store (None: every result comes back to the driver)."""

    def __init__(self, resources: dict[str, str] | None = None, num_cpus: float = 1.0, default: str = "cpu",
                 large_result_bytes: int | None = None) -> None:
        self.resources = dict(resources or {})
        self.default = default
        self.large_result_bytes = large_result_bytes
        self.local = LocalToolExecutor()
        remote = ray.remote(_run_tool)
        self._remotes = {
            "cpu": remote.options(num_cpus=num_cpus, num_returns=2),
            "storage": remote.options(num_cpus=0, resources={"storage": 1}, num_returns=2),
            "gpu": remote.options(num_cpus=0, num_gpus=1, num_returns=2),
        }
        self.placements: list[Placement] = []  # where each call ran, in completion order
        self._held: dict[str, Any] = {}  # HeldResult.object_id -> its ObjectRef (keeps the object alive)

    async def run(self, tool: Tool, args: dict[str, Any]) -> tuple[Any, float]:
        resource = self.resources.get(tool.name, self.default)
        if resource == "local":
            resolved = {k: await self.resolve(v) for k, v in args.items()}
            return await self.local.run(tool, resolved)
        names = [k for k, v in args.items() if isinstance(v, HeldResult)]
        refs = [self._ref(args[k]) for k in names]
        rest = {k: v for k, v in args.items() if k not in names}
        done_ref, value_ref = self._remotes[resource].remote(tool.fn, rest, self.large_result_bytes, names, *refs)
        try:
            done: _Done = await done_ref
        except ray.exceptions.RayTaskError as exc:  # the tool raised: surface its own error, as locally
            if isinstance(exc.cause, Exception):
                raise exc.cause from None
            raise ToolError(tool.name, str(exc)) from exc
        self.placements.append(Placement(tool.name, resource, done.node_id))
        if not done.held:
            return done.value, done.cpu_seconds
        handle = HeldResult(value_ref.hex(), done.nbytes, tool.name)
        self._held[handle.object_id] = value_ref
        return handle, done.cpu_seconds

    def _ref(self, handle: HeldResult) -> Any:
        ref = self._held.get(handle.object_id)
        if ref is None:
            raise HeldResultError(f"held result {handle.object_id} of tool {handle.tool!r} is not held here "
                                  f"(released, or made by another driver)")
        return ref

    async def resolve(self, value: Any) -> Any:
        """The value behind a HeldResult, fetched into the driver; any other value as is."""
        if not isinstance(value, HeldResult):
            return value
        return await self._ref(value)

    def release(self, value: Any) -> None:
        """Let the store free a held result (later uses raise HeldResultError); other values: no-op.
        The runtime releases a job's held results when the job ends (not when it stops at an
        interrupt: its resume replays them)."""
        if isinstance(value, HeldResult):
            self._held.pop(value.object_id, None)

    @property
    def num_held(self) -> int:
        """Results held in the object store for this driver now."""
        return len(self._held)

    def close(self) -> None:
        """Release the held results and the local pools (Ray owns its workers)."""
        self._held.clear()
        self.local.close()
