"""The Runtime: runs jobs as dataflow on one anyio task group per job.

Every LLM call, tool call and sub-agent is a Task in the job's DAG. A task waits only for its own
pool's admission (the pure Scheduler decides who goes next), so a fast branch never waits for a slow
sibling: there is no superstep barrier. A failing task fails its job and cancels the job's other
tasks (FailurePolicy.CANCEL_SIBLINGS) unless the graph says CONTINUE; cancelling a job cancels every
task under it, aborting its engine requests (which frees their KV) and releasing its session pins.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import nullcontext
from typing import Any

import anyio
import msgspec

from agentrt import telemetry
from agentrt.api import Registry
from agentrt.cost import CostModel
from agentrt.dag import JobDAG
from agentrt.durable import MemoryStore, Replay, TaskStore, load_thread, save_thread
from agentrt.engine_client import EngineClient
from agentrt.errors import (
    AgentrtError,
    JobCancelledError,
    JobInterrupted,
    NotInterruptedError,
    TaskFailedError,
    TaskTimeoutError,
)
from agentrt.jobs import EventSink, JobRun, set_rollup
from agentrt.pools import LocalToolExecutor, ToolExecutor
from agentrt.scheduler import PoolLimits, Scheduler, ServingPolicy
from agentrt.sessions import Session, ToolLatencies
from agentrt.types import JobResult, JobSpec, Pool, RetryPolicy, Task, TaskState

logger = logging.getLogger(__name__)


class Runtime:
    """Runs jobs of registered graphs. One Runtime serves many concurrent jobs.

    Args: registry of tools/agents/graphs; engine (an EngineClient; None for tool-only graphs);
    limits per pool; policy "gittins" (default), "las" or "fcfs" (agentrt.scheduler); tools (a
    ToolExecutor); cost model; serving (which program-aware mechanisms reach the engine, default
    all); store of task results for replay and
    interrupts (agentrt.durable; default: in memory, the server's: its journal).
    """

    def __init__(
        self, registry: Registry, engine: EngineClient | None = None, *, limits: PoolLimits | None = None,
        policy: str = "gittins", tools: ToolExecutor | None = None, cost: CostModel | None = None,
        serving: ServingPolicy | None = None, store: TaskStore | None = None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        if limits is None:
            limits = PoolLimits(gpu=engine.max_batch() if engine else 64,
                                gpu_tokens=engine.kv_capacity_tokens() if engine else None)
        self.scheduler = Scheduler(policy, limits)
        self.tools = tools or LocalToolExecutor(num_threads=limits.cpu)
        self.cost = cost or CostModel()
        self.serving = serving or ServingPolicy()
        self.tool_latency = ToolLatencies()  # per-tool latency, learned online: pin TTLs at tool calls
        self.store: TaskStore = store or MemoryStore()
        self.jobs: dict[str, JobRun] = {}
        self._grants: dict[str, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)
        # Prefixes of queued LLM calls (task id -> prompt ids), for steps-to-execution hints.
        self.prefix_hints: dict[str, list[int]] = {}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    # ---- jobs ----------------------------------------------------------------------------
    async def run_job(self, spec: JobSpec, on_event: EventSink | None = None, traceparent: str | None = None) -> JobResult:
        """Run one job to completion. Never raises for a job failure: the JobResult says it."""
        graph = self.registry.get_graph(spec.graph)
        if not spec.job_id:
            spec = msgspec.structs.replace(spec, job_id=self.new_id("job-"))
        job = JobRun(spec, JobDAG(spec.job_id), on_event=on_event)
        job.replay = Replay(self.store, spec.job_id)
        self.jobs[spec.job_id] = job
        self.scheduler.submit_job(spec.job_id, spec.priority)
        start = time.perf_counter()
        status, output, error, interrupt = "succeeded", None, None, None
        # The GenAI conventions name a workflow with gen_ai.agent.name (gen_ai.workflow.name was retired).
        attrs = {"gen_ai.operation.name": "invoke_workflow", "gen_ai.agent.name": graph.name, "agentrt.graph": graph.name,
                 "agentrt.job.id": spec.job_id}
        from agentrt.context import JobContext

        with telemetry.span(f"invoke_workflow {graph.name}", attrs, parent=telemetry.extract_context(traceparent)) as sp, \
                telemetry.timed_operation({"gen_ai.operation.name": "invoke_workflow", "gen_ai.agent.name": graph.name}):
            try:
                inputs = graph.validate(dict(spec.inputs))
                top = JobContext(self, job, None, session=self._thread_session(job))
                with job.scope:
                    async with anyio.create_task_group() as tg:
                        job.task_group = tg
                        output = await graph.fn(top, **inputs)
                if job.scope.cancelled_caught:
                    status, error = "cancelled", "job cancelled"
                    telemetry.mark_error(sp, "cancelled", f"job {spec.job_id} was cancelled")
            except Exception as exc:  # the job fails (or waits at an interrupt); the runtime keeps serving
                if isinstance(root := _root(exc), JobInterrupted):
                    status, interrupt = "interrupted", root.payload
                else:
                    status, error = "failed", _describe(exc)
                    telemetry.mark_error(sp, type(root).__qualname__, error)
            finally:
                await self._close_job(job, keep_pins=status == "interrupted")
            if status != "interrupted":
                self.store.forget_tasks(spec.job_id)
            if status == "succeeded" and spec.thread_id is not None and job.sessions:
                root = job.sessions[0]
                save_thread(self.store, spec.thread_id, root.token_ids, root.messages, root.text, root.tools)
            # The job's cost is exactly the sum of its leaf (LLM and tool) costs.
            job.usage.cost_usd = math.fsum(t.usage.cost_usd for t in job.dag.tasks.values() if t.kind.value in ("llm", "tool"))
            set_rollup(sp, job.usage)
        extra: dict[str, Any] = {"interrupt": interrupt} if status == "interrupted" else {}
        job.emit("job_finished", status=status, **extra)
        return JobResult(job_id=spec.job_id, graph=spec.graph, status=status, output=output if status == "succeeded" else None,
                         error=error, usage=job.usage, seconds=time.perf_counter() - start, interrupt=interrupt)

    async def stream_job(self, spec: JobSpec, traceparent: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Run a job and yield its events as they happen (`task_started`, `llm_token`, `llm_output`,
        `task_finished`, `task_replayed`, `job_finished`, each with `parent_task_id` when it is a
        task's), then a last `{"kind": "job_result", "result": JobResult}`. Leaving early cancels the job."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        if not spec.job_id:
            spec = msgspec.structs.replace(spec, job_id=self.new_id("job-"))

        async def run() -> None:
            try:
                res = await self.run_job(spec, on_event=queue.put_nowait, traceparent=traceparent)
            except Exception as exc:  # e.g. UnknownGraphError: raised to the consumer
                queue.put_nowait({"kind": "error", "error": exc})
                return
            queue.put_nowait({"kind": "job_result", "job_id": res.job_id, "result": res})

        runner = asyncio.ensure_future(run())
        try:
            while True:
                event = await queue.get()
                if event["kind"] == "error":
                    raise event["error"]
                yield event
                if event["kind"] == "job_result":
                    return
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    async def resume(self, job_id: str, value: Any = None, on_event: EventSink | None = None) -> JobResult:
        """Continue a job that stopped at `ctx.interrupt(...)`: it is replayed from its recorded tasks
        and the interrupt returns `value`. Raises NotInterruptedError if the job is not waiting."""
        job = self.jobs.get(job_id)
        if job is None or not self.store.resolve_interrupt(job_id, msgspec.msgpack.encode(value)):
            raise NotInterruptedError(f"job {job_id!r} is not waiting at an interrupt")
        return await self.run_job(job.spec, on_event=on_event)

    def _thread_session(self, job: JobRun) -> Session | None:
        """A thread job's root session: the thread's conversation so far (same id, so same KV pin)."""
        thread_id = job.spec.thread_id
        if thread_id is None:
            return None
        state = load_thread(self.store, thread_id)
        session = Session(f"thread/{thread_id}")
        if state is not None:  # a state saved without its text re-renders in full at the next turn
            session = Session(session.id, state.token_ids if state.text else [], state.messages, text=state.text,
                              tools=state.tools)
        job.sessions.append(session)
        return session

    async def _close_job(self, job: JobRun, keep_pins: bool = False) -> None:
        for session in job.sessions:  # an interrupted job's or a thread's pins expire by their TTL, unless used again first
            keep = keep_pins or session.id.startswith("thread/")
            if session.pinned and self.engine is not None and not keep:
                self.engine.unpin(session.id)
        for key in job.hints:
            if self.engine is not None:
                self.engine.unhint(key)
        job.hints.clear()
        if not keep_pins:  # an interrupted job's resume replays its held handles from the journal: keep them
            for held in job.held:
                self.tools.release(held)
            job.held.clear()
        self.scheduler.finish_job(job.spec.job_id)
        for task in job.dag.tasks.values():
            if task.state in (TaskState.PENDING, TaskState.RUNNING):
                task.state = TaskState.CANCELLED

    def cancel(self, job_id: str) -> bool:
        """Cancel a running job (everything under it). False if it is not running."""
        job = self.jobs.get(job_id)
        if job is None or job.dag.is_done and job.task_group is None:
            return False
        job.scope.cancel()
        return True

    # ---- tasks ---------------------------------------------------------------------------
    async def run_task(self, job: JobRun, task: Task, deps: list[str], fn: Callable[[], Awaitable[Any]], retry: RetryPolicy) -> Any:
        """Admit `task` to its pool, run `fn` with retries/timeout, record state and usage."""
        job.dag.add_task(task, deps)
        await self._admit(task)
        task.state, task.started = TaskState.RUNNING, time.perf_counter()
        job.emit("task_started", task)
        try:
            result = await self._attempts(task, fn, retry)
        except BaseException as exc:
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            task.state = TaskState.CANCELLED if cancelled else TaskState.FAILED
            task.error = None if cancelled else _describe(exc)
            job.emit("task_finished", task, state=task.state.value, error=task.error)
            raise
        finally:
            task.finished = time.perf_counter()
            self._release(job, task)
            self._dispatch()
        task.state = TaskState.SUCCEEDED
        if job.on_event is not None:
            job.emit("task_finished", task, state="succeeded", usage=msgspec.to_builtins(task.usage))
        return result

    def _release(self, job: JobRun, task: Task) -> None:
        """Give back the task's pool capacity and credit its engine work to the job (LAS service);
        when the job's service grew, its LLM requests still in the engine are re-prioritised."""
        work = engine_work(task)
        if work == 0 or self.engine is None or not self.serving.engine_priority:
            self.scheduler.release(task, work)  # no engine work: the job's service cannot grow
            return
        before = self.scheduler.engine_priority(job.spec.job_id)
        self.scheduler.release(task, work)
        after = self.scheduler.engine_priority(job.spec.job_id)
        if after != before and self.engine is not None and self.serving.engine_priority:
            self.engine.set_program_priority(job.spec.job_id, after)

    async def _attempts(self, task: Task, fn: Callable[[], Awaitable[Any]], retry: RetryPolicy) -> Any:
        for attempt in range(1, retry.max_attempts + 1):
            task.attempts = attempt
            try:
                with anyio.fail_after(retry.timeout) if retry.timeout else nullcontext():
                    return await fn()
            except TimeoutError as exc:
                error: Exception = TaskTimeoutError(f"task {task.name!r} timed out after {retry.timeout}s")
                error.__cause__ = exc
            except AgentrtError as exc:
                error = exc
            except Exception as exc:
                error = TaskFailedError(task.name, exc)
            if attempt == retry.max_attempts:
                raise error
            await anyio.sleep(retry.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _admit(self, task: Task) -> None:
        if self.scheduler.try_start(task):  # nothing of its pool waits and it fits: no queue, no wait
            return
        grant: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._grants[task.id] = grant
        self.scheduler.enqueue(task)
        self._dispatch()
        try:
            await grant
        except BaseException:
            if not self.scheduler.cancel(task) and self._grants.get(task.id) is None:
                self.scheduler.release(task, 0.0)  # granted but never started: give it back
                self._dispatch()
            self._grants.pop(task.id, None)
            raise

    def _dispatch(self) -> None:
        if not self.scheduler.has_queued:
            return
        for task in self.scheduler.pick():
            grant = self._grants.pop(task.id, None)
            if grant is not None and not grant.done():
                grant.set_result(None)
        if self.engine is not None and self.prefix_hints and self.serving.graph_hints:
            # The next LLM calls in line: announce them as imminent so the engine keeps their
            # prefixes on the device, or restores them from host memory, while they wait.
            for steps, task in enumerate(self.scheduler.peek(Pool.GPU, PREFETCH_NEXT)):
                tokens = self.prefix_hints.get(task.id)
                if tokens is not None:
                    self.engine.hint(task.id, tokens, steps)


def engine_work(task: Task) -> int:
    """The engine work a task consumed, in tokens: prompt tokens computed (including ones recomputed
    after a preemption) plus tokens decoded. Tools and sub-agent coordination consume none."""
    u = task.usage
    return u.prefill_tokens_computed + u.recomputed_tokens + u.generated_tokens


PREFETCH_NEXT = 2  # queued LLM calls re-announced on every dispatch


def _root(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = [_root(e) for e in exc.exceptions]
    real = [e for e in leaves if not isinstance(e, anyio.get_cancelled_exc_class())]
    return (real or leaves)[0]


def _describe(exc: BaseException) -> str:
    root = _root(exc)
    return f"{type(root).__name__}: {root}"


__all__ = ["Runtime", "JobRun", "JobCancelledError"]
