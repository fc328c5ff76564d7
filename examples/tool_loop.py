"""`agentrt.agents.tool_loop`: generate, run the tools the model calls, feed their results back as
tool messages, repeat until the model answers (bad calls are reported back to the model).

    python examples/tool_loop.py
"""

from __future__ import annotations

from typing import Any

import anyio

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, graph, tool
from agentrt.agents import tool_loop


@tool
def flight_status(flight_number: str) -> dict[str, Any]:
    """Get the status of a flight by its number."""
    return {"flight_number": flight_number, "status": "delayed", "minutes": 40}


@graph
async def ask(ctx: Any, question: str) -> dict[str, Any]:
    """Answer a question, calling flight_status when the model wants to."""
    messages = [{"role": "system", "content": "You are an airline agent. Use tools to answer."},
                {"role": "user", "content": question}]
    # tool_loop is an agent: run it inline on this context (its session), or ctx.spawn it as a sub-agent.
    return await tool_loop.fn(ctx, messages, [flight_status], max_steps=3, max_tokens=64)


async def main(engine: Any = None) -> Any:
    registry = Registry()
    for obj in (flight_status, ask):
        registry.register(obj)
    runtime = Runtime(registry, engine or EmbeddedEngine())
    result = await runtime.run_job(JobSpec(graph="ask", inputs={"question": "Is flight HAT001 on time?"}))
    print(result.status, result.output)  # {"answer", "steps", "tool_calls": [{"name", "arguments", "result"}], "stopped"}
    return result


if __name__ == "__main__":
    anyio.run(main)
