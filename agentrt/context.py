"""JobContext: what an agent receives (the implementation of agentrt.api.Context).

Each LLM call, tool call and spawned agent becomes a task of the job's DAG. A context tracks its
*frontier*, the tasks whose results it has consumed and nothing has depended on yet: a new task
depends on the frontier, so sequential calls chain, concurrent calls fan out, and the call after a
gather fans in.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from agentrt import telemetry
from agentrt.api import Agent, Tool
from agentrt.durable import INTERRUPT, MISSING, fingerprint
from agentrt.errors import AgentrtError, JobInterrupted, ToolError
from agentrt.jobs import JobRun, TaskRunner, set_rollup
from agentrt.llm_turns import run_llm_turn
from agentrt.sessions import Session
from agentrt.tool_turns import pin_for_tool, run_tool_turn
from agentrt.types import (
    FailurePolicy,
    Generation,
    HeldResult,
    Pool,
    RetryPolicy,
    Task,
    TaskKind,
    ToolCall,
    Usage,
)


class Handle:
    """A spawned sub-agent. `await handle` returns its result or raises its error."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def _set(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()

    async def result(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result

    def __await__(self) -> Any:
        return self.result().__await__()



def _revive_held(value: Any) -> Any:
    """A HeldResult replayed from the journal comes back as its tagged dict (the journal decodes
    untyped): make it a handle again (it resolves while this driver still holds the object)."""
    if isinstance(value, dict) and value.get("type") == "HeldResult" and set(value) == {"type", "object_id", "nbytes", "tool"}:
        return msgspec.convert(value, HeldResult)
    return value

class JobContext:
    def __init__(self, runtime: TaskRunner, job: JobRun, task: Task | None, session: Session | None = None,
                 parent: JobContext | None = None) -> None:
        self.runtime, self.job, self.task, self.parent = runtime, job, task, parent
        self.usage = Usage()  # everything this context and its sub-agents consumed (roll-up)
        self._session = session
        self._frontier: dict[str, None] = {}
        self._frozen: list[str] | None = None  # the frontier as a gather began (its calls' deps)
        self._last_session: Session | None = None  # the conversation of this context's last LLM call
        self._next_hint: str | None = None  # key of the hint announcing that conversation's next turn
        self.key = task.key if task is not None else ""  # tasks it creates are keyed KEY/0, KEY/1, ...
        self._seq = 0

    @property
    def job_id(self) -> str:
        return self.job.spec.job_id

    @property
    def session(self) -> Session:
        """This context's conversation (created on first use; its KV is pinned between turns)."""
        if self._session is None:
            self._session = Session(self.runtime.new_id(f"{self.job_id}/session-"))
            self.job.sessions.append(self._session)
        return self._session

    def new_session(self) -> Session:
        session = Session(self.runtime.new_id(f"{self.job_id}/session-"))
        self.job.sessions.append(session)
        return session

    def _task(self, name: str, kind: TaskKind, pool: Pool, est_tokens: int = 0) -> tuple[Task, list[str]]:
        task = Task(self.runtime.new_id("t"), self.job_id, name, kind, pool, est_tokens=est_tokens,
                    parent=self.task.id if self.task else None, key=self._next_key())
        return task, list(self._frontier) if self._frozen is None else self._frozen

    def _next_key(self) -> str:
        self._seq += 1
        return f"{self.key}/{self._seq - 1}"

    async def _replayed(self, task: Task, fp: str, fn: Callable[[], Awaitable[Any]], type: Any = Any,
                        on_replay: Callable[[Any], object] | None = None) -> Any:
        """`fn()`, recorded in the job's journal; on replay the recorded result instead (agentrt.durable)."""
        replay = self.job.replay
        if replay is None:
            return await fn()
        value = replay.lookup(task.key, fp, type)
        if value is not MISSING:
            if on_replay is not None:
                on_replay(value)
            self.job.emit("task_replayed", task)
            return value
        value = await fn()
        replay.record(task.key, fp, value)
        return value

    async def interrupt(self, payload: Any = None) -> Any:
        """Suspend the job until it is resumed with an input, and return that input.

        The job ends with status "interrupted" carrying `payload` (msgpack-encodable); resuming it
        (`agentrt resume JOB --input JSON`, `Runtime.resume`, `Client.resume`) replays the job up
        to here from its journal and returns the input. Raises JobInterrupted to suspend: let it
        propagate."""
        key = self._next_key()
        replay = self.job.replay
        if replay is not None:
            value = replay.lookup(key, INTERRUPT)
            if value is not MISSING:
                return value
            replay.suspend(key)
        raise JobInterrupted(key, payload)

    def _account(self, usage: Usage) -> None:
        """Add a leaf's usage to this context, its ancestors and the job."""
        ctx: JobContext | None = self
        while ctx is not None:
            ctx.usage.add(usage)
            ctx = ctx.parent
        self.job.usage.add(usage)

    def _consumed(self, task: Task) -> None:
        for dep in task.deps:
            self._frontier.pop(dep, None)
        self._frontier[task.id] = None

    # ---- tools ---------------------------------------------------------------------------
    async def call(self, tool: Tool | str, /, **args: Any) -> Any:
        """Run a tool as a CPU task. Raises UnknownToolError, SchemaError or ToolError (with the
        tool's name); the tool's retry/timeout policy applies."""
        t = tool if isinstance(tool, Tool) else self.runtime.registry.get_tool(tool)
        validated = t.validate(args)
        task, deps = self._task(t.name, TaskKind.TOOL, Pool.NONE if t.is_async else Pool.CPU)  # async tools wait on I/O, not cores
        pin_for_tool(self, t.name)
        # The span's attributes are built only when tracing is on: this is every tool call's path.
        span = telemetry.span(f"execute_tool {t.name}", {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": t.name, "gen_ai.tool.call.id": task.id,
            "gen_ai.tool.type": "function", "agentrt.task.name": task.name, "agentrt.job.id": self.job_id,
        }) if telemetry.enabled() else telemetry.NO_SPAN
        with span as sp, telemetry.timed_operation({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": t.name}):
            fp = fingerprint("tool", t.name, validated)
            try:
                result = _revive_held(await self.runtime.run_task(
                    self.job, task, deps, lambda: self._replayed(task, fp, lambda: self._run_tool(t, validated, task)), t.retry))
                if isinstance(result, HeldResult):
                    self.job.held.append(result)  # released when the job ends (Runtime._close_job)
            finally:
                if task.started is not None:
                    self.runtime.tool_latency.observe(t.name, task.duration)
            sp.set_attribute("agentrt.cpu_seconds", task.usage.cpu_seconds)
            sp.set_attribute("agentrt.cost.usd", task.usage.cost_usd)
            telemetry.tool_cost(t.name, task.usage.cost_usd)
        self._consumed(task)
        return result

    async def resolve(self, value: Any) -> Any:
        """The value behind a HeldResult (a large tool result kept in Ray's object store), fetched
        into the driver now; any other value as is. Raises HeldResultError when it cannot be reached."""
        if isinstance(value, HeldResult):
            return await self.runtime.tools.resolve(value)
        return value

    async def call_all(self, calls: Sequence[ToolCall | tuple[str, dict[str, Any]]]) -> list[Any]:
        """Run one model turn's tool calls, concurrently unless the runtime's serving policy says
        otherwise; results (or the ToolError/SchemaError/UnknownToolError a call raised) in the
        model's order. See agentrt.tool_turns."""
        return await run_tool_turn(self, calls)

    async def _run_tool(self, t: Tool, args: dict[str, Any], task: Task) -> Any:
        try:
            result, cpu = await self.runtime.tools.run(t, args)
        except (AgentrtError, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:
            raise ToolError(t.name, f"raised {type(exc).__name__}: {exc}") from exc
        try:
            msgspec.json.encode(result)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ToolError(t.name, f"returned an unserialisable {type(result).__name__}: {exc}") from exc
        task.usage.cpu_seconds = cpu
        task.usage.cost_usd = self.runtime.cost.tool_call(cpu)
        self._account(Usage(cpu_seconds=cpu, cost_usd=task.usage.cost_usd))
        return result

    # ---- storage -------------------------------------------------------------------------
    async def io(self, fn: Callable[..., Any], /, *args: Any, nbytes: int = 0, name: str | None = None, **kwargs: Any) -> Any:
        """Run blocking I/O `fn(*args, **kwargs)` as a storage-pool task (bounded concurrency)
        in a worker thread; `nbytes` (bytes it moves) is recorded in the task's usage."""
        task, deps = self._task(name or str(getattr(fn, "__name__", "io")), TaskKind.IO, Pool.STORAGE)
        task.usage.io_bytes = nbytes

        async def body() -> Any:
            ctx = contextvars.copy_context()
            return await anyio.to_thread.run_sync(ctx.run, functools.partial(fn, *args, **kwargs))

        with telemetry.span(f"io {task.name}", {"gen_ai.operation.name": "io", "agentrt.io.bytes": nbytes, "agentrt.job.id": self.job_id}):
            result = await self.runtime.run_task(self.job, task, deps, body, RetryPolicy())
        self._account(Usage(io_bytes=nbytes))
        self._consumed(task)
        return result

    # ---- sub-agents ----------------------------------------------------------------------
    def spawn(self, agent: Agent, *args: Any, **kwargs: Any) -> Handle:
        """Start `agent(ctx, *args, **kwargs)` now as a sub-agent task; returns its Handle."""
        task, deps = self._task(agent.name, TaskKind.AGENT, Pool.NONE)
        handle = Handle()
        child = JobContext(self.runtime, self.job, task, parent=self)
        policy = self.runtime.registry.graphs[self.job.spec.graph].failure

        async def body() -> Any:
            attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent.name, "agentrt.task.name": task.name,
                     "agentrt.job.id": self.job_id}
            with telemetry.span(f"invoke_agent {agent.name}", attrs) as sp, \
                    telemetry.timed_operation({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent.name}):
                try:
                    return await self._replayed(task, fingerprint("agent", agent.name), lambda: agent.fn(child, *args, **kwargs))
                finally:
                    set_rollup(sp, child.usage)

        async def runner() -> None:
            try:
                handle._set(await self.runtime.run_task(self.job, task, deps, body, RetryPolicy()))
                self._consumed(task)
            except Exception as exc:
                handle._set(error=exc)
                if policy is FailurePolicy.CANCEL_SIBLINGS:
                    raise

        self.job.task_group.start_soon(runner)
        return handle

    async def gather(self, *aws: Awaitable[Any]) -> list[Any]:
        """Await all concurrently; results in order. The first error cancels the rest and
        propagates (wrap calls in try/except, or use FailurePolicy.CONTINUE handles, to tolerate).

        Built on asyncio tasks rather than an anyio task group: it is on the per-task hot path
        (5x cheaper per awaitable), and the job's cancel scope still reaches the children through
        the awaiting task."""
        if not aws:
            return []
        # The calls gathered here depend on what was consumed before the gather, not on siblings
        # that happen to finish first (which would also make each new task's deps grow with width).
        outer = self._frozen
        if outer is None:
            self._frozen = list(self._frontier)
        tasks = [asyncio.ensure_future(aw) for aw in aws]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            await _cancel_all(tasks)
            raise
        finally:
            self._frozen = outer
        if pending:
            await _cancel_all(list(pending))
            failed = next(t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None)
            raise failed.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]

    # ---- LLM calls -----------------------------------------------------------------------
    async def generate(
        self, messages: list[dict[str, Any]] | str | None = None, *, max_tokens: int = 256, temperature: float = 0.0,
        stop: list[str] | None = None, schema: Any = None, tools: list[Tool] | None = None, name: str = "generate",
        session: Session | None = None, ignore_eos: bool = False,
    ) -> Generation:
        """An LLM call (GPU task) continuing `session` (default: this context's session).

        `messages` (OpenAI format, or a user string) are appended first. With `schema` (a msgspec
        Struct type or a JSON schema) the output is constrained to that JSON; with `tools`, any tool
        call the model starts is completed under a grammar of the tools' schemas, so it always parses.
        """
        engine = self.runtime.engine
        if engine is None:
            raise AgentrtError("this runtime has no engine: LLM calls are unavailable")
        sess = self._fork_if_busy(session or self.session)
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        sess.inflight += 1
        sess.fork_point = (len(sess.token_ids), len(sess.messages), len(sess.text))
        try:
            return await run_llm_turn(self, sess, messages, max_tokens, temperature, stop, schema, tools, name, ignore_eos)
        finally:
            sess.inflight -= 1

    def _fork_if_busy(self, sess: Session) -> Session:
        """Concurrent generate calls on one session fork it: a call made while another runs on the
        session continues a copy of the conversation as it was before that call (docs: README)."""
        if not sess.inflight:
            return sess
        fork = sess.fork(self.runtime.new_id(f"{sess.id}/fork-"))
        self.job.sessions.append(fork)
        return fork


async def _cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
