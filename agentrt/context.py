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
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from agentrt import telemetry
from agentrt.api import Agent, Tool
from agentrt.backends.select import chat_format_of
from agentrt.durable import INTERRUPT, MISSING, fingerprint
from agentrt.engine_client import LLMRequest
from agentrt.errors import AgentrtError, JobInterrupted, SchemaError, ToolError
from agentrt.jobs import JobRun, TaskRunner, set_rollup
from agentrt.schemas import call_grammar, json_schema_of, tool_call_schema
from agentrt.sessions import Session
from agentrt.tool_turns import pin_for_tool, pin_session, run_tool_turn
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

# Families whose tool calls the runtime constrains: (the token opening a call, the text between it and
# the {"name", "arguments"} JSON, the text closing the call). The others (gpt-oss, DeepSeek-V3) are
# constrained in one pass by their chat format's structural tag (call_grammar).
CALL_MARKERS = {"agentrt": ("<tool_call>", "", "</tool_call>"), "hermes": ("<tool_call>", "\n", "\n</tool_call>")}


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
            return await self._generate_on(sess, messages, max_tokens, temperature, stop, schema, tools, name, ignore_eos)
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

    async def _generate_on(self, sess: Session, messages: list[dict[str, Any]] | None, max_tokens: int, temperature: float,
                           stop: list[str] | None, schema: Any, tools: list[Tool] | None, name: str, ignore_eos: bool) -> Generation:
        engine = self.runtime.engine
        assert engine is not None
        fmt = chat_format_of(engine)
        sess.extend(list(messages or []), [t.schema() for t in tools] if tools else None, engine.encode, fmt)
        opener = sess.generation_prompt(fmt)
        prompt, prompt_text = sess.token_ids + engine.encode(opener), sess.text + opener
        task, deps = self._task(name, TaskKind.LLM, Pool.GPU, est_tokens=len(prompt) + max_tokens)
        provider = getattr(engine, "provider_name", telemetry.PROVIDER_NAME)
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": engine.model_name,
                 "gen_ai.conversation.id": sess.id, "gen_ai.request.max_tokens": max_tokens, "gen_ai.request.temperature": temperature,
                 "agentrt.task.name": name, "agentrt.task.id": task.id, "agentrt.job.id": self.job_id}
        history = list(sess.messages) if telemetry.capture_content() else None
        self._last_session = sess
        if self._next_hint is not None:
            engine.unhint(self._next_hint)
            self.job.hints.discard(self._next_hint)
            self._next_hint = None
        hinted = self.runtime.serving.graph_hints
        if hinted:
            # Steps-to-execution (KVFlow): while this call waits behind others for the GPU pool, its
            # prefix is the last to be evicted and, with a host tier, is prefetched when it is next.
            engine.hint(task.id, prompt, self.runtime.scheduler.num_queued_in(Pool.GPU))
            self.runtime.prefix_hints[task.id] = prompt
        try:
            labels = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": engine.model_name}
            with telemetry.span(f"chat {engine.model_name}", attrs) as sp, telemetry.timed_operation(labels):
                gen = await self.runtime.run_task(
                    self.job, task, deps, lambda: self._replayed(
                        task, fingerprint("llm", name, prompt),
                        lambda: self._generate(prompt, prompt_text, max_tokens, temperature, stop, schema, tools, task, sess, ignore_eos),
                        Generation, lambda g: self._commit(sess, prompt, prompt_text, list(g.token_ids), task.id, fmt)),
                    RetryPolicy())
                _llm_span_attributes(sp, gen, task)
                telemetry.chat_attributes(sp, gen, engine.model_name, provider, history)
        finally:
            if hinted:
                self.runtime.prefix_hints.pop(task.id, None)
                engine.unhint(task.id)
        self._consumed(task)
        return gen

    async def _generate(self, prompt: list[int], prompt_text: str, max_tokens: int, temperature: float, stop: list[str] | None,
                        schema: Any, tools: list[Tool] | None, task: Task, sess: Session, ignore_eos: bool) -> Generation:
        engine = self.runtime.engine
        assert engine is not None
        fmt = chat_format_of(engine)
        end_ids = [engine.special_id(t) for t in fmt.end_tokens]
        marker = CALL_MARKERS.get(fmt.family) if tools else None
        open_id = engine.special_id(marker[0]) if marker else None
        stops = [] if ignore_eos else end_ids + ([open_id] if open_id is not None else [])
        json_schema = json_schema_of(schema)
        # Families whose calls are not split at an opening token (gpt-oss, DeepSeek-V3) are constrained
        # in one pass by their structural tag.
        tag = call_grammar(fmt, tools) if tools and marker is None and json_schema is None and not ignore_eos else None
        start = time.perf_counter()
        # Program-level LAS reaches the engine: the request is as urgent as its job's attained service.
        # Without it the engine sees anonymous requests, served first come first served per request.
        prio = self.runtime.scheduler.engine_priority(self.job_id) if self.runtime.serving.engine_priority else 0
        program = self.job_id if self.runtime.serving.engine_priority else None
        stream = self._token_stream(task)
        out = await engine.generate(LLMRequest(prompt_ids=prompt, max_tokens=max_tokens, temperature=temperature,
                                               stop_token_ids=stops, json_schema=json_schema, structural_tag=tag,
                                               ignore_eos=ignore_eos,
                                               priority=prio, program_id=program), **stream)
        usage, ids, reason = out.usage, list(out.token_ids), out.finish_reason
        if json_schema is not None and reason == "length":
            raise SchemaError(f"structured output was cut off at max_tokens={max_tokens} before the JSON closed; raise max_tokens or bound the schema")
        if marker and tools and ids and ids[-1] == open_id:
            ids += await self._tool_call(prompt + ids, marker, end_ids, max_tokens, temperature, tools, usage, prio, program, stream)
            reason = "tool_calls"
        elif not ids or ids[-1] not in end_ids:
            ids.append(end_ids[0])  # close a turn cut by max_tokens, so the next turn renders after it
        raw, parsed, calls = self._commit(sess, prompt, prompt_text, ids, task.id, fmt)
        if self.runtime.serving.tool_pins:
            sess.pin_deadline = 0.0  # provisional: a tool call re-pins it for that tool's latency
            pin_session(self, sess, sess.ttl)
        usage.cost_usd = self.runtime.cost.llm_call(usage.device_seconds)
        task.usage = usage
        self._account(usage)
        known = set(self.runtime.registry.tools)
        errors = parsed.errors + [f"unknown tool {c.name!r}; known tools: {sorted(known)}" for c in calls if c.name not in known]
        self.job.emit("llm_output", task, text=raw, seconds=time.perf_counter() - start, ttft=out.ttft,
                      prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens)
        return Generation(text=_trim(parsed.content, stop), token_ids=ids, tool_calls=[c for c in calls if c.name in known],
                          finish_reason=reason, usage=usage, tool_call_errors=errors)

    async def _tool_call(self, prompt: list[int], marker: tuple[str, str, str], end_ids: list[int], max_tokens: int,
                         temperature: float, tools: list[Tool], usage: Usage, priority: int = 0,
                         program: str | None = None, stream: dict[str, Any] | None = None) -> list[int]:
        """The rest of a tool call the model opened: `{"name", "arguments"}` under the tools' grammar,
        then the family's closing text and the end-of-turn token."""
        engine = self.runtime.engine
        assert engine is not None
        head = engine.encode(marker[1]) if marker[1] else []
        call = await engine.generate(LLMRequest(prompt_ids=prompt + head, max_tokens=max(64, max_tokens), temperature=temperature,
                                                stop_token_ids=end_ids, json_schema=tool_call_schema(tools),
                                                priority=priority, program_id=program), **(stream or {}))
        # One logical call: `prompt` (the turn's prompt and the tokens generated up to the opening marker)
        # was already counted, as prompt and generated tokens, by the first request; only the marker's
        # text is new prompt. The engine work of re-reading it (cache hits, a recomputed last token) stays.
        usage.add(call.usage)
        usage.prompt_tokens -= len(prompt)
        usage.cached_tokens -= min(call.usage.cached_tokens, len(prompt))
        return head + [i for i in call.token_ids if i not in end_ids] + engine.encode(marker[2]) + [end_ids[0]]


    def _commit(self, sess: Session, prompt: list[int], prompt_text: str, ids: list[int], task_id: str,
                fmt: Any) -> tuple[str, Any, list[ToolCall]]:
        """Record the generated turn in `sess` (also when a replay returns a recorded Generation):
        (raw text, parsed output, tool calls)."""
        engine = self.runtime.engine
        assert engine is not None
        raw = engine.decode(ids)
        parsed = fmt.parse(raw)
        calls = [ToolCall(f"{task_id}-{i}", c.name, c.arguments) for i, c in enumerate(parsed.tool_calls)]
        plain = {"role": "assistant", "content": raw.removesuffix(engine.decode(ids[-1:]))}
        sess.commit_turn(prompt, ids, prompt_text, raw, _assistant_message(parsed, calls), fmt, plain)
        return raw, parsed, calls

    def _token_stream(self, task: Task) -> dict[str, Any]:
        """generate()'s `on_tokens` when someone listens to the job's events and the engine streams:
        one `llm_token` event per engine step with that step's new text."""
        if self.job.on_event is None or not getattr(self.runtime.engine, "streams_tokens", False):
            return {}
        return {"on_tokens": lambda ids, text: self.job.emit("llm_token", task, text=text, tokens=len(ids))}


def _assistant_message(parsed: Any, calls: list[ToolCall]) -> dict[str, Any]:
    """The assistant turn as later renderings of the conversation see it."""
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
    if calls:
        message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in calls]
    if parsed.reasoning is not None:
        message["reasoning_content"] = parsed.reasoning
    return message


async def _cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _trim(text: str, stop: list[str] | None) -> str:
    for s in stop or ():
        if s in text:
            text = text[: text.index(s)]
    return text


def _llm_span_attributes(sp: Any, gen: Generation, task: Task) -> None:
    u = gen.usage
    sp.set_attribute("agentrt.prefill_tokens_computed", u.prefill_tokens_computed)
    sp.set_attribute("agentrt.device_seconds", u.device_seconds)
    sp.set_attribute("agentrt.kv.device.byte_seconds", u.kv_byte_seconds)
    sp.set_attribute("agentrt.kv.host.restored_bytes", u.kv_restored_bytes_host)
    sp.set_attribute("agentrt.kv.disk.restored_bytes", u.kv_restored_bytes_disk)
    sp.set_attribute("agentrt.spec.proposed_tokens", u.spec_proposed_tokens)
    sp.set_attribute("agentrt.spec.accepted_tokens", u.spec_accepted_tokens)
    sp.set_attribute("agentrt.cost.usd", u.cost_usd)
