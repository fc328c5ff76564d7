"""OpenTelemetry spans for jobs, agents, tool calls and LLM calls (GenAI semantic conventions).

Span names and attributes follow the OpenTelemetry GenAI conventions: `invoke_workflow {graph}`,
`invoke_agent {agent}`, `execute_tool {tool}`, `chat {model}`. Resource use and money, for which no
standard attribute exists, go under `agentrt.*`. Cost is recorded on leaf spans only (LLM and tool
calls); parents carry roll-ups under `agentrt.rollup.*`, so a backend that sums leaf costs never
double counts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "agentrt"
_propagator = TraceContextTextMapPropagator()
_state = {"enabled": False}


def enabled() -> bool:
    """Whether `configure` installed a provider (spans are skipped entirely otherwise)."""
    return _state["enabled"]


def reset() -> None:
    """Turn tracing off again (tests and benchmarks)."""
    _state["enabled"] = False


class JsonlSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a file (what `agentrt trace` reads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_to_dict(s), default=str) for s in spans]
        with self._lock, self.path.open("a") as fh:
            fh.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def configure(exporter: str | SpanExporter | None = "none", *, batch: bool = False) -> TracerProvider | None:
    """Install a tracer provider. `exporter` is 'none', 'console', 'otlp', 'jsonl:PATH' or an exporter.

    Returns the provider (None when tracing is off). Raises ValueError for an unknown exporter name
    and ImportError naming the extra to install for OTLP.
    """
    if exporter in (None, "none"):
        return None
    if isinstance(exporter, str):
        exporter = _named_exporter(exporter)
    provider = TracerProvider()
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    _state["provider"] = provider  # type: ignore[assignment]
    _state["enabled"] = True
    return provider


def _named_exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name.startswith("jsonl:"):
        return JsonlSpanExporter(name.removeprefix("jsonl:"))
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ImportError("OTLP export needs `pip install opentelemetry-exporter-otlp-proto-http`") from exc
        return OTLPSpanExporter()
    raise ValueError(f"unknown exporter {name!r}: use none, console, otlp or jsonl:PATH")


def tracer(provider: TracerProvider | None = None) -> trace.Tracer:
    """The agentrt tracer of `provider`, else of the provider `configure` installed, else global."""
    chosen: Any = provider or _state.get("provider") or trace.get_tracer_provider()
    return chosen.get_tracer(TRACER_NAME)


def inject_traceparent() -> str | None:
    """The W3C traceparent of the current span (for a Submit message), or None."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def extract_context(traceparent: str | None) -> otel_context.Context | None:
    """The context a remote traceparent describes (the parent of the server's job span)."""
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


class _NoSpan:
    """What `span` yields when tracing is off: accepts and drops attributes, costs ~nothing."""

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def span(
    name: str, attributes: dict[str, Any], *, parent: otel_context.Context | None = None,
    provider: TracerProvider | None = None,
) -> Any:
    """A context manager opening a span (a no-op when tracing is off); an exception sets
    `error.type` and the error status, then propagates."""
    if not _state["enabled"] and provider is None:
        return _NO_SPAN
    return _span(name, attributes, parent, provider)


@contextmanager
def _span(name: str, attributes: dict[str, Any], parent: otel_context.Context | None, provider: TracerProvider | None) -> Iterator[Span]:
    with tracer(provider).start_as_current_span(
        name, context=parent, attributes=_clean(attributes), record_exception=False, set_status_on_exception=False
    ) as sp:
        try:
            yield sp
        except BaseException as exc:
            sp.set_attribute("error.type", type(exc).__qualname__)
            sp.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
            raise


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
