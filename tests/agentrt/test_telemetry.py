"""OpenTelemetry spans: GenAI attributes per span kind, exact cost roll-up, engine token counts,
trace context across the ZeroMQ hop, and the `agentrt trace` renderers."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, agent, graph, telemetry, tool
from agentrt.cli import app
from engine import LLM


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = telemetry.configure(exporter, batch=False)
    yield exporter
    assert provider is not None
    provider.shutdown()
    telemetry.reset()


@tool
def lookup(key: str) -> str:
    return key.upper()


@tool
def broken() -> str:
    raise ValueError("nope")


@agent
async def helper(ctx: Any, key: str) -> str:
    gen = await ctx.generate([{"role": "user", "content": f"Look up {key}"}], max_tokens=8, name="planner")
    return await ctx.call(lookup, key=gen.text[:3] or "x")


@graph
async def traced(ctx: Any) -> list[str]:
    out = await ctx.gather(ctx.spawn(helper, "a"), ctx.spawn(helper, "b"))
    try:
        await ctx.call(broken)
    except Exception:
        pass
    return out


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    reg = Registry()
    for o in (lookup, broken, helper, traced):
        reg.register(o)
    return Runtime(reg, EmbeddedEngine(LLM(kv_cache_memory_gb=0.25)))


async def test_every_span_kind_has_its_attributes_and_costs_add_up(spans: InMemorySpanExporter, runtime: Runtime) -> None:
    res = await runtime.run_job(JobSpec(graph="traced"))
    assert res.status == "succeeded", res.error
    by_op: dict[str, list[Any]] = {}
    for s in spans.get_finished_spans():
        by_op.setdefault(s.attributes["gen_ai.operation.name"], []).append(s)
    (job,) = by_op["invoke_workflow"]
    assert job.name == "invoke_workflow traced" and job.attributes["agentrt.rollup"] is True
    assert {s.attributes["gen_ai.agent.name"] for s in by_op["invoke_agent"]} == {"helper"}
    for s in by_op["invoke_agent"]:  # parents carry marked roll-ups, not costs of their own
        assert s.attributes["agentrt.rollup"] is True and "agentrt.cost.usd" not in s.attributes
        assert s.attributes["agentrt.rollup.generated_tokens"] > 0
    for s in by_op["execute_tool"]:
        assert s.attributes["gen_ai.tool.name"] in ("lookup", "broken") and s.attributes["gen_ai.tool.call.id"]
    failed = [s for s in by_op["execute_tool"] if s.attributes["gen_ai.tool.name"] == "broken"]
    assert failed[0].attributes["error.type"] == "ToolError" and failed[0].status.status_code.name == "ERROR"
    llm = by_op["chat"]
    assert len(llm) == 2
    for s in llm:
        a = s.attributes
        assert s.name == f"chat {a['gen_ai.request.model']}" and a["gen_ai.conversation.id"]
        for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.cache_read.input_tokens",
                    "gen_ai.response.finish_reasons", "agentrt.device_seconds", "agentrt.cost.usd", "agentrt.prefill_tokens_computed",
                    "agentrt.spec.proposed_tokens", "agentrt.spec.accepted_tokens"):
            assert key in a, key
        assert a["agentrt.kv.device.byte_seconds"] > 0
    for s in llm:  # GenAI conventions: provider, response model, cache/reasoning tokens, cost on inference spans
        a = s.attributes
        assert a["gen_ai.provider.name"] == "agentrt" and a["gen_ai.response.model"] == a["gen_ai.request.model"]
        assert a["agentrt.task.name"] == "planner" and a["gen_ai.usage.reasoning.output_tokens"] == 0
        assert a["gen_ai.usage.cost.amount"] == a["agentrt.cost.usd"] > 0
        assert a["gen_ai.usage.cost.currency"] == "USD" and a["gen_ai.usage.cost.source"] == "local"
        assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a  # content is opt-in
    others = by_op["execute_tool"] + by_op["invoke_agent"] + by_op["invoke_workflow"]
    assert not any("gen_ai.usage.cost.amount" in s.attributes for s in others)  # never double counted
    leaves = [s.attributes["agentrt.cost.usd"] for s in llm + by_op["execute_tool"] if "agentrt.cost.usd" in s.attributes]
    assert math.fsum(leaves) == res.usage.cost_usd == job.attributes["agentrt.rollup.cost_usd"]
    assert math.isclose(sum(s.attributes["agentrt.rollup.cost_usd"] for s in by_op["invoke_agent"]),
                        math.fsum(s.attributes["agentrt.cost.usd"] for s in llm + by_op["execute_tool"] if s.parent.span_id != job.context.span_id))
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in llm) == res.usage.generated_tokens
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in llm) == res.usage.prompt_tokens
    # Spans nest: LLM and tool spans sit under their agent span, agents under the job.
    agent_ids = {s.context.span_id for s in by_op["invoke_agent"]}
    assert all(s.parent.span_id in agent_ids for s in llm)
    assert all(s.parent.span_id == job.context.span_id for s in by_op["invoke_agent"])


async def test_message_content_is_recorded_only_when_opted_in(runtime: Runtime) -> None:
    exporter = InMemorySpanExporter()
    provider = telemetry.configure(exporter, batch=False, config=telemetry.TelemetryConfig(capture_content=True))
    try:
        res = await runtime.run_job(JobSpec(graph="traced"))
    finally:
        assert provider is not None
        provider.shutdown()
        telemetry.reset()
    assert res.status == "succeeded", res.error
    chat = [s for s in exporter.get_finished_spans() if s.attributes["gen_ai.operation.name"] == "chat"]
    assert len(chat) == 2
    for s in chat:
        inputs = json.loads(s.attributes["gen_ai.input.messages"])
        outputs = json.loads(s.attributes["gen_ai.output.messages"])
        assert inputs[-1]["role"] == "user" and inputs[-1]["parts"][0]["content"].startswith("Look up ")
        assert outputs[0]["role"] == "assistant" and outputs[0]["parts"][0]["type"] == "text"
        assert outputs[0]["finish_reason"] == s.attributes["gen_ai.response.finish_reasons"][0]


def test_capture_content_follows_its_environment_variable() -> None:
    assert telemetry.TelemetryConfig.from_env({}).capture_content is False
    assert telemetry.TelemetryConfig.from_env({telemetry.CAPTURE_CONTENT_ENV: "true"}).capture_content is True
    cfg = telemetry.TelemetryConfig.from_env({"OTEL_TRACES_EXPORTER": "OTLP", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert (cfg.traces_exporter, cfg.protocol) == ("otlp", "grpc")
    assert telemetry.TelemetryConfig.from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}).traces_exporter == "none"
    with pytest.raises(ValueError, match="zipkin"):
        telemetry.TelemetryConfig.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


async def test_genai_metrics_count_tokens_durations_and_cost(runtime: Runtime) -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    telemetry.configure("none", metric_reader=reader)
    try:
        res = await runtime.run_job(JobSpec(graph="traced"))
        data = reader.get_metrics_data()
    finally:
        telemetry.shutdown()
    points: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points[m.name] = list(m.data.data_points)
    tokens = {p.attributes["gen_ai.token.type"]: p for p in points["gen_ai.client.token.usage"]}
    assert tokens["input"].sum == res.usage.prompt_tokens and tokens["output"].sum == res.usage.generated_tokens
    assert tokens["input"].count == 2 and tokens["input"].attributes["gen_ai.provider.name"] == "agentrt"
    (chat,) = points["gen_ai.client.operation.duration"]
    assert chat.attributes["gen_ai.operation.name"] == "chat" and chat.count == 2 and chat.sum > 0
    assert {p.attributes["gen_ai.tool.name"] for p in points["gen_ai.execute_tool.duration"]} == {"lookup", "broken"}
    broken = next(p for p in points["gen_ai.execute_tool.duration"] if p.attributes["gen_ai.tool.name"] == "broken")
    assert broken.attributes["error.type"] == "ToolError"
    agents = {p.attributes["gen_ai.operation.name"]: p for p in points["gen_ai.invoke_agent.duration"]}
    assert agents["invoke_agent"].count == 2 and agents["invoke_workflow"].attributes["gen_ai.agent.name"] == "traced"
    assert math.isclose(sum(p.value for p in points["agentrt.cost"]), res.usage.cost_usd, rel_tol=1e-9)


async def test_a_cancelled_jobs_root_span_has_the_error_status(spans: InMemorySpanExporter) -> None:
    reg = Registry()
    reg.load_path(Path(__file__).parent / "server_graphs")
    rt = Runtime(reg)
    async with anyio.create_task_group() as tg:
        async def run() -> None:
            res = await rt.run_job(JobSpec(graph="sleepy", job_id="job-c", inputs={"seconds": 30}))
            assert res.status == "cancelled"

        tg.start_soon(run)
        with anyio.fail_after(10):
            while not rt.cancel("job-c"):
                await anyio.sleep(0.01)
    (root,) = [s for s in spans.get_finished_spans() if s.name == "invoke_workflow sleepy"]
    assert root.status.status_code.name == "ERROR" and "cancelled" in root.status.description
    assert root.attributes["error.type"] == "cancelled"


async def test_a_clients_traceparent_parents_the_servers_job_span(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    from agentrt.client import AsyncClient
    from agentrt.server import Server, ServerConfig

    reg = Registry()
    reg.load_path(Path(__file__).parent / "server_graphs")
    srv = Server(Runtime(reg), ServerConfig(bind="tcp://127.0.0.1:*", journal=tmp_path / "j.sqlite"))
    tracer = telemetry.tracer()
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        with tracer.start_as_current_span("client request") as client_span:
            async with AsyncClient(srv.address, timeout=10) as c:
                await c.submit("echo", {"text": "x"}, traceparent=telemetry.inject_traceparent())
        tg.cancel_scope.cancel()
    (job,) = [s for s in spans.get_finished_spans() if s.name == "invoke_workflow echo"]
    assert job.context.trace_id == client_span.get_span_context().trace_id
    assert job.parent.span_id == client_span.get_span_context().span_id


def test_trace_show_and_summary_render_a_jsonl_file(tmp_path: Path) -> None:
    file = tmp_path / "spans.jsonl"
    provider = telemetry.configure(f"jsonl:{file}")
    try:
        reg = Registry()
        for o in (lookup, broken):
            reg.register(o)

        @graph
        async def tools_only(ctx: Any) -> str:
            return await ctx.call(lookup, key="k")

        reg.register(tools_only)
        anyio.run(Runtime(reg).run_job, JobSpec(graph="tools_only"))
    finally:
        provider.shutdown()  # type: ignore[union-attr]
        telemetry.reset()
    runner = CliRunner()
    shown = runner.invoke(app, ["trace", "show", str(file)])
    assert shown.exit_code == 0 and "invoke_workflow tools_only" in shown.output and "execute_tool lookup" in shown.output
    summary = runner.invoke(app, ["trace", "summary", str(file)])
    assert summary.exit_code == 0 and "lookup" in summary.output
