"""`agentrt graphs`, `agentrt graph show` and `agentrt --version`: what a new user inspects first."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from agentrt import Registry
from agentrt.cli import app
from agentrt.graph_shape import graph_shape

GRAPHS = Path(__file__).parent / "server_graphs"
runner = CliRunner()


def test_graphs_lists_each_graph_with_its_inputs() -> None:
    res = runner.invoke(app, ["graphs", "--graphs", str(GRAPHS), "--tools", str(GRAPHS)])
    assert res.exit_code == 0, res.output
    assert "sleepy(seconds: number = 0.5, tag: string = '')" in res.stdout
    doc = runner.invoke(app, ["graphs", "--json", "--graphs", str(GRAPHS), "--tools", str(GRAPHS)])
    side = next(g for g in json.loads(doc.stdout) if g["name"] == "side_effects")
    assert side["inputs"]["required"] == ["log", "gate"] and side["inputs"]["properties"]["log"] == {"type": "string"}


def test_graph_show_draws_agents_tools_llm_calls_and_interrupts() -> None:
    res = runner.invoke(app, ["graph", "show", "airline_support"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("flowchart TD") and "graph_airline_support --> agent_tool_loop" in res.stdout
    assert "graph_airline_support --> tool_cancel_reservation" in res.stdout and "interrupt (human input)" in res.stdout
    dot = runner.invoke(app, ["graph", "show", "approval", "-f", "dot", "--graphs", str(GRAPHS), "--tools", str(GRAPHS)])
    assert dot.stdout.startswith("digraph") and "graph_approval -> tool_append_line;" in dot.stdout
    assert "graph_approval -> graph_approval__interrupt;" in dot.stdout
    bad = runner.invoke(app, ["graph", "show", "nope", "--graphs", str(GRAPHS), "--tools", str(GRAPHS)])
    assert bad.exit_code == 1 and "unknown graph 'nope'" in bad.stderr


def test_graph_shape_finds_the_tool_a_graph_calls() -> None:
    reg = Registry()
    reg.load_path(GRAPHS)
    shape = graph_shape(reg.get_graph("sleepy"), reg)
    assert ("graph_sleepy", "tool_nap") in shape.edges


def test_version_prints_one_line() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.startswith("agentrt ")
