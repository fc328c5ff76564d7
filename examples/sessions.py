"""Sessions: each context keeps a conversation (`ctx.session`) whose KV cache is reused turn after
turn; `ctx.new_session()` starts another; `session=` picks which one a call continues.

    python examples/sessions.py
"""

from __future__ import annotations

from typing import Any

import anyio

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, graph


@graph
async def two_conversations(ctx: Any) -> dict[str, Any]:
    """Two turns on the default session, one on a separate one."""
    first = await ctx.generate([{"role": "system", "content": "You are an airline agent."},
                                {"role": "user", "content": "Hi, my user id is mia_li_3668."}], max_tokens=24)
    second = await ctx.generate("Which user id did I give you?", max_tokens=24)  # continues the same conversation
    side = ctx.new_session()
    other = await ctx.generate("Which user id did I give you?", session=side, max_tokens=24)  # knows nothing
    return {"turns": [first.text, second.text], "separate": other.text,
            "cached_tokens_of_second_turn": second.usage.cached_tokens, "messages": len(ctx.session.messages)}


async def main(engine: Any = None) -> Any:
    registry = Registry()
    registry.register(two_conversations)
    runtime = Runtime(registry, engine or EmbeddedEngine())
    result = await runtime.run_job(JobSpec(graph="two_conversations"))
    print(result.status, result.output)
    return result


if __name__ == "__main__":
    anyio.run(main)
