"""Reusable agents: the tool-calling loop every graph in graphs/ builds on."""

from __future__ import annotations

import json
from typing import Any

from agentrt.api import Tool, agent
from agentrt.errors import SchemaError, ToolError, UnknownToolError


def _tool_message(content: Any) -> dict[str, Any]:
    text = content if isinstance(content, str) else json.dumps(content)
    return {"role": "tool", "content": text}


@agent
async def tool_loop(
    ctx: Any, messages: list[dict[str, Any]], tools: list[Tool], max_steps: int = 6, max_tokens: int = 128,
    context_budget: int = 3500,
) -> dict[str, Any]:
    """Generate; run the tool calls the model makes; feed results back; repeat until it answers.

    Bad tool calls (malformed, unknown tool, invalid arguments, a tool error) are reported back to
    the model as tool messages rather than failing the job. Stops when the conversation would
    outgrow `context_budget` tokens. Returns {"answer", "steps", "tool_calls", "stopped"}.
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
        # The turn's calls run concurrently; results are appended in the model's order.
        for call, result in zip(gen.tool_calls, await ctx.call_all(gen.tool_calls), strict=True):
            if isinstance(result, ToolError | SchemaError | UnknownToolError):
                result = f"Error: {result}"
            calls.append({"name": call.name, "arguments": call.arguments, "result": str(result)[:200]})
            pending.append(_tool_message(result))
    return {"answer": None, "steps": max_steps, "tool_calls": calls, "stopped": "max_steps"}
