"""Where tool functions run: the `ToolExecutor` seam and its local implementation.

Async tools run on the event loop; sync tools on a thread pool; `cpu_bound` tools on a process pool
(their function must be importable by module path). Admission (how many run at once) is the
scheduler's job; the executor only runs what it is given, measuring CPU seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import time
from typing import Any, Protocol

import anyio
import anyio.to_thread

from agentrt.api import Tool


class ToolExecutor(Protocol):
    async def run(self, tool: Tool, args: dict[str, Any]) -> tuple[Any, float]:
        """Run `tool` with validated args; return (result, cpu_seconds)."""
        ...


def _timed(fn: Any, args: dict[str, Any]) -> tuple[Any, float]:
    start = time.thread_time()
    result = fn(**args)
    return result, time.thread_time() - start


class LocalToolExecutor:
    def __init__(self, num_threads: int = 8, num_processes: int = 2) -> None:
        self.limiter = anyio.CapacityLimiter(num_threads)
        self.num_processes = num_processes
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None

    async def run(self, tool: Tool, args: dict[str, Any]) -> tuple[Any, float]:
        if tool.is_async:
            start = time.thread_time()
            result = await tool.fn(**args)
            return result, time.thread_time() - start
        if tool.cpu_bound:
            return await self._run_in_process(tool, args)
        ctx = contextvars.copy_context()  # tools see the job's context variables (e.g. its database)
        return await anyio.to_thread.run_sync(ctx.run, _timed, tool.fn, args, limiter=self.limiter, abandon_on_cancel=True)

    async def _run_in_process(self, tool: Tool, args: dict[str, Any]) -> tuple[Any, float]:
        if self._processes is None:
            self._processes = concurrent.futures.ProcessPoolExecutor(self.num_processes)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._processes, functools.partial(_timed, tool.fn, args))

    def close(self) -> None:
        if self._processes is not None:
            self._processes.shutdown(cancel_futures=True)
            self._processes = None
