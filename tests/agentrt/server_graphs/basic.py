"""Tool-only graphs the server tests run (no model needed)."""

from __future__ import annotations

from typing import Any

import anyio

from agentrt import graph, tool


@tool
async def nap(seconds: float) -> float:
    await anyio.sleep(seconds)
    return seconds


@graph
async def echo(ctx: Any, text: str = "hi") -> str:
    return text


@graph
async def sleepy(ctx: Any, seconds: float = 0.5, tag: str = "") -> str:
    await ctx.call(nap, seconds=seconds)
    return f"slept {seconds} {tag}"


@graph
async def fail(ctx: Any) -> str:
    raise RuntimeError("this graph always fails")


@graph
async def unencodable(ctx: Any, kind: str = "object") -> Any:
    """An output msgpack cannot carry: the server must fail the job, not crash."""
    return object() if kind == "object" else 2**64
