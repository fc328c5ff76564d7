"""OpenTelemetry spans and metrics for jobs, agents, tool calls and LLM calls (GenAI semantic conventions).

Span names and attributes follow the OpenTelemetry GenAI conventions: `invoke_workflow {graph}`,
`invoke_agent {agent}`, `execute_tool {tool}`, `chat {model}`. Resource use and money, for which no
standard attribute exists, go under `agentrt.*`. Cost is recorded on leaf spans only (LLM and tool
calls); parents carry roll-ups under `agentrt.rollup.*`, so a backend that sums leaf costs never
double counts; the proposed `gen_ai.usage.cost.*` attributes sit on inference (`chat`) spans only.

Where spans go, in order: the provider `configure()` installed; else the application's global tracer
provider when it set one (agentrt then makes spans without being configured); else nowhere (a no-op
costing ~nothing). `configure()` follows the SDK's environment variables (see `TelemetryConfig`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agentrt.otlp_json import JsonlSpanExporter

__all__ = ["JsonlSpanExporter", "TelemetryConfig", "configure", "enabled", "reset", "span", "tracer"]

TRACER_NAME = "agentrt"
DEFAULT_SERVICE_NAME = "agentrt"
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_propagator = TraceContextTextMapPropagator()
_state: dict[str, Any] = {"enabled": False, "provider": None, "meter_provider": None, "instruments": None}
_TRUE = ("1", "true", "yes", "on")


@dataclass(slots=True, frozen=True)
class TelemetryConfig:
    """What the standard OpenTelemetry environment variables ask for (read by `from_env` only).

    traces_exporter: OTEL_TRACES_EXPORTER, `otlp`, `console` or `none` (the CLI's --trace overrides it).
    protocol: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL, `http/protobuf` or `grpc`.
    metrics_exporter: OTEL_METRICS_EXPORTER, `otlp`, `console` or `none`.
    capture_content: OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: record prompts and completions
    (gen_ai.input.messages / gen_ai.output.messages) on chat spans; off by default.
    Endpoint (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT), headers, timeout, OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES and OTEL_BSP_* are read by the SDK and its exporters themselves.
    OTEL_SDK_DISABLED=true turns everything off.
    """

    traces_exporter: str = "none"
    protocol: str = "http/protobuf"
    metrics_exporter: str = "none"
    capture_content: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in ("http/protobuf", "grpc"):
            raise ValueError(f"OTLP protocol (OTEL_EXPORTER_OTLP_PROTOCOL) must be http/protobuf or grpc, got {self.protocol!r}")
        for name, env in (("traces_exporter", "OTEL_TRACES_EXPORTER"), ("metrics_exporter", "OTEL_METRICS_EXPORTER")):
            if getattr(self, name) not in ("otlp", "console", "none"):
                raise ValueError(f"{name} ({env}) must be otlp, console or none, got {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> TelemetryConfig:
        e = os.environ if env is None else env
        if (e.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":  # the SDK's switch: everything off
            return cls()
        protocol = e.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or e.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
        return cls(traces_exporter=(e.get("OTEL_TRACES_EXPORTER") or "none").strip().lower(), protocol=protocol.strip(),
                   metrics_exporter=(e.get("OTEL_METRICS_EXPORTER") or "none").strip().lower(),
                   capture_content=(e.get(CAPTURE_CONTENT_ENV) or "").strip().lower() in _TRUE)


def resource() -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), service.name `agentrt` unless set."""
    res = Resource.create()
    if str(res.attributes.get("service.name", "")).startswith("unknown_service"):
        res = res.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    return res


def enabled() -> bool:
    """Whether spans are made: `configure` installed a provider or the application set a global one."""
    return _state["enabled"] or _global_sdk_provider() is not None


# Looking up the global providers costs ~3 us (environment reads), too much for every task: the answer
# is cached for a moment, and for good once an application provider is found (it can be set only once).
_RECHECK_S = 0.5
_globals: dict[str, Any] = {"tracer": None, "tracer_until": 0.0, "meter": False, "meter_until": 0.0}


def _global_sdk_provider() -> Any:
    now = time.monotonic()
    if now >= _globals["tracer_until"]:
        provider = trace.get_tracer_provider()
        found = None if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)) else provider
        _globals.update(tracer=found, tracer_until=float("inf") if found is not None else now + _RECHECK_S)
    return _globals["tracer"]


def _global_meter_provider_set() -> bool:
    now = time.monotonic()
    if now >= _globals["meter_until"]:
        mp = metrics.get_meter_provider()
        found = not isinstance(mp, metrics.NoOpMeterProvider) and type(mp).__name__ != "_ProxyMeterProvider"
        _globals.update(meter=found, meter_until=float("inf") if found else now + _RECHECK_S)
    return bool(_globals["meter"])


def reset() -> None:
    """Forget what `configure` installed (tests and benchmarks); does not shut it down."""
    _state.update(enabled=False, provider=None, meter_provider=None, instruments=None)
    _globals.update(tracer_until=0.0, meter_until=0.0)


def configure(
    exporter: str | SpanExporter | None = None, *, batch: bool = True, metric_reader: MetricReader | None = None,
    config: TelemetryConfig | None = None,
) -> TracerProvider | None:
    """Install agentrt's tracer (and meter) provider; returns it, or None when tracing stays off.

    `exporter`: 'none', 'console', 'otlp', 'jsonl:PATH' (OTLP/JSON lines) or a SpanExporter; None
    means what OTEL_TRACES_EXPORTER says. Spans go through a BatchSpanProcessor unless `batch=False`.
    `metric_reader` (or OTEL_METRICS_EXPORTER) enables the GenAI metrics. Raises ValueError for an
    unknown exporter name and ImportError naming the extra to install for OTLP.
    """
    config = config or TelemetryConfig.from_env()
    _state["capture_content"] = config.capture_content
    _configure_metrics(metric_reader, config)
    if exporter is None:
        exporter = config.traces_exporter
    if isinstance(exporter, str) and exporter == "none":
        return None
    if isinstance(exporter, str):
        exporter = _named_exporter(exporter, config.protocol)
    provider = TracerProvider(resource=resource())
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _state.update(provider=provider, enabled=True)
    return provider


def shutdown() -> None:
    """Flush and shut down what `configure` installed (the CLI calls it before exiting)."""
    for key in ("provider", "meter_provider"):
        if _state.get(key) is not None:
            _state[key].shutdown()
    reset()


def _named_exporter(name: str, protocol: str = "http/protobuf") -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name.startswith("jsonl:"):
        return JsonlSpanExporter(name.removeprefix("jsonl:"))
    if name == "otlp":
        try:
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

                return Grpc()
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        except ImportError as exc:
            raise ImportError("OTLP export needs the otlp extra: pip install 'agentrt[otlp]'") from exc
    raise ValueError(f"unknown exporter {name!r}: use none, console, otlp or jsonl:PATH")


def _configure_metrics(reader: MetricReader | None, config: TelemetryConfig) -> None:
    if reader is None and config.metrics_exporter != "none":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

        if config.metrics_exporter == "console":
            exporter: Any = ConsoleMetricExporter()
        elif config.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetrics,
            )

            exporter = GrpcMetrics()
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            exporter = OTLPMetricExporter()
        reader = PeriodicExportingMetricReader(exporter)
    if reader is not None:
        _state.update(meter_provider=MeterProvider(metric_readers=[reader], resource=resource()), instruments=None)


def tracer(provider: TracerProvider | None = None) -> trace.Tracer:
    """The agentrt tracer of `provider`, else of the provider `configure` installed, else global."""
    chosen: Any = provider or _state.get("provider") or trace.get_tracer_provider()
    return chosen.get_tracer(TRACER_NAME)


def capture_content() -> bool:
    """Whether chat spans record message content (opt-in, see TelemetryConfig.capture_content)."""
    if "capture_content" not in _state:
        _state["capture_content"] = TelemetryConfig.from_env().capture_content
    return bool(_state["capture_content"])


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

    def set_status(self, status: Any) -> None:
        return None

    def is_recording(self) -> bool:
        return False

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()
NO_SPAN = _NO_SPAN  # for callers that skip building a span's attributes when tracing is off (`enabled()`)


def span(
    name: str, attributes: dict[str, Any], *, parent: otel_context.Context | None = None,
    provider: TracerProvider | None = None,
) -> Any:
    """A context manager opening a span (a no-op when tracing is off); an exception sets
    `error.type` and the error status, then propagates."""
    if provider is None and not enabled():
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


def mark_error(sp: Any, error_type: str, description: str) -> None:
    """Give a span the error status with a description (e.g. a cancelled job's root span)."""
    sp.set_attribute("error.type", error_type)
    sp.set_status(Status(StatusCode.ERROR, description))


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


def meter_provider() -> Any:
    """The meter provider `configure` installed, else the global one (a no-op unless the app set one)."""
    return _state.get("meter_provider") or metrics.get_meter_provider()


def instruments() -> dict[str, Any]:
    """agentrt's metric instruments (created once per meter provider)."""
    provider = meter_provider()
    cached = _state.get("instruments")
    if cached is not None and cached[0] is provider:
        return cached[1]
    meter = provider.get_meter(TRACER_NAME)
    made = {
        "token_usage": meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                              description="Number of input and output tokens used per inference call"),
        "chat": meter.create_histogram("gen_ai.client.operation.duration", unit="s", description="Duration of inference calls"),
        "execute_tool": meter.create_histogram("gen_ai.execute_tool.duration", unit="s", description="Duration of tool executions"),
        # The conventions record workflows on the agent metric too (gen_ai.operation.name tells them apart).
        "invoke_agent": meter.create_histogram("gen_ai.invoke_agent.duration", unit="s",
                                               description="Duration of agent and workflow invocations"),
        "tokens": meter.create_counter("agentrt.tokens", unit="{token}", description="Tokens processed, by gen_ai.token.type"),
        "cost": meter.create_counter("agentrt.cost", unit="USD", description="Cost of leaf operations (LLM and tool calls)"),
    }
    _state["instruments"] = (provider, made)
    return made


def metrics_enabled() -> bool:
    """Whether metrics are recorded: `configure` got a reader (or OTEL_METRICS_EXPORTER) or the application
    set a global meter provider. Otherwise the metric calls on the task path cost ~nothing."""
    return _state.get("meter_provider") is not None or _global_meter_provider_set()


_DURATION_METRIC = {"chat": "chat", "execute_tool": "execute_tool", "invoke_agent": "invoke_agent", "invoke_workflow": "invoke_agent"}


def timed_operation(attributes: dict[str, Any]) -> Any:
    """A context manager recording the duration of its block, labelled with `attributes` (plus
    `error.type` when the block raises), on the histogram the GenAI conventions give its
    `gen_ai.operation.name`: gen_ai.client.operation.duration (chat), gen_ai.execute_tool.duration,
    gen_ai.invoke_agent.duration (agents and workflows). A no-op when metrics are off."""
    if not metrics_enabled():
        return _NO_SPAN
    return _timed(attributes)


@contextmanager
def _timed(attributes: dict[str, Any]) -> Iterator[dict[str, Any]]:
    start = time.perf_counter()
    labels = dict(attributes)
    try:
        yield labels
    except BaseException as exc:
        labels["error.type"] = type(exc).__qualname__
        raise
    finally:
        instruments()[_DURATION_METRIC[labels["gen_ai.operation.name"]]].record(time.perf_counter() - start, _clean(labels))


PROVIDER_NAME = "agentrt"  # gen_ai.provider.name of the embedded engine (not a provider the conventions list)
COST_SOURCE = "local"  # gen_ai.usage.cost.source: computed here from the cost model, not priced by a provider


def chat_attributes(sp: Any, gen: Any, model: str, provider: str, messages: list[dict[str, Any]] | None) -> None:
    """Set the GenAI response attributes of an inference span and record its token and cost metrics.

    `gen` is the call's Generation; `messages` the request's messages (recorded, with the output,
    only when content capture is on)."""
    u = gen.usage
    attrs = {
        "gen_ai.provider.name": provider, "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": u.prompt_tokens, "gen_ai.usage.output_tokens": u.generated_tokens,
        "gen_ai.usage.cache_read.input_tokens": u.cached_tokens,
        # The embedded engine's chat templates have no reasoning section: every output token is an answer token.
        "gen_ai.usage.reasoning.output_tokens": 0,
        "gen_ai.response.finish_reasons": [gen.finish_reason],
        "gen_ai.usage.cost.amount": u.cost_usd, "gen_ai.usage.cost.currency": "USD", "gen_ai.usage.cost.source": COST_SOURCE,
    }
    if capture_content():
        attrs["gen_ai.input.messages"] = json.dumps([_message(m) for m in messages or []])
        attrs["gen_ai.output.messages"] = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": gen.text}],
                                                        "finish_reason": gen.finish_reason}])
    for key, value in attrs.items():
        sp.set_attribute(key, value)
    if not metrics_enabled():
        return
    labels = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model,
              "gen_ai.response.model": model}
    inst = instruments()
    for kind, n in (("input", u.prompt_tokens), ("output", u.generated_tokens)):
        inst["token_usage"].record(n, {**labels, "gen_ai.token.type": kind})
        inst["tokens"].add(n, {**labels, "gen_ai.token.type": kind})
    inst["cost"].add(u.cost_usd, {**labels, "gen_ai.usage.cost.currency": "USD"})


def tool_cost(tool: str, usd: float) -> None:
    """Count a tool call's cost (the leaf cost of an execute_tool span)."""
    if not metrics_enabled():
        return
    instruments()["cost"].add(usd, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "gen_ai.usage.cost.currency": "USD"})


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI-format message in the GenAI conventions' message shape (role + parts)."""
    content = m.get("content")
    parts: list[dict[str, Any]] = [{"type": "text", "content": content}] if isinstance(content, str) and content else []
    for call in m.get("tool_calls") or []:
        fn = call.get("function", call)
        parts.append({"type": "tool_call", "id": call.get("id"), "name": fn.get("name"), "arguments": fn.get("arguments")})
    if m.get("role") == "tool":
        parts = [{"type": "tool_call_response", "id": m.get("tool_call_id"), "response": content}]
    return {"role": m.get("role", "user"), "parts": parts}
