"""A model turn as the runtime serves it (functions over a JobContext): render the session's
prompt, run the LLM task (journalled, traced, hinted to the engine), complete a tool call the model
opened under the tools' grammar, and commit the turn to the session.

Program-level LAS reaches the engine here: each request carries its job's attained-service priority
and program id (agentrt.scheduler.engine_priority).
"""

from __future__ import annotations

import time
from typing import Any

from agentrt import telemetry
from agentrt.api import Tool
from agentrt.backends.select import chat_format_of
from agentrt.durable import fingerprint
from agentrt.engine_client import LLMRequest
from agentrt.errors import SchemaError
from agentrt.schemas import call_grammar, json_schema_of, tool_call_schema
from agentrt.sessions import Session
from agentrt.tool_turns import pin_session
from agentrt.types import Generation, Pool, RetryPolicy, Task, TaskKind, ToolCall, Usage

# The functions take the calling agentrt.context.JobContext; typed Any so that this module, which
# context.py imports, does not import it back (tests/test_import_rules.py forbids the cycle).
JobContext = Any

# Families whose tool calls the runtime constrains: (the token opening a call, the text between it and
# the {"name", "arguments"} JSON, the text closing the call). The others (gpt-oss, DeepSeek-V3) are
# constrained in one pass by their chat format's structural tag (call_grammar).
CALL_MARKERS = {"agentrt": ("<tool_call>", "", "</tool_call>"), "hermes": ("<tool_call>", "\n", "\n</tool_call>")}


async def run_llm_turn(ctx: JobContext, sess: Session, messages: list[dict[str, Any]] | None, max_tokens: int, temperature: float,
                       stop: list[str] | None, schema: Any, tools: list[Tool] | None, name: str, ignore_eos: bool) -> Generation:
    engine = ctx.runtime.engine
    assert engine is not None
    fmt = chat_format_of(engine)
    sess.extend(list(messages or []), [t.schema() for t in tools] if tools else None, engine.encode, fmt)
    opener = sess.generation_prompt(fmt)
    prompt, prompt_text = sess.token_ids + engine.encode(opener), sess.text + opener
    task, deps = ctx._task(name, TaskKind.LLM, Pool.GPU, est_tokens=len(prompt) + max_tokens)
    provider = getattr(engine, "provider_name", telemetry.PROVIDER_NAME)
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": engine.model_name,
             "gen_ai.conversation.id": sess.id, "gen_ai.request.max_tokens": max_tokens, "gen_ai.request.temperature": temperature,
             "agentrt.task.name": name, "agentrt.task.id": task.id, "agentrt.job.id": ctx.job_id}
    history = list(sess.messages) if telemetry.capture_content() else None
    ctx._last_session = sess
    if ctx._next_hint is not None:
        engine.unhint(ctx._next_hint)
        ctx.job.hints.discard(ctx._next_hint)
        ctx._next_hint = None
    hinted = ctx.runtime.serving.graph_hints
    if hinted:
        # Steps-to-execution (KVFlow): while this call waits behind others for the GPU pool, its
        # prefix is the last to be evicted and, with a host tier, is prefetched when it is next.
        engine.hint(task.id, prompt, ctx.runtime.scheduler.num_queued_in(Pool.GPU))
        ctx.runtime.prefix_hints[task.id] = prompt
    try:
        labels = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": engine.model_name}
        with telemetry.span(f"chat {engine.model_name}", attrs) as sp, telemetry.timed_operation(labels):
            gen = await ctx.runtime.run_task(
                ctx.job, task, deps, lambda: ctx._replayed(
                    task, fingerprint("llm", name, prompt),
                    lambda: _request(ctx, prompt, prompt_text, max_tokens, temperature, stop, schema, tools, task, sess, ignore_eos),
                    Generation, lambda g: commit_turn(ctx, sess, prompt, prompt_text, list(g.token_ids), task.id, fmt)),
                RetryPolicy())
            _llm_span_attributes(sp, gen, task)
            telemetry.chat_attributes(sp, gen, engine.model_name, provider, history)
    finally:
        if hinted:
            ctx.runtime.prefix_hints.pop(task.id, None)
            engine.unhint(task.id)
    ctx._consumed(task)
    return gen


async def _request(ctx: JobContext, prompt: list[int], prompt_text: str, max_tokens: int, temperature: float, stop: list[str] | None,
                   schema: Any, tools: list[Tool] | None, task: Task, sess: Session, ignore_eos: bool) -> Generation:
    engine = ctx.runtime.engine
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
    prio = ctx.runtime.scheduler.engine_priority(ctx.job_id) if ctx.runtime.serving.engine_priority else 0
    program = ctx.job_id if ctx.runtime.serving.engine_priority else None
    stream = token_stream(ctx, task)
    out = await engine.generate(LLMRequest(prompt_ids=prompt, max_tokens=max_tokens, temperature=temperature,
                                           stop_token_ids=stops, json_schema=json_schema, structural_tag=tag,
                                           ignore_eos=ignore_eos,
                                           priority=prio, program_id=program), **stream)
    usage, ids, reason = out.usage, list(out.token_ids), out.finish_reason
    if json_schema is not None and reason == "length":
        raise SchemaError(f"structured output was cut off at max_tokens={max_tokens} before the JSON closed; raise max_tokens or bound the schema")
    if marker and tools and ids and ids[-1] == open_id:
        ids += await _complete_call(ctx, prompt + ids, marker, end_ids, max_tokens, temperature, tools, usage, prio, program, stream)
        reason = "tool_calls"
    elif not ids or ids[-1] not in end_ids:
        ids.append(end_ids[0])  # close a turn cut by max_tokens, so the next turn renders after it
    raw, parsed, calls = commit_turn(ctx, sess, prompt, prompt_text, ids, task.id, fmt)
    if ctx.runtime.serving.tool_pins:
        sess.pin_deadline = 0.0  # provisional: a tool call re-pins it for that tool's latency
        pin_session(ctx, sess, sess.ttl)
    usage.cost_usd = ctx.runtime.cost.llm_call(usage.device_seconds)
    task.usage = usage
    ctx._account(usage)
    known = set(ctx.runtime.registry.tools)
    errors = parsed.errors + [f"unknown tool {c.name!r}; known tools: {sorted(known)}" for c in calls if c.name not in known]
    ctx.job.emit("llm_output", task, text=raw, seconds=time.perf_counter() - start, ttft=out.ttft,
                  prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens)
    return Generation(text=_trim(parsed.content, stop), token_ids=ids, tool_calls=[c for c in calls if c.name in known],
                      finish_reason=reason, usage=usage, tool_call_errors=errors)


async def _complete_call(ctx: JobContext, prompt: list[int], marker: tuple[str, str, str], end_ids: list[int], max_tokens: int,
                         temperature: float, tools: list[Tool], usage: Usage, priority: int = 0,
                         program: str | None = None, stream: dict[str, Any] | None = None) -> list[int]:
    """The rest of a tool call the model opened: `{"name", "arguments"}` under the tools' grammar,
    then the family's closing text and the end-of-turn token."""
    engine = ctx.runtime.engine
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


def commit_turn(ctx: JobContext, sess: Session, prompt: list[int], prompt_text: str, ids: list[int], task_id: str,
                fmt: Any) -> tuple[str, Any, list[ToolCall]]:
    """Record the generated turn in `sess` (also when a replay returns a recorded Generation):
    (raw text, parsed output, tool calls)."""
    engine = ctx.runtime.engine
    assert engine is not None
    raw = engine.decode(ids)
    parsed = fmt.parse(raw)
    calls = [ToolCall(f"{task_id}-{i}", c.name, c.arguments) for i, c in enumerate(parsed.tool_calls)]
    plain = {"role": "assistant", "content": raw.removesuffix(engine.decode(ids[-1:]))}
    sess.commit_turn(prompt, ids, prompt_text, raw, _assistant_message(parsed, calls), fmt, plain)
    return raw, parsed, calls


def token_stream(ctx: JobContext, task: Task) -> dict[str, Any]:
    """generate()'s `on_tokens` when someone listens to the job's events and the engine streams:
    one `llm_token` event per engine step with that step's new text."""
    if ctx.job.on_event is None or not getattr(ctx.runtime.engine, "streams_tokens", False):
        return {}
    return {"on_tokens": lambda ids, text: ctx.job.emit("llm_token", task, text=text, tokens=len(ids))}


def _assistant_message(parsed: Any, calls: list[ToolCall]) -> dict[str, Any]:
    """The assistant turn as later renderings of the conversation see it."""
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
    if calls:
        message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in calls]
    if parsed.reasoning is not None:
        message["reasoning_content"] = parsed.reasoning
    return message


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
