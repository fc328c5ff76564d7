"""Streaming: `Runtime.stream_job` yields a job's events as they happen: `llm_token` (each engine
step's new text), `task_started`/`task_finished` (with `parent_task_id`, to build the tree), then the
result. Over a server: `Client.submit(..., on_event=...)`, or `agentrt submit GRAPH --follow`.

    python examples/streaming.py
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, agent, graph


@agent
async def writer(ctx: Any, topic: str) -> str:
    return (await ctx.generate(f"Write two sentences about {topic}.", max_tokens=48)).text


@graph
async def stories(ctx: Any, topics: list[str]) -> list[str]:
    """One writer sub-agent per topic, in parallel."""
    return await ctx.gather(*[ctx.spawn(writer, t) for t in topics])


async def main(engine: Any = None) -> Any:
    registry = Registry()
    for obj in (writer, stories):
        registry.register(obj)
    runtime = Runtime(registry, engine or EmbeddedEngine())
    async for event in runtime.stream_job(JobSpec(graph="stories", inputs={"topics": ["baggage", "lounges"]})):
        if event["kind"] == "llm_token":
            sys.stdout.write(f"[{event['parent_task_id']}] {event['text']!r}\n")  # which writer it came from
        elif event["kind"] == "task_started":
            print(f"started {event['task_kind']} {event['name']} (parent {event['parent_task_id']})")
        elif event["kind"] == "job_result":
            print(event["result"].status, event["result"].output)
            return event["result"]
    return None


if __name__ == "__main__":
    anyio.run(main)
