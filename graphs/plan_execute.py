"""Plan and execute: a planner splits the request into steps (schema-constrained JSON), N worker
sub-agents run concurrently (each its own session and tool calls), and a reducer combines them."""

from __future__ import annotations

from typing import Any

import msgspec

from agentrt import agent, graph
from agentrt.agents import tool_loop
from tools.airline import TOOLS, use_database
from tools.airline_db import airline_db

SYSTEM = {"role": "system", "content": "# Airline Agent Policy\nYou help airline customers."}


def plan_schema(num_steps: int) -> dict[str, Any]:
    step = {"type": "string", "maxLength": 80}
    return {"type": "object", "properties": {"steps": {"type": "array", "items": step, "minItems": 1, "maxItems": num_steps}},
            "required": ["steps"], "additionalProperties": False}


@agent
async def worker(ctx: Any, step: str, max_tokens: int) -> dict[str, Any]:
    """Carry out one step of the plan with the airline tools."""
    return await tool_loop.fn(ctx, [SYSTEM, {"role": "user", "content": step}], TOOLS, max_steps=3, max_tokens=max_tokens)


@graph
async def plan_execute(ctx: Any, request: str, num_workers: int = 3, database: str = "auto", max_tokens: int = 64) -> dict[str, Any]:
    """Plan `request` into up to `num_workers` steps, run them in parallel, then summarise."""
    with use_database(airline_db(database).copy()):
        plan_gen = await ctx.generate([SYSTEM, {"role": "user", "content": f"Plan the steps for: {request}"}],
                                      schema=plan_schema(num_workers), max_tokens=256, name="planner")
        try:
            steps = msgspec.json.decode(plan_gen.text)["steps"][:num_workers] or [request]
        except (msgspec.DecodeError, KeyError, TypeError):
            steps = [request]  # the plan was cut off by max_tokens: fall back to one step
        handles = [ctx.spawn(worker, s, max_tokens) for s in steps]
        results = await ctx.gather(*handles)
        notes = "\n".join(f"- {s}: {r['answer'] or 'no answer'}" for s, r in zip(steps, results, strict=True))
        summary = await ctx.generate([{"role": "user", "content": f"Summarise for the customer:\n{notes}"}],
                                     max_tokens=max_tokens, name="reducer", session=ctx.new_session())
    return {"plan": steps, "workers": results, "answer": summary.text}
