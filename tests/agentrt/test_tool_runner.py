"""Tools cannot hang or starve the runtime (issue 18 item 6): timeouts, abandoned sync calls
isolated, a watchdog naming async tools that block the loop, killable cpu_bound tools, and async
tools outside the CPU pool."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentrt import Registry, Runtime, graph, tool
from agentrt.errors import ToolError
from agentrt.pools import LocalToolExecutor
from agentrt.scheduler import PoolLimits

release = threading.Event()


@tool
def hang(tag: str = "") -> str:
    release.wait(30)
    return tag


@tool
def quick(x: int) -> int:
    return x + 1


@tool
async def blocks_the_loop(seconds: float) -> str:
    time.sleep(seconds)  # the bug the watchdog reports
    return "done"


def spin_forever(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    while True:
        pass


spin = tool(spin_forever, cpu_bound=True)


async def test_a_hung_sync_tool_times_out_and_others_still_get_slots() -> None:
    ex = LocalToolExecutor(num_threads=2, default_timeout=0.2, max_abandoned_per_tool=2)
    try:
        for _ in range(2):  # both slots would be held forever without timeouts
            with pytest.raises(ToolError, match="timed out after 0.2s"):
                await ex.run(hang, {"tag": "x"})
        assert ex.threads.abandoned == {"hang": 2} and ex.threads.num_abandoned == 2
        with anyio.fail_after(5):
            assert await ex.run(quick, {"x": 1}) == (2, pytest.approx(0, abs=1))
            with pytest.raises(ToolError, match="2 earlier calls still run after being cancelled"):
                await ex.run(hang, {"tag": "y"})  # isolated: no more threads for the hanging tool
    finally:
        release.set()
    with anyio.fail_after(5):
        while ex.threads.abandoned["hang"]:
            await anyio.sleep(0.01)
    release.clear()


async def test_cancelling_sync_tools_frees_their_slots_and_counts_them() -> None:
    ex = LocalToolExecutor(num_threads=1, default_timeout=None, max_abandoned_per_tool=100)
    try:
        for _ in range(5):
            with anyio.move_on_after(0.05):
                await ex.run(hang, {})
        with anyio.fail_after(5):
            assert (await ex.run(quick, {"x": 41}))[0] == 42
        assert ex.threads.num_abandoned == 5
    finally:
        release.set()
    with anyio.fail_after(5):
        while ex.threads.abandoned["hang"]:
            await anyio.sleep(0.01)
    release.clear()


async def test_the_watchdog_names_an_async_tool_that_blocks_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    ex = LocalToolExecutor(block_threshold=0.2)
    with caplog.at_level(logging.WARNING, logger="agentrt.tool_runner"):
        assert (await ex.run(blocks_the_loop, {"seconds": 0.6}))[0] == "done"
        await anyio.sleep(0.1)
    assert ex.watchdog is not None and ex.watchdog.num_loop_blocks == 1
    assert "event loop blocked" in caplog.text and "'blocks_the_loop'" in caplog.text


async def test_a_cancelled_cpu_bound_tool_process_is_killed(tmp_path: Path) -> None:
    ex = LocalToolExecutor(default_timeout=None)
    marker = tmp_path / "pid"
    with anyio.move_on_after(60) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ex.run, spin, {"path": str(marker)})
            while not marker.exists() or not marker.read_text():
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    pid = int(marker.read_text())
    with anyio.fail_after(5):
        while _alive(pid):
            await anyio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_async_io_tools_are_not_limited_by_the_cpu_pool() -> None:
    running, peak = [0], [0]

    @tool
    async def io_wait(i: int) -> int:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await anyio.sleep(0.1)
        running[0] -= 1
        return i

    @graph
    async def fan_out(ctx: Any) -> int:
        return sum(await ctx.gather(*[ctx.call(io_wait, i=i) for i in range(12)]))

    reg = Registry()
    reg.register(io_wait)
    reg.register(fan_out)
    runtime = Runtime(reg, limits=PoolLimits(cpu=2))
    from agentrt.types import JobSpec

    res = await runtime.run_job(JobSpec(graph="fan_out"))
    assert res.status == "succeeded" and res.output == sum(range(12))
    assert peak[0] == 12  # all at once, though the CPU pool admits 2


async def test_sync_tool_threads_are_reused_across_calls() -> None:
    ex = LocalToolExecutor(num_threads=2, default_timeout=None)
    for i in range(20):
        assert (await ex.run(quick, {"x": i}))[0] == i + 1
    results = await _gather_quick(ex, 10)
    assert [r[0] for r in results] == [i + 1 for i in range(10)]
    assert ex.threads.num_threads_started <= 2  # one thread per CPU slot, not one per call
    ex.close()  # the idle threads end
    with anyio.fail_after(5):
        while ex.threads.num_threads_alive:
            await anyio.sleep(0.01)


async def _gather_quick(ex: LocalToolExecutor, n: int) -> list[Any]:
    return list(await asyncio.gather(*[ex.run(quick, {"x": i}) for i in range(n)]))


async def test_the_watchdog_does_not_blame_a_tool_for_a_stall_outside_it(caplog: pytest.LogCaptureFixture) -> None:
    ex = LocalToolExecutor(block_threshold=0.2)
    waiting = anyio.Event()

    async def slow_io() -> str:  # an async tool that only awaits: never on the loop's stack while it stalls
        await waiting.wait()
        return "done"

    with caplog.at_level(logging.INFO, logger="agentrt.tool_runner"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ex.run, tool(slow_io), {})
            await anyio.sleep(0.05)
            time.sleep(0.6)  # the caller's own code blocks the loop while the tool is running
            await anyio.sleep(0.1)
            waiting.set()
    assert ex.watchdog is not None and ex.watchdog.num_loop_blocks == 0 and ex.watchdog.num_other_blocks == 1
    assert "slow_io" not in caplog.text and "outside any async tool" in caplog.text
