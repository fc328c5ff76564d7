"""What span export to a slow collector costs a job: no tracing, OTLP/HTTP through a SimpleSpanProcessor
(each span exported on the event loop as it ends, the old `configure("otlp")`), and through the
BatchSpanProcessor that `configure()` now installs. The collector is a local HTTP receiver that decodes
each OTLP protobuf request and answers after `--delay` seconds (a collector that far away).

The job is tool-only (no model): `--calls` sequential tool calls that each sleep 10 ms.

    python benchmarks/otlp_export.py [--delay 0.2] [--calls 10] [--repeats 5] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio  # noqa: E402

from agentrt import JobSpec, Registry, Runtime, graph, telemetry, tool  # noqa: E402
from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402


@tool
async def nap10() -> str:
    await anyio.sleep(0.01)
    return "ok"


@graph
async def naps(ctx: Any, calls: int = 10) -> int:
    for _ in range(calls):
        await ctx.call(nap10)
    return calls


def slow_receiver(delay: float) -> tuple[ThreadingHTTPServer, list[int]]:
    """A local OTLP/HTTP trace receiver answering each request after `delay` s; counts decoded spans."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

    received: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            req = pb.ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans))
            time.sleep(delay)
            body = pb.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def job_seconds(calls: int, mode: str, endpoint: str) -> float:
    """Wall seconds of one job under `mode` (none, simple, batch); the exporter is flushed after timing."""
    provider = None
    if mode != "none":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = telemetry.configure(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"), batch=mode == "batch")
    reg = Registry()
    for obj in (nap10, naps):
        reg.register(obj)
    try:
        start = time.perf_counter()
        res = anyio.run(Runtime(reg).run_job, JobSpec(graph="naps", inputs={"calls": calls}))
        seconds = time.perf_counter() - start
        assert res.status == "succeeded", res.error
    finally:
        if provider is not None:
            provider.shutdown()
        telemetry.reset()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay", type=float, default=0.2, help="seconds the collector takes to answer each request")
    ap.add_argument("--calls", type=int, default=10, help="tool calls per job")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="delay 0.05 s, 3 calls, 2 repeats")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    if args.quick:
        args.delay, args.calls, args.repeats = 0.05, 3, 2
    server, received = slow_receiver(args.delay)
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    times: dict[str, list[float]] = {m: [] for m in ("none", "simple", "batch")}
    job_seconds(args.calls, "none", endpoint)  # warm-up (imports, first event loop)
    for _ in range(args.repeats):  # interleaved, so machine noise hits every mode alike
        for mode in times:
            times[mode].append(job_seconds(args.calls, mode, endpoint))
    server.shutdown()
    base = statistics.median(times["none"])
    cols = ["span export", "job s (median)", "min", "max", "x no tracing"]
    rows = [[mode, statistics.median(t), min(t), max(t), statistics.median(t) / base] for mode, t in times.items()]
    title = f"job of {args.calls} tool calls, collector answering in {args.delay} s"
    print_table(title, cols, rows)
    print(f"spans received by the collector: {sum(received)}")
    if not args.no_write:
        cmd = f"python benchmarks/otlp_export.py --delay {args.delay} --calls {args.calls} --repeats {args.repeats}"
        body = (markdown_table(cols, rows) + f"\n\n{title}; {args.repeats} interleaved repeats (min and max beside the median). "
                "`simple` exports each span on the event loop as it ends (what `configure(\"otlp\")` did); `batch` is "
                "the BatchSpanProcessor `configure()` installs now, exporting from its own thread. Shared 2-core machine.")
        write_section("otlp_export", "Span export to a slow OTLP collector", body, cmd,
                      {"delay_s": args.delay, "calls": args.calls, "seconds": times})


if __name__ == "__main__":
    main()
