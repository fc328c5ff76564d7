"""A self-contained HTML page of a trace: the span tree (collapsible, with tokens, cost and status) and
a per-task cost chart (inline SVG). No scripts, no external resources: it opens offline."""

from __future__ import annotations

from html import escape
from typing import Any

from agentrt.trace_report import children_of, summarize, task_costs

_CSS = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
ul.tree,ul.tree ul{list-style:none;padding-left:1.2em;margin:0}
details>summary{cursor:pointer}
.span{font-family:ui-monospace,monospace}.ms{color:#666}.cost{color:#05a}.err{color:#b00;font-weight:bold}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}
svg text{font:12px ui-monospace,monospace}
"""


def _label(s: dict[str, Any]) -> str:
    a = s["attributes"]
    ms = (s["end_ns"] - s["start_ns"]) / 1e6
    parts = [f'<span class="span">{escape(s["name"])}</span>', f'<span class="ms">{ms:.1f} ms</span>']
    if "gen_ai.usage.input_tokens" in a:
        parts.append(escape(f"in {a['gen_ai.usage.input_tokens']} (cached {a.get('gen_ai.usage.cache_read.input_tokens', 0)}) "
                            f"out {a.get('gen_ai.usage.output_tokens', 0)}"))
    if "agentrt.cost.usd" in a:
        parts.append(f'<span class="cost">${a["agentrt.cost.usd"]:.3e}</span>')
    elif "agentrt.rollup.cost_usd" in a:
        parts.append(f'<span class="cost">${a["agentrt.rollup.cost_usd"]:.3e} (roll-up)</span>')
    if s["status"] == "ERROR":
        parts.append(f'<span class="err">{escape(str(a.get("error.type", "error")))}: {escape(s.get("status_message", ""))}</span>')
    return " ".join(parts)


def _tree(span: dict[str, Any], children: dict[str | None, list[dict[str, Any]]]) -> str:
    kids = children.get(span["span_id"], [])
    attrs = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in sorted(span["attributes"].items()))
    body = f'<details><summary>{_label(span)}</summary><table class="attrs">{attrs}</table></details>'
    sub = "".join(_tree(c, children) for c in kids)
    return f'<li data-span-id="{escape(span["span_id"])}">{body}' + (f"<ul>{sub}</ul>" if sub else "") + "</li>"


def cost_chart(bars: list[tuple[str, float]], width: int = 720) -> str:
    """An inline SVG horizontal bar chart, one bar per task, bar length proportional to its USD."""
    if not bars:
        return "<p>No LLM or tool calls in this trace.</p>"
    row, label_w = 22, 300
    top = max(c for _, c in bars) or 1.0
    items = []
    for i, (label, cost) in enumerate(bars):
        y = i * row
        w = max(1.0, (width - label_w - 110) * cost / top)
        items.append(f'<g class="bar" data-task="{escape(label)}" data-cost="{cost!r}">'
                     f'<text x="0" y="{y + 15}">{escape(label[:40])}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="#4a7fd4"><title>{escape(label)}: ${cost:.3e}</title></rect>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">${cost:.2e}</text></g>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(bars) * row}" role="img" '
            f'aria-label="cost per task">{"".join(items)}</svg>')


def _summary_table(summary: dict[str, Any]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("kind", "name", "calls", "input tok", "cached tok", "output tok", "seconds", "cost $"))
    rows = "".join(
        f'<tr><td>{r["kind"]}</td><td>{escape(r["name"])}</td><td>{r["calls"]}</td><td>{r["input_tokens"]}</td>'
        f'<td>{r["cached_tokens"]}</td><td>{r["output_tokens"]}</td><td>{r["seconds"]:.3f}</td><td>{r["cost_usd"]:.3e}</td></tr>'
        for r in summary["rows"])
    t = summary["totals"]
    return (f'<table id="summary"><tr>{head}</tr>{rows}<tr><td>total</td><td>leaf calls</td><td>{t["calls"]}</td><td>{t["input_tokens"]}</td>'
            f'<td>{t["cached_tokens"]}</td><td>{t["output_tokens"]}</td><td></td><td>{t["cost_usd"]:.3e}</td></tr></table>')


def render(spans: list[dict[str, Any]], title: str) -> str:
    """The whole page for these span records."""
    children = children_of(spans)
    tree = "".join(_tree(root, children) for root in children.get(None, []))
    summary = summarize(spans)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{_CSS}</style></head>'
            f"<body><h1>{escape(title)}</h1>"
            f'<p>{len(spans)} spans; leaf cost ${summary["totals"]["cost_usd"]:.6f}; '
            f'{summary["totals"]["input_tokens"]} input tokens ({summary["totals"]["cached_tokens"]} cached), '
            f'{summary["totals"]["output_tokens"]} output tokens.</p>'
            f'<h2>Cost per task</h2><div id="cost-chart">{cost_chart(task_costs(spans))}</div>'
            f"<h2>Summary</h2>{_summary_table(summary)}"
            f'<h2>Span tree</h2><ul class="tree" id="span-tree">{tree}</ul></body></html>\n')
