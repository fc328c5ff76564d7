"""agentrt.ray on a real two-node local Ray cluster (ray.cluster_utils.Cluster, 1 CPU per node, a
`storage` resource on the second): jobs, tool placement, replica failure, disaggregated prefill,
large tool results kept out of the driver."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
from ray import cloudpickle  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from agentrt import HeldResult, JobSpec, Registry, Runtime, graph, tool  # noqa: E402
from agentrt.engine_client import LLMRequest  # noqa: E402
from agentrt.ray import RayCluster, RayConfig, RayToolExecutor  # noqa: E402

pytestmark = pytest.mark.timeout(600)
ENGINE = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 256, "block_size": 4, "num_threads": 1, "max_num_seqs": 8}
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules


@tool
def double(x: int) -> int:
    """CPU tool."""
    return 2 * x


@tool
def archive(x: int) -> int:
    """Storage-bound tool."""
    return x + 1


@tool
def driver_pid() -> int:
    """Tool bound to the driver ("local")."""
    return os.getpid()


@graph
async def chat_and_tools(ctx: Any, n: int) -> dict[str, int]:
    first = await ctx.generate([{"role": "system", "content": "You are an airline agent."},
                                {"role": "user", "content": f"Help with booking {n}."}], max_tokens=6, ignore_eos=True)
    doubled = await ctx.call("double", x=n)
    stored = await ctx.call("archive", x=doubled)
    second = await ctx.generate(f"Booking {stored} is done.", max_tokens=6, ignore_eos=True)
    return {"n": stored, "pid": await ctx.call("driver_pid"), "cached": second.usage.cached_tokens, "prompt": second.usage.prompt_tokens, "first": first.usage.prompt_tokens}


@graph
async def long_answer(ctx: Any) -> int:
    gen = await ctx.generate("Tell me about every flight to Seattle.", max_tokens=160, ignore_eos=True)
    return len(gen.token_ids)


def _materialise(data: str, log: str) -> Report:
    """Unpickling a Report runs this: it records which process materialised the payload."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return Report(data, log)


@dataclass
class Report:
    """A large tool result that logs every process it is deserialised in (a dataclass: JSON-encodable,
    and it pickles by value to the workers)."""

    data: str
    log: str

    def __reduce__(self) -> tuple[Any, ...]:
        # The class travels by value; drop the encoder info msgspec caches on it (not picklable).
        if "__msgspec_cache__" in vars(Report):
            delattr(Report, "__msgspec_cache__")
        return _materialise, (self.data, self.log)


@tool
def big_report(size: int, log: str) -> Report:
    """CPU tool with a large result."""
    return Report("x" * size, log)


@tool
def report_length(report: Any) -> int:
    """Storage-bound consumer of the large result (typed Any: a Report in the signature would make
    msgspec cache its schema on the class, which then cannot travel by value to the workers)."""
    return len(report.data)


@graph
async def pass_report_along(ctx: Any, size: int, log: str) -> dict[str, Any]:
    report = await ctx.call("big_report", size=size, log=log)
    return {"held": isinstance(report, HeldResult), "length": await ctx.call("report_length", report=report)}


@graph
async def report_in_a_tool_turn(ctx: Any, size: int, log: str) -> int:
    (report,) = await ctx.call_all([("big_report", {"size": size, "log": log})])  # the conversation needs its text
    return len(report.data)


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, str]]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20, "include_dashboard": False})
    storage = cluster.add_node(num_cpus=1, resources={"storage": 1}, object_store_memory=80 * 2**20)
    ray.init(address=cluster.address, logging_level="WARNING")
    yield {"head": cluster.head_node.node_id, "storage": storage.node_id}
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def replicas(nodes: dict[str, str]) -> Iterator[RayCluster]:
    config = RayConfig(address="auto", num_replicas=2, num_cpus_per_replica=0.5, engine_options=ENGINE,
                       tool_resources={"archive": "storage", "driver_pid": "local"}, num_cpus_per_tool=0.5)
    with RayCluster(config) as cluster:
        yield cluster


def _registry() -> Registry:
    reg = Registry()
    for obj in (double, archive, driver_pid, chat_and_tools, long_answer, big_report, report_length, pass_report_along,
                report_in_a_tool_turn):
        reg.register(obj)
    return reg


async def test_jobs_complete_and_tools_land_on_nodes_with_their_resource(replicas: RayCluster, nodes: dict[str, str]) -> None:
    import anyio

    runtime = replicas.runtime(_registry())
    results: list[Any] = []

    async def one(n: int) -> None:
        results.append(await runtime.run_job(JobSpec(graph="chat_and_tools", inputs={"n": n})))

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(one, n)
    assert sorted(r.output["n"] for r in results if r.status == "succeeded") == [1, 3, 5], [r.error for r in results]
    # The second turn continues the session on the replica holding its first turn.
    assert all(r.output["cached"] >= r.output["first"] - 4 for r in results)
    assert replicas.tools is not None
    placed = {(p.tool, p.node_id) for p in replicas.tools.placements}
    assert {node for name, node in placed if name == "archive"} == {nodes["storage"]}
    assert {name for name, _ in placed} == {"double", "archive"}  # "local" tools ran in the driver:
    assert {r.output["pid"] for r in results} == {os.getpid()}


async def test_a_replica_killed_mid_job_is_replaced_and_its_requests_retried(replicas: RayCluster) -> None:
    import anyio

    assert replicas.engine is not None and replicas.pool is not None
    engine, pool = replicas.engine, replicas.pool
    runtime = replicas.runtime(_registry())
    retries = engine.stats.num_retries
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _collect(lambda: runtime.run_job(JobSpec(graph="long_answer")), out))
        while not any(load.num_requests for load in pool.router.loads.values()):  # its LLM call is in flight
            await anyio.sleep(0.01)
        victim = next(name for name, load in pool.router.loads.items() if load.num_requests)
        handle = pool.handles[victim]
        ray.kill(handle, no_restart=True)
    assert out[0].status == "succeeded" and out[0].output == 161  # 160 generated, the cut turn closed by its end token
    assert pool.handles[victim] is not handle and pool.num_replacements >= 1
    assert engine.stats.num_retries > retries
    reply = await pool.handles[victim].generate.remote(LLMRequest(prompt_ids=list(range(30, 90)), max_tokens=8))
    assert len(reply.response.token_ids) == 8  # the replacement serves


async def _collect(fn: Any, out: list[Any]) -> None:
    out.append(await fn())


async def test_a_router_rebuilt_from_replica_snapshots_keeps_the_conversation_on_its_replica(replicas: RayCluster) -> None:
    assert replicas.engine is not None and replicas.pool is not None
    engine, pool = replicas.engine, replicas.pool
    turn1 = list(range(200, 260))
    await engine.generate(LLMRequest(prompt_ids=turn1, max_tokens=4))
    from engine.kv.tiers import block_keys

    turn2 = block_keys(turn1 + [1, 2, 3, 4, 5, 6, 7, 8], 4)
    before = pool.router.route(turn2).replica
    (holder,) = [r for r, n in pool.router.index.overlap(turn2).items() if n == len(turn1) // 4]
    pool.router.index.__init__()  # type: ignore[misc]  # the router restarts with an empty index
    await pool.resync()
    assert pool.router.route(turn2).replica == before  # the same decision (the holder, unless its work is out of balance)
    assert pool.router.index.overlap(turn2)[holder] == len(turn1) // 4


async def test_disaggregated_prefill_decode_matches_a_single_replica(nodes: dict[str, str]) -> None:
    from engine import LLM, SamplingParams

    config = RayConfig(address="auto", num_prefill_replicas=1, num_decode_replicas=1, num_cpus_per_replica=0.25,
                       engine_options=ENGINE)
    prompts = [list(range(10, 47)), list(range(10, 30)) + list(range(60, 90))]
    alone = LLM(**ENGINE)  # type: ignore[arg-type]
    with RayCluster(config) as cluster:
        assert cluster.engine is not None
        for prompt in prompts:
            out = await cluster.engine.generate(LLMRequest(prompt_ids=prompt, max_tokens=8, ignore_eos=True))
            ref = alone.generate(prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))[0]
            assert out.token_ids == ref.token_ids
            assert out.usage.cached_tokens == len(prompt) // 4 * 4  # the decode replica computed only the tail


async def test_a_large_tool_result_goes_to_the_next_tool_through_the_object_store_not_the_driver(
        replicas: RayCluster, nodes: dict[str, str], tmp_path: Any) -> None:
    log = str(tmp_path / "materialised.log")
    tools = RayToolExecutor({"report_length": "storage"}, num_cpus=0.5, large_result_bytes=64 * 1024)
    runtime = Runtime(_registry(), replicas.engine, tools=tools)
    size = 4 * 2**20
    result = await runtime.run_job(JobSpec(graph="pass_report_along", inputs={"size": size, "log": log}))
    assert result.status == "succeeded", result.error
    assert result.output == {"held": True, "length": size}
    assert tools.num_held == 0  # released when the job ended: the store can free the 4 MiB
    assert {p.node_id for p in tools.placements if p.tool == "report_length"} == {nodes["storage"]}
    readers = Path(log).read_text().split()
    assert readers and str(os.getpid()) not in readers  # the consumer's worker read it; the driver never did
    # A model's tool turn needs the text: there the driver resolves it (and the log sees the driver).
    turn = await runtime.run_job(JobSpec(graph="report_in_a_tool_turn", inputs={"size": 100_000, "log": log}))
    assert turn.status == "succeeded" and turn.output == 100_000, turn.error
    assert str(os.getpid()) in Path(log).read_text().split()
    assert tools.num_held == 0
    tools.close()
