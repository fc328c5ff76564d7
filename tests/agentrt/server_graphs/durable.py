"""Graphs with side effects, for the durable-execution and interrupt tests (no model needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from agentrt import graph, tool


@tool
def append_line(path: str, text: str) -> str:
    """A side effect: append one line to a file."""
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


@tool
async def wait_for_file(path: str, seconds: float = 60.0) -> bool:
    """Wait until `path` exists (a gate the test opens); PATH.waiting says it is waiting."""
    Path(path + ".waiting").touch()
    with anyio.move_on_after(seconds):
        while not Path(path).exists():
            await anyio.sleep(0.02)
    return Path(path).exists()


@graph
async def side_effects(ctx: Any, log: str, gate: str) -> list[Any]:
    """Two side effects, a wait, a third: a crash during the wait must not repeat the first two."""
    a = await ctx.call(append_line, path=log, text="one")
    b = await ctx.call(append_line, path=log, text="two")
    opened = await ctx.call(wait_for_file, path=gate)
    c = await ctx.call(append_line, path=log, text="three")
    return [a, b, opened, c]


@graph
async def approval(ctx: Any, log: str) -> dict[str, Any]:
    """One side effect, then ask a human; a second side effect only if approved."""
    await ctx.call(append_line, path=log, text="prepared")
    answer = await ctx.interrupt({"question": "go ahead?"})
    if answer.get("approved"):
        await ctx.call(append_line, path=log, text="done")
    return {"answer": answer}
