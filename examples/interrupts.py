"""Human in the loop: `await ctx.interrupt(payload)` suspends the job (status "interrupted", the
payload in `result.interrupt`); resuming it replays the finished tasks from the record and returns
the input from the interrupt. Over a server: `agentrt resume JOB --input JSON` or `Client.resume`.

    python examples/interrupts.py
"""

from __future__ import annotations

from typing import Any

import anyio

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, graph, tool


@tool
def cancel_reservation(reservation_id: str) -> str:
    """Cancel a reservation (a side effect: runs once, after approval)."""
    return f"{reservation_id} cancelled"


@graph
async def cancel_with_approval(ctx: Any, reservation_id: str) -> dict[str, Any]:
    """Draft a message, ask a human to approve, then act."""
    draft = await ctx.generate(f"Write one sentence telling the customer that {reservation_id} will be cancelled.", max_tokens=32)
    answer = await ctx.interrupt({"approve": f"cancel {reservation_id}?", "draft": draft.text})
    if answer.get("approved"):
        return {"done": await ctx.call(cancel_reservation, reservation_id=reservation_id), "message": draft.text}
    return {"done": None, "message": "Nothing was cancelled."}


async def main(engine: Any = None) -> Any:
    registry = Registry()
    for obj in (cancel_reservation, cancel_with_approval):
        registry.register(obj)
    runtime = Runtime(registry, engine or EmbeddedEngine())
    asked = await runtime.run_job(JobSpec(graph="cancel_with_approval", inputs={"reservation_id": "ABC123"}))
    print(asked.status, asked.interrupt)  # interrupted {'approve': 'cancel ABC123?', 'draft': ...}
    done = await runtime.resume(asked.job_id, {"approved": True})  # the draft is replayed, not generated again
    print(done.status, done.output)
    return done


if __name__ == "__main__":
    anyio.run(main)
