"""`agentrt graphs` and `agentrt graph show NAME`: what is registered, and a graph's static structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from agentrt import cli_output as out

graph_app = typer.Typer(help="Inspect a registered graph.")


def list_graphs(registry: Any, json_out: bool) -> None:
    """One line per graph (name, inputs with types and defaults, description); --json: their JSON schemas."""
    from agentrt.api import _schema_of

    docs = [{"name": g.name, "description": g.description, "inputs": _schema_of(g.inputs_type)} for _, g in sorted(registry.graphs.items())]
    if json_out:
        out.result(docs)
        return
    for d in docs:
        props, required = d["inputs"].get("properties", {}), set(d["inputs"].get("required", []))
        params = [f"{k}: {_type(v)}" + ("" if k in required else f" = {v.get('default')!r}") for k, v in props.items()]
        out.line(f"{d['name']}({', '.join(params)})" + (f"  # {d['description']}" if d["description"] else ""))


def _type(schema: dict[str, Any]) -> str:
    if "type" in schema:
        t = schema["type"]
        return f"list[{_type(schema.get('items', {}))}]" if t == "array" else str(t)
    return "|".join(_type(s) for s in schema.get("anyOf", [])) or "any"


def show_graph(registry: Any, name: str, fmt: str) -> None:
    from agentrt.graph_shape import graph_shape

    if fmt not in ("mermaid", "dot"):
        raise typer.BadParameter(f"unknown format {fmt!r}; use mermaid or dot", param_hint="--format")
    shape = graph_shape(registry.get_graph(name), registry)
    out.line((shape.to_mermaid() if fmt == "mermaid" else shape.to_dot()).rstrip("\n"))


def register(app: typer.Typer, load_registry: Any, graphs_opt: Any, tools_opt: Any, json_opt: Any) -> None:
    """Add the commands to `app`; `load_registry(graphs, tools)` is the CLI's (folders found as for run)."""
    @app.command("graphs")
    def graphs_cmd(graphs: Path | None = graphs_opt, tools: Path | None = tools_opt, json_out: bool = json_opt) -> None:
        """List the registered graphs with their inputs (stdout; --json: JSON schemas)."""
        list_graphs(load_registry(graphs, tools), json_out)

    @graph_app.command("show")
    def graph_show(name: str = typer.Argument(..., help="a registered graph"),
                   fmt: str = typer.Option("mermaid", "--format", "-f", help="mermaid or dot"),
                   graphs: Path | None = graphs_opt, tools: Path | None = tools_opt) -> None:
        """Print the graph's static structure (agents, tools it names, LLM calls, interrupts) as Mermaid or DOT."""
        show_graph(load_registry(graphs, tools), name, fmt)

    app.add_typer(graph_app, name="graph")
