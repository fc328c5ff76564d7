"""`agentrt trace summary` and `agentrt trace export --html` over an OTLP/JSON span file: per graph,
agent, tool and model sums that count each leaf once, and a self-contained page checked by parsing it."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentrt import telemetry
from agentrt.cli import app

runner = CliRunner()

# Two LLM calls (one with a cache hit) and two tool calls under one agent under one graph.
CHATS = [(100, 0, 10, 0.002), (120, 96, 12, 0.001)]
TOOLS = [("lookup", 0.0005), ("lookup", 0.00025)]


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    """A span file written by agentrt's exporter, shaped as a job with an agent, LLM and tool calls."""
    file = tmp_path / "spans.jsonl"
    telemetry.configure(f"jsonl:{file}")
    try:
        total = math.fsum([c[3] for c in CHATS] + [t[1] for t in TOOLS])
        rollup = {"agentrt.rollup": True, "agentrt.rollup.prompt_tokens": 220, "agentrt.rollup.cached_tokens": 96,
                  "agentrt.rollup.generated_tokens": 22, "agentrt.rollup.cost_usd": total}
        with telemetry.span("invoke_workflow support", {"gen_ai.operation.name": "invoke_workflow", "agentrt.graph": "support",
                                                        "agentrt.job.id": "job-1", **rollup}):
            with telemetry.span("invoke_agent helper", {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper",
                                                        "agentrt.job.id": "job-1", **rollup}):
                for i, (inp, cached, outp, cost) in enumerate(CHATS):
                    with telemetry.span("chat tiny", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "tiny",
                                                      "gen_ai.response.model": "tiny", "gen_ai.usage.input_tokens": inp,
                                                      "gen_ai.usage.cache_read.input_tokens": cached, "gen_ai.usage.output_tokens": outp,
                                                      "gen_ai.usage.cost.amount": cost, "agentrt.cost.usd": cost,
                                                      "agentrt.task.name": "planner", "agentrt.task.id": f"t{i}", "agentrt.job.id": "job-1"}):
                        pass
                for i, (tool, cost) in enumerate(TOOLS):
                    with telemetry.span(f"execute_tool {tool}", {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                                                                 "gen_ai.tool.call.id": f"c{i}", "agentrt.cost.usd": cost,
                                                                 "agentrt.job.id": "job-1"}):
                        pass
    finally:
        telemetry.shutdown()
    return file


def test_summary_json_sums_per_graph_agent_tool_and_model(trace_file: Path) -> None:
    res = runner.invoke(app, ["trace", "summary", str(trace_file), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rows = {(r["kind"], r["name"]): r for r in doc["rows"]}
    assert set(rows) == {("graph", "support"), ("agent", "helper"), ("model", "tiny"), ("tool", "lookup")}
    model = rows["model", "tiny"]
    assert (model["calls"], model["input_tokens"], model["cached_tokens"], model["output_tokens"]) == (2, 220, 96, 22)
    assert math.isclose(model["cost_usd"], 0.003) and math.isclose(model["cache_hit_rate"], 96 / 220)
    assert rows["tool", "lookup"]["calls"] == 2 and math.isclose(rows["tool", "lookup"]["cost_usd"], 0.00075)
    assert math.isclose(rows["graph", "support"]["cost_usd"], 0.00375) and rows["graph", "support"]["cached_tokens"] == 96
    totals = doc["totals"]  # each leaf once: graph and agent roll-ups are not added again
    assert math.isclose(totals["cost_usd"], 0.00375) and totals["calls"] == 4 and totals["input_tokens"] == 220


def test_summary_table_goes_to_stderr_with_every_row(trace_file: Path) -> None:
    res = runner.invoke(app, ["trace", "summary", str(trace_file)])
    assert res.exit_code == 0 and res.stdout == ""
    for name in ("support", "helper", "tiny", "lookup", "44%"):
        assert name in res.stderr


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.depth_of: dict[str, int] = {}
        self._ul = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "ul":
            self._ul += 1
        if tag == "li" and a.get("data-span-id"):
            self.depth_of[str(a["data-span-id"])] = self._ul

    def handle_endtag(self, tag: str) -> None:
        if tag == "ul":
            self._ul -= 1


def test_html_export_is_a_self_contained_page_with_the_tree_and_a_cost_chart(trace_file: Path, tmp_path: Path) -> None:
    from agentrt.otlp_json import read_spans

    out = tmp_path / "trace.html"
    res = runner.invoke(app, ["trace", "export", str(trace_file), "--html", str(out)])
    assert res.exit_code == 0, res.output
    page = _Page()
    page.feed(out.read_text())
    spans = {s["span_id"]: s for s in read_spans(trace_file)}
    assert set(page.depth_of) == set(spans)  # every span in the tree, nested as in the trace
    for span_id, s in spans.items():
        parent = s["parent_id"]
        assert page.depth_of[span_id] == (1 if parent is None else page.depth_of[parent] + 1)
    bars = [a for tag, a in page.tags if tag == "g" and a.get("class") == "bar"]
    assert len(bars) == 4 and math.isclose(sum(float(str(b["data-cost"])) for b in bars), 0.00375)
    assert any("planner" in str(b["data-task"]) for b in bars)
    assert not [t for t, a in page.tags if t == "script" or (t in ("link", "img") and (a.get("href") or a.get("src")))]


@pytest.mark.parametrize("content, says", [("not json\n", ":1: not an OTLP/JSON trace line"), (None, "no such trace file")])
def test_a_bad_trace_file_is_a_one_line_error(tmp_path: Path, content: Any, says: str) -> None:
    file = tmp_path / "bad.jsonl"
    if content is not None:
        file.write_text(content)
    res = runner.invoke(app, ["trace", "summary", str(file)])
    assert res.exit_code == 1 and res.stderr.startswith("agentrt: error: ") and says in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
