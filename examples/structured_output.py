"""`schema=`: constrain a generation to JSON of a msgspec Struct (or a JSON-schema dict).

    python examples/structured_output.py
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, graph
from agentrt.schemas import parse_json_output


class Booking(msgspec.Struct):
    user_id: str
    reservation_id: str
    passengers: int


@graph
async def extract(ctx: Any, request: str) -> dict[str, Any]:
    """Pull the booking fields out of a free-text request."""
    gen = await ctx.generate(f"Extract the booking from: {request}", schema=Booking, max_tokens=96)
    booking = parse_json_output(gen, Booking)  # a Booking: the grammar guarantees it parses
    return msgspec.to_builtins(booking)


async def main(engine: Any = None) -> Any:
    registry = Registry()
    registry.register(extract)
    runtime = Runtime(registry, engine or EmbeddedEngine())
    result = await runtime.run_job(JobSpec(graph="extract", inputs={"request": "I am mia_li_3668, booking ABC123 for 2 people."}))
    print(result.status, result.output)
    return result


if __name__ == "__main__":
    anyio.run(main)
