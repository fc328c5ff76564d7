"""Durable execution: finished tasks are journaled and replayed, never run twice; interrupts and resume."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from agentrt import JobSpec, Registry, Runtime, graph, tool
from agentrt.client import Client, RemoteError
from agentrt.durable import MemoryStore
from agentrt.errors import NotInterruptedError
from tests.agentrt.test_server import _free_port, _start_server


def test_a_job_killed_mid_run_resumes_without_repeating_its_finished_side_effects(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    log, gate = tmp_path / "log.txt", tmp_path / "gate"
    proc = _start_server(address, tmp_path / "j.sqlite")
    try:
        with Client(address, timeout=20) as c:
            job_id = c.submit("side_effects", {"log": str(log), "gate": str(gate)}, wait=False)
            token = c.token
        deadline = time.monotonic() + 60
        while not Path(f"{gate}.waiting").exists():  # the two side effects are done and journaled
            assert time.monotonic() < deadline, "the job never reached its gate"
            time.sleep(0.02)
        assert log.read_text().splitlines() == ["one", "two"]
        proc.send_signal(signal.SIGKILL)  # the job is waiting at the gate
        proc.wait(10)
        gate.touch()
        proc = _start_server(address, tmp_path / "j.sqlite")
        with Client(address, timeout=20, token=token) as c:
            res = c.result(job_id, timeout=60)
        assert res.status == "succeeded", res.error
        assert res.output == ["one", "two", True, "three"]
        assert log.read_text().splitlines() == ["one", "two", "three"]  # each side effect happened once
    finally:
        proc.kill()
        proc.wait(10)


def test_interrupt_then_resume_over_the_server_runs_each_side_effect_once(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    log = tmp_path / "log.txt"
    proc = _start_server(address, tmp_path / "j.sqlite")
    try:
        with Client(address, timeout=20) as c:
            first = c.submit("approval", {"log": str(log)})
            assert first.status == "interrupted" and first.interrupt == {"question": "go ahead?"}
            assert c.status(first.job_id) == "interrupted"
            done = c.resume(first.job_id, {"approved": True})
            assert done.status == "succeeded" and done.output == {"answer": {"approved": True}}
            with pytest.raises(RemoteError, match="not_interrupted"):
                c.resume(first.job_id, {"approved": True})
            waiting = c.submit("approval", {"log": str(log)})
            assert c.cancel(waiting.job_id) == "cancelled" and c.status(waiting.job_id) == "cancelled"
            with pytest.raises(RemoteError, match="not_interrupted"):
                c.resume(waiting.job_id, {"approved": True})
        assert log.read_text().splitlines() == ["prepared", "done", "prepared"]
    finally:
        proc.kill()
        proc.wait(10)


side = {"calls": 0, "branch": "a"}


@tool
def count(tag: str) -> str:
    side["calls"] += 1
    return tag


@graph
async def asks(ctx: Any) -> Any:
    first = await ctx.call(count, tag=side["branch"])
    value = await ctx.interrupt({"need": "a number"})
    return [first, value]


def _runtime() -> Runtime:
    reg = Registry()
    reg.register(count)
    reg.register(asks)
    return Runtime(reg, None, store=MemoryStore())


async def test_runtime_resume_returns_the_input_and_replays_finished_tools() -> None:
    side.update(calls=0, branch="a")
    rt = _runtime()
    res = await rt.run_job(JobSpec(graph="asks"))
    assert res.status == "interrupted" and res.interrupt == {"need": "a number"} and side["calls"] == 1
    done = await rt.resume(res.job_id, 42)
    assert done.status == "succeeded" and done.output == ["a", 42]
    assert side["calls"] == 1  # the tool's recorded result was replayed
    with pytest.raises(NotInterruptedError):
        await rt.resume(res.job_id, 1)


async def test_a_graph_that_takes_another_path_on_replay_fails_with_a_typed_error() -> None:
    side.update(calls=0, branch="a")
    rt = _runtime()
    res = await rt.run_job(JobSpec(graph="asks"))
    side["branch"] = "b"  # the replay now calls the tool with other arguments
    done = await rt.resume(res.job_id, 1)
    assert done.status == "failed"
    assert "NonDeterminismError" in (done.error or "") and "tool:count" in (done.error or "")


def test_threads_are_scoped_per_client_on_the_server() -> None:
    from agentrt.server import _thread

    assert _thread("alice", "t") != _thread("bob", "t") and _thread("alice", "t") == _thread("alice", "t")
    assert _thread("alice", None) is None


def test_a_journal_from_before_threads_gains_the_column_and_keeps_its_jobs(tmp_path: Path) -> None:
    import sqlite3

    from agentrt.journal import Journal

    old = sqlite3.connect(tmp_path / "j.sqlite")
    old.executescript("""CREATE TABLE jobs (job_id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE, client BLOB, graph TEXT NOT NULL,
        inputs BLOB NOT NULL, priority INTEGER NOT NULL, traceparent TEXT, state TEXT NOT NULL, result BLOB, created REAL NOT NULL,
        updated REAL NOT NULL);
        INSERT INTO jobs VALUES ('j1', NULL, X'61', 'echo', X'80', 0, NULL, 'accepted', NULL, 0, 0);""")
    old.commit()
    old.close()
    journal = Journal(tmp_path / "j.sqlite")
    try:
        (rec,) = journal.unfinished()
        assert rec.job_id == "j1" and rec.thread_id is None and rec.inputs == {}
    finally:
        journal.close()


async def test_async_client_resume_streams_the_resumed_jobs_events(tmp_path: Path) -> None:
    import anyio

    from agentrt.client import AsyncClient
    from agentrt.server import Server, ServerConfig
    from tests.agentrt.test_server import registry

    srv = Server(Runtime(registry()), ServerConfig(bind="tcp://127.0.0.1:*", journal=tmp_path / "j.sqlite"))
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        events: list[Any] = []
        async with AsyncClient(srv.address, timeout=10) as c:
            asked = await c.submit("approval", {"log": str(tmp_path / "log")})
            assert asked.status == "interrupted"
            done = await c.resume(asked.job_id, {"approved": False}, on_event=events.append)
        tg.cancel_scope.cancel()
    assert done.status == "succeeded" and done.output == {"answer": {"approved": False}}
    kinds = [e.kind for e in events]
    assert "task_replayed" in kinds and kinds[-1] == "job_finished"  # the first tool call came from the journal
    assert (tmp_path / "log").read_text().splitlines() == ["prepared"]


class _HoldingExecutor:
    """Keeps every result out of the job, as RayToolExecutor does with large ones (in-process here)."""

    def __init__(self) -> None:
        from agentrt.pools import LocalToolExecutor

        self.local = LocalToolExecutor()
        self.held: dict[str, Any] = {}
        self.released: list[str] = []

    async def run(self, t: Any, args: dict[str, Any]) -> tuple[Any, float]:
        from agentrt import HeldResult

        value, cpu = await self.local.run(t, args)
        handle = HeldResult(f"obj{len(self.held)}", len(str(value)), t.name)
        self.held[handle.object_id] = value
        return handle, cpu

    async def resolve(self, value: Any) -> Any:
        from agentrt import HeldResult, HeldResultError

        if not isinstance(value, HeldResult):
            return value
        if value.object_id not in self.held:
            raise HeldResultError(f"{value.object_id} was released")
        return self.held[value.object_id]

    def release(self, value: Any) -> None:
        self.held.pop(value.object_id, None)
        self.released.append(value.object_id)


@tool
def report() -> str:
    side["calls"] += 1
    return "a long report"


@graph
async def held_then_asks(ctx: Any) -> list[Any]:
    handle = await ctx.call("report")
    answer = await ctx.interrupt("ok?")
    return [await ctx.resolve(handle), answer]


async def test_a_held_tool_result_replayed_from_the_journal_is_a_handle_again() -> None:
    side.update(calls=0)
    reg = Registry()
    for obj in (report, held_then_asks):
        reg.register(obj)
    tools = _HoldingExecutor()
    rt = Runtime(reg, None, tools=tools, store=MemoryStore())  # type: ignore[arg-type]
    res = await rt.run_job(JobSpec(graph="held_then_asks"))
    assert res.status == "interrupted"
    assert tools.released == []  # the resume needs it
    done = await rt.resume(res.job_id, "yes")
    assert done.status == "succeeded" and done.output == ["a long report", "yes"], done.error
    assert side["calls"] == 1  # replayed (as a handle that still resolves), not run again
    assert tools.released == ["obj0"] and tools.held == {}  # the job ended: its held result went with it


@graph
async def holds_twice(ctx: Any, fail: bool) -> Any:
    first, second = await ctx.call("report"), await ctx.call("report")
    if fail:
        raise ValueError("the job fails after holding two results")
    return [first, second]


@pytest.mark.parametrize("fail", [False, True])
async def test_a_job_releases_its_held_tool_results_when_it_ends(fail: bool) -> None:
    from agentrt import HeldResultError

    reg = Registry()
    for obj in (report, holds_twice):
        reg.register(obj)
    tools = _HoldingExecutor()
    res = await Runtime(reg, None, tools=tools).run_job(JobSpec(graph="holds_twice", inputs={"fail": fail}))  # type: ignore[arg-type]
    assert res.status == ("failed" if fail else "succeeded"), res.error
    assert sorted(tools.released) == ["obj0", "obj1"] and tools.held == {}
    if not fail:
        with pytest.raises(HeldResultError, match="obj0"):
            await tools.resolve(res.output[0])
