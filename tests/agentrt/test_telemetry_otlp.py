"""Telemetry drops into a real collector: the OTEL_* environment variables configure OTLP export over
HTTP and gRPC to local receivers that decode the protobuf, span files are OTLP/JSON, and an
application's own global tracer provider receives agentrt's spans without configure()."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from typer.testing import CliRunner

from agentrt import JobSpec, Registry, Runtime, telemetry
from agentrt.cli import app
from agentrt.otlp_json import read_spans

GRAPHS = Path(__file__).parent / "server_graphs"
REPO = Path(__file__).resolve().parents[2]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        self.server.received.append((self.path, dict(self.headers), request))  # type: ignore[attr-defined]
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def http_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    yield server
    server.shutdown()
    server.server_close()


def _spans(requests: list[Any]) -> list[tuple[dict[str, Any], Any]]:
    """(resource attributes, span) of every span in decoded ExportTraceServiceRequests."""
    out = []
    for req in requests:
        for rs in req.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                out.extend((resource, s) for s in ss.spans)
    return out


def _run_tool_job(graph: str = "sleepy", inputs: dict[str, Any] | None = None) -> Any:
    reg = Registry()
    reg.load_path(GRAPHS)
    return anyio.run(Runtime(reg).run_job, JobSpec(graph=graph, inputs=inputs or {"seconds": 0.01}))


def test_otel_env_vars_send_batched_spans_to_an_otlp_http_receiver(http_receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=sekrit")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # so the batch leaves only at shutdown, however slow the machine
    provider = telemetry.configure()
    assert provider is not None
    try:
        assert _run_tool_job().status == "succeeded"
        assert http_receiver.received == []  # batched: nothing sent on the job's path
    finally:
        provider.shutdown()  # flushes the batch
        telemetry.reset()
    (path, headers, _), *_ = http_receiver.received
    assert path == "/v1/traces" and headers["x-api-key"] == "sekrit"
    spans = _spans([r for _, _, r in http_receiver.received])
    by_name = {s.name: (res, s) for res, s in spans}
    assert {"invoke_workflow sleepy", "execute_tool nap"} <= set(by_name)
    res, tool_span = by_name["execute_tool nap"]
    assert res["service.name"] == "agentrt" and res["deployment.environment"] == "test"
    assert tool_span.parent_span_id == by_name["invoke_workflow sleepy"][1].span_id
    attrs = {a.key: a.value for a in tool_span.attributes}
    assert attrs["gen_ai.operation.name"].string_value == "execute_tool" and attrs["agentrt.cost.usd"].double_value > 0


class _GrpcTraces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.received: list[Any] = []

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (the service's method name)
        self.received.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otlp_grpc_protocol_reaches_a_grpc_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc

    service = _GrpcTraces()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-agents")
    provider = telemetry.configure("otlp")
    try:
        assert _run_tool_job().status == "succeeded"
    finally:
        assert provider is not None
        provider.shutdown()
        telemetry.reset()
        server.stop(None)
    spans = _spans(service.received)
    assert "execute_tool nap" in {s.name for _, s in spans}
    assert {res["service.name"] for res, _ in spans} == {"my-agents"}


def test_cli_trace_otlp_exports_and_writes_no_file_named_otlp(http_receiver: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "sleepy", "-i", '{"seconds": 0.01}', "--graphs", str(GRAPHS), "--tools", str(GRAPHS),
                                   "--trace", "otlp", "--quiet"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "otlp").exists() and list(tmp_path.iterdir()) == []
    assert "invoke_workflow sleepy" in {s.name for _, s in _spans([r for _, _, r in http_receiver.received])}


def test_cli_run_follows_otel_traces_exporter_without_trace(http_receiver: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    res = CliRunner().invoke(app, ["run", "echo", "--graphs", str(GRAPHS), "--tools", str(GRAPHS), "--quiet"])
    assert res.exit_code == 0, res.output
    spans = _spans([r for _, _, r in http_receiver.received])
    assert [(res["service.name"], s.name) for res, s in spans] == [("from-env", "invoke_workflow echo")]


def test_span_files_are_otlp_json_that_the_protobuf_json_mapping_parses(tmp_path: Path) -> None:
    from google.protobuf import json_format

    file = tmp_path / "spans.jsonl"
    provider = telemetry.configure(f"jsonl:{file}")
    try:
        _run_tool_job()
    finally:
        assert provider is not None
        provider.shutdown()
        telemetry.reset()
    lines = [json.loads(line) for line in file.read_text().splitlines()]
    for line in lines:
        request = json_format.ParseDict(line, trace_service_pb2.ExportTraceServiceRequest())
        assert request.resource_spans[0].scope_spans[0].spans
        for span in line["resourceSpans"][0]["scopeSpans"][0]["spans"]:
            # OTLP/JSON: ids are hex (not base64), nanosecond times decimal strings, enums integers.
            assert len(span["traceId"]) == 32 and int(span["traceId"], 16) and len(span["spanId"]) == 16
            assert span["startTimeUnixNano"].isdigit() and isinstance(span["kind"], int)
    records = read_spans(file)
    tool = next(r for r in records if r["name"] == "execute_tool nap")
    assert tool["attributes"]["gen_ai.tool.name"] == "nap" and tool["resource"]["service.name"] == "agentrt"
    assert tool["parent_id"] == next(r["span_id"] for r in records if r["name"] == "invoke_workflow sleepy")


def test_an_applications_global_tracer_provider_gets_spans_without_configure(tmp_path: Path) -> None:
    # A fresh process: the global provider can be set only once per process.
    script = f"""
import anyio, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from agentrt import JobSpec, Registry, Runtime
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
reg = Registry()
reg.load_path({str(GRAPHS)!r})
with trace.get_tracer("app").start_as_current_span("app request") as parent:
    assert anyio.run(Runtime(reg).run_job, JobSpec(graph="sleepy", inputs={{"seconds": 0.01}})).status == "succeeded"
spans = {{s.name: s for s in exporter.get_finished_spans()}}
assert spans["invoke_workflow sleepy"].parent.span_id == parent.get_span_context().span_id, spans
assert "execute_tool nap" in spans
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**_env(), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
