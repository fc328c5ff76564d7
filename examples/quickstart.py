"""Define a tool, an agent and a graph, and run a job on the embedded model.

    python examples/quickstart.py
"""

from __future__ import annotations

from typing import Any

import anyio

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, agent, graph, tool


@tool
def lookup_fare(origin: str, destination: str) -> dict[str, Any]:
    """Look up the cheapest fare between two airports."""
    return {"origin": origin, "destination": destination, "usd": 129}


@agent
async def fare_agent(ctx: Any, route: str) -> str:
    origin, destination = route.split("-")
    fare = await ctx.call(lookup_fare, origin=origin, destination=destination)
    gen = await ctx.generate(f"Tell the customer the fare {origin} to {destination} is ${fare['usd']}.", max_tokens=40)
    return gen.text


@graph
async def fares(ctx: Any, routes: list[str]) -> list[str]:
    """Quote several routes in parallel (one sub-agent each)."""
    return await ctx.gather(*[ctx.spawn(fare_agent, r) for r in routes])


async def main() -> None:
    registry = Registry()
    for obj in (lookup_fare, fare_agent, fares):
        registry.register(obj)
    runtime = Runtime(registry, EmbeddedEngine())
    result = await runtime.run_job(JobSpec(graph="fares", inputs={"routes": ["JFK-SEA", "SFO-BOS"]}))
    print(result.status, result.output)
    print(f"tokens: {result.usage.generated_tokens} generated, cost ${result.usage.cost_usd:.6f}")
    print(runtime.jobs[result.job_id].dag.to_dot())


if __name__ == "__main__":
    anyio.run(main)
