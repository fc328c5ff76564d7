"""How tool calls are run so that no tool can hang or starve the others.

* Sync tools run on reusable daemon threads, one call at a time each, inside the CPU limiter. Python
  cannot stop a thread: when a call is cancelled (job cancel or timeout) its slot is freed at once and
  the call, if still running, is *abandoned* (its thread rejoins the idle ones when it ends): logged, counted (`num_abandoned`), and charged to its tool; a tool
  with `max_abandoned_per_tool` abandoned calls still running gets new calls refused (ToolError) until
  they end, so a hanging tool cannot pile up threads or hold slots the other jobs' tools need.
* Async tools run on the event loop, outside the CPU limiter (they wait on I/O, not on cores), under
  a watchdog thread: when the loop stops ticking for `block_threshold` seconds while an async tool
  runs, it logs which tool's code is on the loop thread's stack (`num_loop_blocks`); a stall with no
  tool's code on the stack is not blamed on a tool (`num_other_blocks`, logged at info).
* `cpu_bound` tools run in a child process per call (forkserver: safe beside threads), killed on cancel.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import multiprocessing
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from agentrt.errors import ToolError

logger = logging.getLogger(__name__)


def timed_call(fn: Callable[..., Any], args: dict[str, Any]) -> tuple[Any, float]:
    start = time.thread_time()
    result = fn(**args)
    return result, time.thread_time() - start


@dataclass(slots=True)
class _Call:
    tool: str
    abandoned: bool = False
    finished: bool = False


class _Worker:
    """A tool thread: it runs the calls put in its inbox, one at a time."""

    __slots__ = ("inbox",)

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()


class SyncToolThreads:
    """Sync tool calls on reusable daemon threads. A call takes an idle thread or starts one (so
    threads number at most the CPU limit plus the abandoned calls still running); a thread idle
    for `idle_seconds` ends. Starting a thread per call cost the event loop ~0.4 ms each (it waits
    for the thread to start)."""

    def __init__(self, limiter: anyio.CapacityLimiter, max_abandoned_per_tool: int = 4, idle_seconds: float = 10.0) -> None:
        self.limiter = limiter
        self.max_abandoned_per_tool = max_abandoned_per_tool
        self.idle_seconds = idle_seconds
        self.abandoned: dict[str, int] = {}  # tool -> abandoned calls still running
        self.num_abandoned = 0  # total ever abandoned
        self.num_threads_started = self.num_threads_alive = 0
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    async def run(self, name: str, fn: Callable[..., Any], args: dict[str, Any]) -> tuple[Any, float]:
        if self.abandoned.get(name, 0) >= self.max_abandoned_per_tool:
            raise ToolError(name, f"{self.abandoned[name]} earlier calls still run after being cancelled; "
                                  "new calls are refused until they end (the tool hangs?)")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, float]] = loop.create_future()
        call = _Call(name)
        ctx = contextvars.copy_context()  # tools see the job's context variables (e.g. its database)
        async with self.limiter:
            self._submit((loop, fut, call, ctx, fn, args))
            try:
                return await fut
            except BaseException:
                self._abandon(call)
                raise

    def close(self) -> None:
        """End the idle threads (a later call starts new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.inbox.put(())

    def _submit(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker()
            with self._lock:
                self.num_threads_started += 1
                self.num_threads_alive += 1
            threading.Thread(target=self._serve, args=(worker,), name="agentrt-tool", daemon=True).start()
        worker.inbox.put(item)

    def _serve(self, worker: _Worker) -> None:
        while True:
            try:
                item = worker.inbox.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if any(w is worker for w in self._idle):
                        self._idle.remove(worker)
                        self.num_threads_alive -= 1
                        return
                continue  # it was handed a call as it timed out
            if not item:  # `close`
                with self._lock:
                    self.num_threads_alive -= 1
                return
            self._work(worker, *item)

    def _work(self, worker: _Worker, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], call: _Call,
              ctx: contextvars.Context, fn: Callable[..., Any], args: dict[str, Any]) -> None:
        outcome: tuple[Any, BaseException | None]
        try:
            outcome = (ctx.run(timed_call, fn, args), None)
        except BaseException as exc:
            outcome = (None, exc)
        with self._lock:
            call.finished = True
            self._idle.append(worker)  # idle before the caller hears back: its next call reuses this thread
            if call.abandoned:
                self.abandoned[call.tool] -= 1
                logger.warning("abandoned call of sync tool %r finally ended", call.tool)
                return
        try:
            loop.call_soon_threadsafe(_settle, fut, *outcome)
        except RuntimeError:  # the loop is gone
            pass

    def _abandon(self, call: _Call) -> None:
        with self._lock:
            if call.finished:
                return
            call.abandoned = True
            self.abandoned[call.tool] = self.abandoned.get(call.tool, 0) + 1
            self.num_abandoned += 1
            running = self.abandoned[call.tool]
        logger.warning("sync tool %r was cancelled but keeps running on its thread (%d such calls of it now)", call.tool, running)


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class LoopWatchdog:
    """Logs async tools that block the event loop (one watchdog per loop, started on first use)."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWatchdog] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, block_threshold: float) -> None:
        self.loop, self.threshold = loop, block_threshold
        self.loop_thread = threading.get_ident()
        self.running: dict[int, tuple[str, Any]] = {}  # call id -> (tool name, code object)
        self.num_loop_blocks = 0  # stalls with an async tool's code on the loop's stack (logged as warnings)
        self.num_other_blocks = 0  # stalls while async tools ran but none of them was on the stack
        self._ids = itertools.count()
        self.last_tick = time.monotonic()
        loop.call_soon(self._tick)
        threading.Thread(target=self._watch, name="agentrt-loop-watchdog", daemon=True).start()

    @classmethod
    def for_running_loop(cls, block_threshold: float = 0.5) -> LoopWatchdog:
        loop = asyncio.get_running_loop()
        if loop not in cls._by_loop:
            cls._by_loop[loop] = cls(loop, block_threshold)
        return cls._by_loop[loop]

    def _tick(self) -> None:
        self.last_tick = time.monotonic()
        self.loop.call_later(self.threshold / 4, self._tick)

    def _watch(self) -> None:
        reported = False
        while not self.loop.is_closed():
            time.sleep(self.threshold / 4)
            stalled = time.monotonic() - self.last_tick
            if stalled < self.threshold or not self.running:
                reported = False
                continue
            if not reported:
                reported = True
                culprit, where = self._culprit()
                if culprit is not None:
                    self.num_loop_blocks += 1
                    logger.warning("event loop blocked for %.2fs by async tool %s: it must not make blocking calls "
                                   "(make it a sync tool, or await a non-blocking API)", stalled, culprit)
                else:  # no tool's code on the loop's stack: the stall is not a tool's (e.g. one huge fan-out's bookkeeping)
                    self.num_other_blocks += 1
                    logger.info("event loop busy for %.2fs outside any async tool (in %s)", stalled, where)

    def _culprit(self) -> tuple[str | None, str]:
        """(the running async tool whose code is on the loop thread's stack, or None; where the loop
        thread is: its innermost frame)."""
        frame = sys._current_frames().get(self.loop_thread)
        where = f"{frame.f_code.co_name} at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
        codes = {code: name for name, code in self.running.values()}
        while frame is not None:
            if frame.f_code in codes:
                return repr(codes[frame.f_code]), where
            frame = frame.f_back
        return None, where

    async def run(self, name: str, fn: Callable[..., Any], args: dict[str, Any]) -> tuple[Any, float]:
        key = next(self._ids)
        self.running[key] = (name, getattr(fn, "__code__", None))
        start = time.thread_time()
        try:
            return await fn(**args), time.thread_time() - start
        finally:
            del self.running[key]


def _child(conn: Any, fn: Callable[..., Any], args: dict[str, Any]) -> None:
    try:
        conn.send((True, timed_call(fn, args)))
    except BaseException as exc:
        conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


async def run_in_process(name: str, fn: Callable[..., Any], args: dict[str, Any]) -> tuple[Any, float]:
    """Run fn(**args) in a child process; killed if the call is cancelled. Raises ToolError for its errors."""
    ctx = multiprocessing.get_context("forkserver")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args), name=f"tool-{name}", daemon=True)
    proc.start()
    send.close()
    try:
        await anyio.wait_readable(recv.fileno())
        ok, value = recv.recv()
    except EOFError:
        proc.join(1)
        raise ToolError(name, f"its process died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(1)
        recv.close()
    if not ok:
        raise ToolError(name, f"raised {value}")
    return value  # type: ignore[no-any-return]
