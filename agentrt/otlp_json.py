"""Span files in the OTLP/JSON encoding, one `ExportTraceServiceRequest` per line.

This is the layout of the OpenTelemetry Collector's file exporter (and what its `otlpjsonfile`
receiver reads): `{"resourceSpans": [{"resource": ..., "scopeSpans": [{"scope": ..., "spans": [...]}]}]}`,
with trace and span ids as lowercase hex, 64-bit integers and nanosecond times as decimal strings and
enums as integers, as the OTLP specification's JSON mapping requires. `agentrt trace` reads it back
into flat span records.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from agentrt.errors import AgentrtError

_STATUS_CODES = {"UNSET": 0, "OK": 1, "ERROR": 2}
_STATUS_NAMES = {v: k for k, v in _STATUS_CODES.items()}
_KINDS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}


class TraceFileError(AgentrtError):
    """A span file is missing or is not OTLP/JSON lines; names the file and the line."""


def any_value(value: Any) -> dict[str, Any]:
    """An attribute value as an OTLP/JSON AnyValue."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def from_any_value(value: dict[str, Any]) -> Any:
    """The Python value of an OTLP/JSON AnyValue (inverse of `any_value`)."""
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [from_any_value(v) for v in value["arrayValue"].get("values", [])]
    for key in ("stringValue", "doubleValue", "boolValue"):
        if key in value:
            return value[key]
    return None


def _attributes(attrs: Any) -> list[dict[str, Any]]:
    return [{"key": k, "value": any_value(v)} for k, v in dict(attrs or {}).items()]


def _span(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.context
    assert ctx is not None  # a finished SDK span always has its context
    out: dict[str, Any] = {
        "traceId": f"{ctx.trace_id:032x}", "spanId": f"{ctx.span_id:016x}", "name": span.name,
        "kind": _KINDS.get(span.kind.name, 1),
        "startTimeUnixNano": str(span.start_time or 0), "endTimeUnixNano": str(span.end_time or 0),
        "attributes": _attributes(span.attributes),
        "status": {"code": _STATUS_CODES[span.status.status_code.name]},
    }
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    if span.status.description:
        out["status"]["message"] = span.status.description
    if span.events:
        out["events"] = [{"name": e.name, "timeUnixNano": str(e.timestamp), "attributes": _attributes(e.attributes)} for e in span.events]
    return out


def encode_spans(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """One OTLP/JSON ExportTraceServiceRequest holding `spans`, grouped by resource and scope."""
    groups: dict[int, tuple[Any, dict[tuple[str, str], list[dict[str, Any]]]]] = {}
    for s in spans:
        _, scopes = groups.setdefault(id(s.resource), (s.resource, {}))
        scope = s.instrumentation_scope
        scopes.setdefault((scope.name if scope else "", (scope.version or "") if scope else ""), []).append(_span(s))
    return {"resourceSpans": [
        {"resource": {"attributes": _attributes(resource.attributes)},
         "scopeSpans": [{"scope": {"name": n, **({"version": v} if v else {})}, "spans": items} for (n, v), items in scopes.items()]}
        for resource, scopes in groups.values()
    ]}


class JsonlSpanExporter(SpanExporter):
    """Appends one OTLP/JSON line per export batch to a file (what `agentrt trace` reads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        line = json.dumps(encode_spans(spans), separators=(",", ":"))
        with self._lock, self.path.open("a") as fh:
            fh.write(line + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _flat(span: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    status = span.get("status") or {}
    return {
        "name": span["name"], "trace_id": span["traceId"], "span_id": span["spanId"], "parent_id": span.get("parentSpanId") or None,
        "start_ns": int(span["startTimeUnixNano"]), "end_ns": int(span["endTimeUnixNano"]),
        "status": _STATUS_NAMES.get(int(status.get("code", 0)), "UNSET"), "status_message": status.get("message", ""),
        "attributes": {a["key"]: from_any_value(a["value"]) for a in span.get("attributes", [])}, "resource": resource,
    }


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Flat span records (name, ids, start_ns/end_ns, status, attributes, resource) of an OTLP/JSON
    lines file. Raises TraceFileError naming the file (and line) when it is missing or malformed."""
    if not path.is_file():
        raise TraceFileError(f"no such trace file: {path}")
    out: list[dict[str, Any]] = []
    for num, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            for rs in json.loads(line)["resourceSpans"]:
                resource = {a["key"]: from_any_value(a["value"]) for a in rs.get("resource", {}).get("attributes", [])}
                for ss in rs.get("scopeSpans", []):
                    out.extend(_flat(s, resource) for s in ss.get("spans", []))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TraceFileError(f"{path}:{num}: not an OTLP/JSON trace line ({type(exc).__name__}: {exc})") from None
    return out
