"""Executor behaviour without an engine: dataflow, pools, failures, cancellation, DAG export."""

from __future__ import annotations

import time

import anyio
import pytest

from agentrt import FailurePolicy, JobSpec, PoolLimits, Registry, RetryPolicy, Runtime, agent, graph, tool
from agentrt.types import TaskKind, TaskState


def make_runtime(*objs: object, limits: PoolLimits | None = None) -> Runtime:
    reg = Registry()
    for o in objs:
        reg.register(o)  # type: ignore[arg-type]
    return Runtime(reg, None, limits=limits or PoolLimits(cpu=8))


@tool
async def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool
def square(x: int) -> int:
    return x * x


@agent
async def summer(ctx, xs: list[int]) -> int:  # type: ignore[no-untyped-def]
    squares = await ctx.gather(*[ctx.call(square, x=x) for x in xs])
    total = 0
    for s in squares:
        total = await ctx.call(add, a=total, b=s)
    return total


@graph
async def fan(ctx, groups: list[list[int]]) -> int:  # type: ignore[no-untyped-def]
    handles = [ctx.spawn(summer, g) for g in groups]
    parts = await ctx.gather(*handles)
    return await ctx.call(add, a=parts[0], b=sum(parts[1:]))


async def test_fan_out_fan_in_computes_the_right_answer_and_records_the_dag() -> None:
    rt = make_runtime(add, square, summer, fan)
    events: list[dict] = []
    res = await rt.run_job(JobSpec(graph="fan", inputs={"groups": [[1, 2], [3], [4, 5, 6]]}), on_event=events.append)
    assert res.status == "succeeded" and res.output == 1 + 4 + 9 + 16 + 25 + 36
    dag = rt.jobs[res.job_id].dag
    kinds = [t.kind for t in dag.tasks.values()]
    assert kinds.count(TaskKind.AGENT) == 3 and kinds.count(TaskKind.TOOL) == 6 + 6 + 1
    final = list(dag.tasks.values())[-1]
    assert set(final.deps) == {t.id for t in dag.tasks.values() if t.kind is TaskKind.AGENT}  # fan-in
    assert all(t.state is TaskState.SUCCEEDED for t in dag.tasks.values())
    assert '"kind": "agent"' in dag.dumps() and "digraph" in dag.to_dot()
    assert sum(e["kind"] == "task_finished" for e in events) == len(dag.tasks)


async def test_no_barrier_a_branch_proceeds_while_its_sibling_is_blocked() -> None:
    gate = anyio.Event()
    seen: list[str] = []

    @tool
    async def wait_gate() -> str:
        await gate.wait()
        return "slow"

    @tool
    async def step(i: int) -> int:
        seen.append(f"fast{i}")
        return i

    @agent
    async def fast(ctx) -> int:  # type: ignore[no-untyped-def]
        for i in range(3):
            await ctx.call(step, i=i)
        gate.set()  # only reachable if the fast branch ran all its steps while slow was blocked
        return 3

    @agent
    async def slow(ctx) -> str:  # type: ignore[no-untyped-def]
        return await ctx.call(wait_gate)

    @graph
    async def race(ctx) -> list:  # type: ignore[no-untyped-def]
        return await ctx.gather(ctx.spawn(slow), ctx.spawn(fast))

    rt = make_runtime(wait_gate, step, fast, slow, race)
    with anyio.fail_after(10):
        res = await rt.run_job(JobSpec(graph="race"))
    assert res.output == ["slow", 3] and seen == ["fast0", "fast1", "fast2"]


async def test_pool_limits_are_never_exceeded_under_200_concurrent_tasks() -> None:
    running = peak = 0
    lock = __import__("threading").Lock()

    @tool
    def busy(i: int) -> int:  # sync: the CPU pool's tools (async tools wait on I/O and are not limited by it)
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        __import__("time").sleep(0.001 * (i % 3))
        with lock:
            running -= 1
        return i

    @graph
    async def many(ctx) -> int:  # type: ignore[no-untyped-def]
        return sum(await ctx.gather(*[ctx.call(busy, i=i) for i in range(200)]))

    rt = make_runtime(busy, many, limits=PoolLimits(cpu=5))
    res = await rt.run_job(JobSpec(graph="many"))
    assert res.output == sum(range(200)) and peak == 5
    assert rt.scheduler.in_use.get(next(iter(rt.scheduler.in_use))) == 0


async def test_retries_then_success_and_timeouts_fail_with_the_task_name() -> None:
    attempts = 0

    @tool(retry=RetryPolicy(max_attempts=3, backoff=0.0))
    def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("transient")
        return "ok"

    @tool(timeout=0.05)
    async def hang() -> str:
        await anyio.sleep(10)
        return "never"

    @graph
    async def g_flaky(ctx) -> str:  # type: ignore[no-untyped-def]
        return await ctx.call(flaky)

    @graph
    async def g_hang(ctx) -> str:  # type: ignore[no-untyped-def]
        return await ctx.call(hang)

    rt = make_runtime(flaky, hang, g_flaky, g_hang)
    assert (await rt.run_job(JobSpec(graph="g_flaky"))).output == "ok" and attempts == 3
    res = await rt.run_job(JobSpec(graph="g_hang"))
    assert res.status == "failed" and "TaskTimeoutError" in res.error and "'hang'" in res.error  # type: ignore[operator]


async def test_a_failing_tool_cancels_its_siblings_and_names_itself() -> None:
    cancelled = anyio.Event()

    @tool
    def boom() -> int:
        raise ValueError("bad input 42")

    @tool
    async def long() -> int:
        try:
            await anyio.sleep(10)
        finally:
            cancelled.set()
        return 1

    @agent
    async def a_boom(ctx) -> int:  # type: ignore[no-untyped-def]
        return await ctx.call(boom)

    @agent
    async def a_long(ctx) -> int:  # type: ignore[no-untyped-def]
        return await ctx.call(long)

    @graph
    async def g(ctx) -> list:  # type: ignore[no-untyped-def]
        return await ctx.gather(ctx.spawn(a_long), ctx.spawn(a_boom))

    rt = make_runtime(boom, long, a_boom, a_long, g)
    with anyio.fail_after(5):
        res = await rt.run_job(JobSpec(graph="g"))
    assert res.status == "failed" and "boom" in res.error and "bad input 42" in res.error  # type: ignore[operator]
    assert cancelled.is_set()


async def test_continue_policy_returns_errors_to_the_agent_and_keeps_siblings() -> None:
    @tool
    def bad() -> int:
        raise KeyError("x")

    @tool
    def good() -> int:
        return 7

    @agent
    async def one(ctx, t: str) -> int:  # type: ignore[no-untyped-def]
        return await ctx.call(t)

    @graph(failure=FailurePolicy.CONTINUE)
    async def tolerant(ctx) -> list:  # type: ignore[no-untyped-def]
        out = []
        for h in [ctx.spawn(one, "bad"), ctx.spawn(one, "good")]:
            try:
                out.append(await h)
            except Exception as exc:
                out.append(type(exc).__name__)
        return out

    rt = make_runtime(bad, good, one, tolerant)
    res = await rt.run_job(JobSpec(graph="tolerant"))
    assert res.output == ["ToolError", 7]


async def test_unserialisable_tool_results_and_bad_arguments_are_typed_errors() -> None:
    @tool
    def weird() -> object:
        return object()

    @graph
    async def g(ctx, which: str) -> str:  # type: ignore[no-untyped-def]
        from agentrt import SchemaError, ToolError, UnknownToolError

        try:
            if which == "weird":
                await ctx.call(weird)
            elif which == "args":
                await ctx.call(weird, nope=1)
            else:
                await ctx.call("missing")
        except (ToolError, SchemaError, UnknownToolError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"

    rt = make_runtime(weird, g)
    outs = [(await rt.run_job(JobSpec(graph="g", inputs={"which": w}))).output for w in ("weird", "args", "missing")]
    assert outs[0].startswith("ToolError") and "unserialisable" in outs[0]
    assert outs[1].startswith("SchemaError") and "nope" in outs[1]
    assert outs[2].startswith("UnknownToolError") and "weird" in outs[2]


async def test_cancelling_a_job_cancels_everything_under_it() -> None:
    started = anyio.Event()

    @tool
    async def forever() -> int:
        started.set()
        await anyio.sleep(60)
        return 0

    @graph
    async def g(ctx) -> int:  # type: ignore[no-untyped-def]
        return sum(await ctx.gather(*[ctx.call(forever) for _ in range(3)]))

    rt = make_runtime(forever, g)
    result = {}

    async def run() -> None:
        result["r"] = await rt.run_job(JobSpec(graph="g", job_id="j1"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            assert rt.cancel("j1")
    assert result["r"].status == "cancelled"
    assert all(t.state is TaskState.CANCELLED for t in rt.jobs["j1"].dag.tasks.values())
    assert sum(rt.scheduler.in_use.values()) == 0


async def test_unknown_graph_and_bad_inputs_fail_cleanly() -> None:
    rt = make_runtime(add, square, summer, fan)
    with pytest.raises(KeyError, match="unknown graph 'nope'"):
        await rt.run_job(JobSpec(graph="nope"))
    res = await rt.run_job(JobSpec(graph="fan", inputs={"groups": "x"}))
    assert res.status == "failed" and "SchemaError" in res.error  # type: ignore[operator]


def test_sync_tools_stay_plain_callables_with_schemas() -> None:
    assert square(3) == 9
    assert square.parameters["properties"]["x"]["type"] == "integer"
    assert square.schema()["function"]["name"] == "square"
    start = time.perf_counter()
    assert add.description == "Add two numbers." and time.perf_counter() - start < 1


async def test_a_held_result_passes_a_typed_argument_through_and_a_local_executor_refuses_to_resolve_it() -> None:
    from agentrt import HeldResult, HeldResultError, SchemaError
    from agentrt.pools import LocalToolExecutor

    @tool
    def summarise(text: str, limit: int = 10) -> str:
        return text[:limit]

    held = HeldResult("ab12", 5_000_000, "fetch")
    assert summarise.validate({"text": held, "limit": "3"}) == {"text": held, "limit": 3}  # the rest still converts
    with pytest.raises(SchemaError, match="limit"):
        summarise.validate({"text": held, "limit": "many"})
    with pytest.raises(SchemaError, match="nope"):
        summarise.validate({"text": held, "nope": 1})
    assert summarise.validate({"text": "plain"}) == {"text": "plain", "limit": 10}
    local = LocalToolExecutor()
    assert await local.resolve("plain") == "plain"
    with pytest.raises(HeldResultError, match="ab12.*'fetch'"):
        await local.resolve(held)


async def test_storage_tasks_respect_the_storage_budget_and_count_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    lock = threading.Lock()
    active = peak = 0

    def write(i: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        (tmp_path / f"f{i}").write_bytes(b"x" * 1000)
        time.sleep(0.01)
        with lock:
            active -= 1
        return i

    @graph
    async def store(ctx) -> int:  # type: ignore[no-untyped-def]
        return sum(await ctx.gather(*[ctx.io(write, i, nbytes=1000) for i in range(12)]))

    rt = make_runtime(store, limits=PoolLimits(cpu=8, storage=3))
    res = await rt.run_job(JobSpec(graph="store"))
    assert res.output == sum(range(12)) and peak <= 3 and res.usage.io_bytes == 12_000
    assert {t.kind for t in rt.jobs[res.job_id].dag.tasks.values()} == {TaskKind.IO}


async def test_stream_job_yields_events_with_parent_ids_then_the_result() -> None:
    rt = make_runtime(add, square, summer, fan)
    events = [e async for e in rt.stream_job(JobSpec(graph="fan", inputs={"groups": [[1, 2], [3]]}))]
    assert events[-1]["kind"] == "job_result" and events[-1]["result"].output == 1 + 4 + 9
    tasks = [e for e in events if "task_id" in e]
    agents = {e["task_id"] for e in tasks if e["task_kind"] == "agent"}
    squares = [e for e in tasks if e["name"] == "square" and e["kind"] == "task_started"]
    assert len(squares) == 3 and {e["parent_task_id"] for e in squares} == agents  # each under its summer
    root_add = [e for e in tasks if e["name"] == "add" and e["parent_task_id"] is None]
    assert root_add  # the final add is the graph's own
    with pytest.raises(Exception, match="nope"):
        [e async for e in rt.stream_job(JobSpec(graph="nope"))]
