"""A model turn's tool calls, as the runtime serves them (functions over a JobContext).

The calls run concurrently and come back in the model's order; while they run, the conversation's
KV is pinned for the tools' learned latency (Continuum) and its next turn is announced to the engine
as `levels_left` steps away (KVFlow's steps-to-execution, which also triggers host prefetch at 1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agentrt.errors import SchemaError, ToolError, UnknownToolError
from agentrt.types import ToolCall

if TYPE_CHECKING:
    from agentrt.sessions import Session

# The functions take the calling agentrt.context.JobContext; typed Any so that this module, which
# context.py imports, does not import it back (tests/test_import_rules.py forbids the cycle).
JobContext = Any


async def run_tool_turn(ctx: JobContext, calls: Sequence[ToolCall | tuple[str, dict[str, Any]]]) -> list[Any]:
    """Run one model turn's tool calls. They are independent (none sees another's result), so
    they run concurrently unless the runtime's serving policy says otherwise. Results come back
    in the model's order, so the conversation keeps it; a call that fails with ToolError,
    SchemaError or UnknownToolError yields that exception in its place (other errors raise)."""
    pairs = [(c.name, c.arguments) if isinstance(c, ToolCall) else c for c in calls]

    async def one(name: str, args: dict[str, Any], levels_left: int) -> Any:
        announce_next_turn(ctx, levels_left)
        try:
            return await ctx.resolve(await ctx.call(name, **args))  # the conversation needs the value
        except (ToolError, SchemaError, UnknownToolError) as exc:
            return exc

    if ctx.runtime.serving.parallel_tools:
        return await ctx.gather(*[one(n, a, 1) for n, a in pairs])
    return [await one(n, a, len(pairs) - i) for i, (n, a) in enumerate(pairs)]


def pin_for_tool(ctx: JobContext, tool: str) -> None:
    """Continuum: keep this context's conversation KV pinned while `tool` runs, for the tool's
    learned p90 latency (concurrent calls: until the slowest is expected back)."""
    sess, rt = ctx._last_session, ctx.runtime
    if sess is None or rt.engine is None or not rt.serving.tool_pins:
        return
    ttl = rt.tool_latency.ttl(tool)
    deadline = time.monotonic() + ttl
    if deadline > sess.pin_deadline:
        sess.pin_deadline = deadline
        pin_session(ctx, sess, ttl)


def pin_session(ctx: JobContext, sess: Session, ttl: float | None) -> None:
    """Pin `sess`'s KV in the engine for `ttl` seconds; the job unpins it when it ends."""
    assert ctx.runtime.engine is not None
    if not any(s is sess for s in ctx.job.sessions):
        ctx.job.sessions.append(sess)  # unpinned when the job ends
    ctx.runtime.engine.pin(sess.id, sess.token_ids, ttl)
    sess.pinned = True


def announce_next_turn(ctx: JobContext, levels_left: int) -> None:
    """KVFlow: the conversation's next LLM call runs after `levels_left` more levels of this
    turn's tool graph (1: the calls running now are the last). The engine evicts it last and,
    at 1 step, prefetches it from the host tier while the tools run."""
    sess, rt = ctx._last_session, ctx.runtime
    if sess is None or rt.engine is None or not rt.serving.graph_hints:
        return
    key = ctx._next_hint = f"{sess.id}/next"
    ctx.job.hints.add(key)
    rt.engine.hint(key, sess.token_ids, levels_left)
