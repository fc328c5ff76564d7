"""Tool timeouts through agentrt.deadlines: one loop timer for many calls, only their own
cancellation turned into a timeout, no growth with finished calls."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from agentrt import tool
from agentrt.deadlines import Deadlines
from agentrt.errors import ToolError
from agentrt.pools import LocalToolExecutor


@tool
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@tool
async def raises_timeout() -> None:
    raise TimeoutError("the tool's own")


async def test_a_call_past_its_deadline_fails_as_a_timeout_while_a_shorter_call_completes() -> None:
    ex = LocalToolExecutor(default_timeout=0.1)
    results = await asyncio.gather(ex.run(nap, {"seconds": 5.0}), ex.run(nap, {"seconds": 0.01}), return_exceptions=True)
    assert isinstance(results[0], ToolError) and "timed out after 0.1s" in str(results[0])
    assert results[1][0] == 0.01
    assert not ex.deadlines._live


async def test_an_outer_cancel_is_not_reported_as_a_timeout() -> None:
    ex = LocalToolExecutor(default_timeout=10.0)
    with anyio.move_on_after(0.05) as scope:
        await ex.run(nap, {"seconds": 5.0})
    assert scope.cancelled_caught
    assert not ex.deadlines._live and not ex.deadlines._expired


async def test_a_tools_own_timeout_error_is_not_the_executors_timeout() -> None:
    ex = LocalToolExecutor(default_timeout=10.0)
    with pytest.raises(TimeoutError, match="the tool's own"):
        await ex.run(raises_timeout, {})


async def test_finished_calls_do_not_accumulate() -> None:
    ex = LocalToolExecutor(default_timeout=300.0)
    for _ in range(2000):
        await ex.run(nap, {"seconds": 0.0})
    assert len(ex.deadlines._heap) <= 65 and not ex.deadlines._live


async def test_deadlines_fire_in_order_and_the_timer_follows_the_earliest() -> None:
    d = Deadlines()
    order: list[str] = []

    async def call(name: str, seconds: float) -> None:
        cid = d.start(seconds)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert d.expired(cid)
            order.append(name)
        finally:
            d.finish(cid)

    await asyncio.gather(call("late", 0.2), call("early", 0.05), call("mid", 0.1))
    assert order == ["early", "mid", "late"]
