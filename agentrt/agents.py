"""Reusable agents: the tool-calling loop every graph in graphs/ builds on."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from agentrt.api import Tool, agent
from agentrt.errors import SchemaError, ToolError, UnknownToolError


def _tool_message(content: Any) -> dict[str, Any]:
    text = content if isinstance(content, str) else json.dumps(content)
    return {"role": "tool", "content": text}


def _approved(answer: Any) -> bool:
    return answer is True or (isinstance(answer, dict) and answer.get("approved") is True)


@agent
async def tool_loop(
    ctx: Any, messages: list[dict[str, Any]], tools: list[Tool], max_steps: int = 6, max_tokens: int = 128,
    context_budget: int = 3500, confirm: Collection[str] = (),
) -> dict[str, Any]:
    """Generate; run the tool calls the model makes; feed results back; repeat until it answers.

    Bad tool calls (malformed, unknown tool, invalid arguments, a tool error) are reported back to
    the model as tool messages rather than failing the job. Stops when the conversation would
    outgrow `context_budget` tokens. Returns {"answer", "steps", "tool_calls", "stopped"}.

    A call of a tool named in `confirm` first asks a human through `ctx.interrupt({"confirm": name,
    "arguments": ...})`; it runs only when resumed with `true` or `{"approved": true}`, otherwise the
    model is told the user declined.
    """
    calls: list[dict[str, Any]] = []
    pending = list(messages)
    for step in range(1, max_steps + 1):
        if len(ctx.session.token_ids) + max_tokens > context_budget:
            return {"answer": None, "steps": step - 1, "tool_calls": calls, "stopped": "context"}
        gen = await ctx.generate(pending, tools=tools, max_tokens=max_tokens, name="llm")
        pending = [_tool_message(f"Error: {e}") for e in gen.tool_call_errors]
        if not gen.tool_calls and not pending:
            return {"answer": gen.text, "steps": step, "tool_calls": calls, "stopped": "answer"}
        # Tools named in `confirm` ask a human first, in the model's order; the turn's approved calls
        # then run concurrently and their results are appended in the model's order.
        declined: dict[int, str] = {}
        for i, call in enumerate(gen.tool_calls):
            if call.name in confirm and not _approved(await ctx.interrupt({"confirm": call.name, "arguments": call.arguments})):
                declined[i] = f"The user did not confirm {call.name}; it was not done."
        results = iter(await ctx.call_all([c for i, c in enumerate(gen.tool_calls) if i not in declined]))
        for i, call in enumerate(gen.tool_calls):
            result = declined[i] if i in declined else next(results)
            if isinstance(result, ToolError | SchemaError | UnknownToolError):
                result = f"Error: {result}"
            calls.append({"name": call.name, "arguments": call.arguments, "result": str(result)[:200]})
            pending.append(_tool_message(result))
    return {"answer": None, "steps": max_steps, "tool_calls": calls, "stopped": "max_steps"}
