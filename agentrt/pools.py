"""Where tool functions run: the `ToolExecutor` seam and its local implementation.

Async tools run on the event loop (under a blocking-call watchdog, not limited by the CPU pool);
sync tools on their own threads inside a CPU limiter, abandoned and isolated when cancelled;
`cpu_bound` tools in a killable child process (their function must be importable by module path).
Every call has a timeout: the tool's own (`@tool(timeout=...)`) or the executor's `default_timeout`.
Admission (how many run at once) is the scheduler's job; see agentrt.tool_runner for the mechanics.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import anyio

from agentrt.api import Tool
from agentrt.deadlines import Deadlines
from agentrt.errors import HeldResultError, ToolError
from agentrt.tool_runner import LoopWatchdog, SyncToolThreads, run_in_process
from agentrt.types import HeldResult


class ToolExecutor(Protocol):
    async def run(self, tool: Tool, args: dict[str, Any]) -> tuple[Any, float]:
        """Run `tool` with validated args; return (result, cpu_seconds)."""
        ...

    async def resolve(self, value: Any) -> Any:
        """The value behind a HeldResult this executor returned; any other value as is."""
        ...

    def release(self, value: Any) -> None:
        """Let go of a HeldResult this executor returned (the job that made it ended); later
        `resolve`s of it raise HeldResultError. Any other value: no-op."""
        ...


class LocalToolExecutor:
    """Args: num_threads (sync tools at once); num_processes (cpu_bound tools at once);
    default_timeout seconds for tools without their own (None: no limit); max_abandoned_per_tool;
    block_threshold seconds of event-loop stall that the watchdog reports."""

    def __init__(self, num_threads: int = 8, num_processes: int = 2, *, default_timeout: float | None = 300.0,
                 max_abandoned_per_tool: int = 4, block_threshold: float = 0.5) -> None:
        self.limiter = anyio.CapacityLimiter(num_threads)
        self.process_limiter = anyio.CapacityLimiter(num_processes)
        self.default_timeout = default_timeout
        self.threads = SyncToolThreads(self.limiter, max_abandoned_per_tool)
        self.block_threshold = block_threshold
        self.watchdog: LoopWatchdog | None = None
        self.deadlines = Deadlines()  # every call's timeout, without a timer per call

    async def run(self, tool: Tool, args: dict[str, Any]) -> tuple[Any, float]:
        timeout = tool.retry.timeout if tool.retry.timeout is not None else self.default_timeout
        if timeout is None:
            return await self._run(tool, args)
        call = self.deadlines.start(timeout)
        try:
            return await self._run(tool, args)
        except asyncio.CancelledError:
            if self.deadlines.expired(call):
                raise ToolError(tool.name, f"timed out after {timeout}s") from None
            raise
        finally:
            self.deadlines.finish(call)

    async def _run(self, tool: Tool, args: dict[str, Any]) -> tuple[Any, float]:
        if tool.is_async:
            watchdog = self.watchdog
            if watchdog is None or watchdog.loop is not asyncio.get_running_loop():
                watchdog = self.watchdog = LoopWatchdog.for_running_loop(self.block_threshold)
            return await watchdog.run(tool.name, tool.fn, args)
        if tool.cpu_bound:
            async with self.process_limiter:
                return await run_in_process(tool.name, tool.fn, args)
        return await self.threads.run(tool.name, tool.fn, args)

    async def resolve(self, value: Any) -> Any:
        """Results stay in the driver here: only another executor's HeldResult needs resolving,
        and that one cannot be reached (HeldResultError)."""
        if isinstance(value, HeldResult):
            raise HeldResultError(f"held result {value.object_id} of tool {value.tool!r} was made by another tool executor")
        return value

    def release(self, value: Any) -> None:
        """Nothing is held here."""

    def close(self) -> None:
        """End the idle tool threads now (busy ones end after their call; idle ones also end by
        themselves after a while). Processes live only as long as their calls."""
        self.threads.close()
