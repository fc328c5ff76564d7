"""Cost and token reports over span records (as `agentrt.otlp_json.read_spans` returns them). Pure.

`summarize` groups spans per graph, agent, tool and model. Leaf spans (LLM `chat` and `execute_tool`)
carry their own cost; graph and agent rows show the roll-up of the leaves under them, so rows of one
kind add up and rows of different kinds overlap (a graph's row includes its agents' and models').
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("graph", "agent", "tool", "model")


@dataclass(slots=True)
class Row:
    kind: str  # graph, agent, tool or model
    name: str
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0  # input tokens served from the KV cache (cache hits)
    output_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float = 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.input_tokens if self.input_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cache_hit_rate": self.cache_hit_rate}


def classify(span: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of a span for the summary, or None for spans that are not summarised (io, foreign)."""
    a = span["attributes"]
    op = a.get("gen_ai.operation.name")
    if op == "invoke_workflow":
        return "graph", str(a.get("agentrt.graph") or span["name"].removeprefix("invoke_workflow "))
    if op == "invoke_agent":
        return "agent", str(a.get("gen_ai.agent.name") or span["name"])
    if op == "execute_tool":
        return "tool", str(a.get("gen_ai.tool.name") or span["name"])
    if op in ("chat", "text_completion", "generate_content"):
        return "model", str(a.get("gen_ai.response.model") or a.get("gen_ai.request.model") or span["name"])
    return None


def leaf_cost(span: dict[str, Any]) -> float:
    """The span's own cost (LLM and tool calls only; 0 for parents, whose costs are roll-ups)."""
    a = span["attributes"]
    return float(a.get("gen_ai.usage.cost.amount", a.get("agentrt.cost.usd", 0.0)) or 0.0)


def _tokens(span: dict[str, Any], kind: str) -> tuple[int, int, int, float]:
    a = span["attributes"]
    if kind in ("graph", "agent"):
        return (int(a.get("agentrt.rollup.prompt_tokens", 0)), int(a.get("agentrt.rollup.cached_tokens", 0)),
                int(a.get("agentrt.rollup.generated_tokens", 0)), float(a.get("agentrt.rollup.cost_usd", 0.0)))
    return (int(a.get("gen_ai.usage.input_tokens", 0)), int(a.get("gen_ai.usage.cache_read.input_tokens", 0)),
            int(a.get("gen_ai.usage.output_tokens", 0)), leaf_cost(span))


def summarize(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """{"rows": [...] per kind then name, "totals": {...}} where totals sum the leaf spans only
    (each token and dollar counted once)."""
    rows: dict[tuple[str, str], Row] = {}
    totals = Row("total", "all leaves")
    for s in spans:
        key = classify(s)
        if key is None:
            continue
        row = rows.setdefault(key, Row(*key))
        inp, cached, outp, cost = _tokens(s, key[0])
        row.calls += 1
        row.errors += s["status"] == "ERROR"
        row.input_tokens += inp
        row.cached_tokens += cached
        row.output_tokens += outp
        row.seconds += (s["end_ns"] - s["start_ns"]) / 1e9
        row.cost_usd += cost
        if key[0] in ("tool", "model"):
            totals.calls += 1
            totals.input_tokens += inp
            totals.cached_tokens += cached
            totals.output_tokens += outp
            totals.seconds += (s["end_ns"] - s["start_ns"]) / 1e9  # call-seconds: concurrent calls overlap
            totals.cost_usd = math.fsum((totals.cost_usd, cost))
    ordered = sorted(rows.values(), key=lambda r: (KINDS.index(r.kind), -r.cost_usd, r.name))
    return {"rows": [r.to_dict() for r in ordered], "totals": totals.to_dict()}


def children_of(spans: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    """Spans by parent span id (None for roots, including spans whose parent is not in the file), by start time."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in sorted(spans, key=lambda s: s["start_ns"]):
        children.setdefault(s["parent_id"] if s["parent_id"] in ids else None, []).append(s)
    return children


def task_costs(spans: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """(label, USD) of every leaf task (LLM and tool calls) in start order: the per-task cost chart's bars."""
    out = []
    for s in sorted(spans, key=lambda s: s["start_ns"]):
        kind = classify(s)
        if kind is None or kind[0] not in ("tool", "model"):
            continue
        a = s["attributes"]
        task = a.get("agentrt.task.name")
        label = f"{task} ({kind[1]})" if task and task != kind[1] else kind[1]
        out.append((f"{label} {a.get('agentrt.task.id', a.get('gen_ai.tool.call.id', ''))}".strip(), leaf_cost(s)))
    return out
