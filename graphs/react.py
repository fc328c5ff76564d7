"""ReAct: one tool-using loop over the airline tools for a single question."""

from __future__ import annotations

from typing import Any

from agentrt import graph
from agentrt.agents import tool_loop
from tools.airline import TOOLS, use_database
from tools.airline_db import airline_db


@graph
async def react(ctx: Any, question: str, database: str = "auto", max_steps: int = 4, max_tokens: int = 96) -> dict[str, Any]:
    """Answer `question`, calling tools until the model replies without a tool call."""
    with use_database(airline_db(database).copy()):
        messages = [{"role": "system", "content": "# Airline Agent Policy\nAnswer using the tools."}, {"role": "user", "content": question}]
        return await tool_loop.fn(ctx, messages, TOOLS, max_steps=max_steps, max_tokens=max_tokens)
