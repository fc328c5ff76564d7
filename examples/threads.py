"""Threads: jobs with the same `thread_id` continue one conversation (the session's messages are
kept by the runtime's store, the server's journal over restarts; its KV is reused while cached).

    python examples/threads.py
"""

from __future__ import annotations

from typing import Any

import anyio

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, graph


@graph
async def chat(ctx: Any, text: str) -> dict[str, Any]:
    """One user turn of a conversation."""
    gen = await ctx.generate(text, max_tokens=32)
    return {"reply": gen.text, "turns_so_far": len(ctx.session.messages) // 2, "cached_tokens": gen.usage.cached_tokens}


async def main(engine: Any = None) -> Any:
    registry = Registry()
    registry.register(chat)
    runtime = Runtime(registry, engine or EmbeddedEngine())
    result = None
    for text in ("Hi, I am Ada and I fly to Seattle on Friday.", "Where do I fly, and when?"):
        result = await runtime.run_job(JobSpec(graph="chat", inputs={"text": text}, thread_id="ada"))
        print(result.status, result.output)
    # Over a server: Client.submit("chat", {...}, thread_id="ada") or `agentrt submit chat --thread ada`.
    return result


if __name__ == "__main__":
    anyio.run(main)
