"""`agentrt trace show | summary | export`: read span files written with --trace (OTLP/JSON lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from agentrt import cli_output as out

trace_app = typer.Typer(help="Read span files written with --trace FILE (OTLP/JSON lines, as the OpenTelemetry Collector's file exporter writes).")

FILE = typer.Argument(..., help="span file (OTLP/JSON lines)")


def _spans(file: Path, job: str | None = None) -> list[dict[str, Any]]:
    from agentrt.otlp_json import read_spans

    spans = read_spans(file)
    if job is not None:
        spans = [s for s in spans if s["attributes"].get("agentrt.job.id") == job]
    return spans


def _label(s: dict[str, Any]) -> str:
    from rich.markup import escape

    a = s["attributes"]
    ms = (s["end_ns"] - s["start_ns"]) / 1e6
    parts = [f"[bold]{escape(s['name'])}[/bold] {ms:.1f} ms"]
    if "gen_ai.usage.input_tokens" in a:
        parts.append(f"in {a['gen_ai.usage.input_tokens']} (cached {a.get('gen_ai.usage.cache_read.input_tokens', 0)}) "
                     f"out {a.get('gen_ai.usage.output_tokens', 0)}")
    cost = a.get("agentrt.cost.usd", a.get("agentrt.rollup.cost_usd"))
    if cost is not None:
        parts.append(f"${cost:.2e}" + (" (roll-up)" if "agentrt.cost.usd" not in a else ""))
    if s["status"] == "ERROR":
        parts.append(f"[red]{escape(str(a.get('error.type', 'error')))}[/red]")
    return "  ".join(parts)


@trace_app.command("show")
def trace_show(file: Path = FILE, job: str | None = typer.Option(None, help="only this job id")) -> None:
    """Print each job's span tree with tokens and cost per task (on stderr, like every table)."""
    from rich.tree import Tree

    from agentrt.trace_report import children_of

    spans = _spans(file, job)
    children = children_of(spans)
    console = out.err

    def add(node: Any, s: dict[str, Any]) -> None:
        branch = node.add(_label(s))
        for c in children.get(s["span_id"], []):
            add(branch, c)

    for root in children.get(None, []):
        tree = Tree(_label(root))
        for c in children.get(root["span_id"], []):
            add(tree, c)
        console.print(tree)


@trace_app.command("summary")
def trace_summary(file: Path = FILE, job: str | None = typer.Option(None, help="only this job id"),
                  json_out: bool = typer.Option(False, "--json", help="one JSON document on stdout instead of the table")) -> None:
    """Per graph, agent, tool and model: calls, tokens, cache hits, seconds and $.

    A table on stderr, or --json on stdout. Graph and agent rows
    are roll-ups of the LLM and tool calls under them; the total counts each leaf once."""
    from agentrt.trace_report import summarize

    summary = summarize(_spans(file, job))
    if json_out:
        out.result(summary)
        return
    cols = ["kind", "name", "calls", "errors", "input tok", "cached tok", "cache hit", "output tok", "seconds", "cost $"]
    table = out.new_table(f"trace summary: {file}", cols, numeric=set(cols[2:]))
    for r in summary["rows"] + [summary["totals"]]:
        table.add_row(r["kind"], r["name"], str(r["calls"]), str(r["errors"]), str(r["input_tokens"]), str(r["cached_tokens"]),
                      f"{r['cache_hit_rate']:.0%}", str(r["output_tokens"]), f"{r['seconds']:.3f}", f"{r['cost_usd']:.3e}")
    out.table(table)


@trace_app.command("export")
def trace_export(file: Path = FILE, html: Path = typer.Option(..., "--html", help="write a self-contained HTML page here"),
                 job: str | None = typer.Option(None, help="only this job id")) -> None:
    """Write an HTML page with the span tree and a per-task cost chart.

    The page is self-contained: no scripts, no external files."""
    from agentrt.trace_html import render

    spans = _spans(file, job)
    html.write_text(render(spans, f"agentrt trace: {file.name}" + (f" (job {job})" if job else "")))
    out.message(f"wrote {html} ({len(spans)} spans)")
