"""The static structure of a graph, known before it runs: which agents it starts, which tools it can
call, where it calls the model or asks a human. Read from the source with `ast`: in each function
(the graph's, then every agent it names, recursively), a name bound to a Tool or a list of Tools is a
tool it may call, a name bound to an Agent an agent it runs, `ctx.generate(...)` an LLM call and
`ctx.interrupt(...)` a question to a human. Branches and loops are not evaluated: this is what the
graph *can* do. Pure (no I/O but reading source); rendered as Mermaid or DOT.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any

from agentrt.api import Agent, Graph, Registry, Tool


@dataclass(slots=True)
class Shape:
    nodes: dict[str, str] = field(default_factory=dict)  # id -> label
    edges: list[tuple[str, str]] = field(default_factory=list)

    def add(self, src: str, dst: str, label: str) -> None:
        self.nodes.setdefault(dst, label)
        if (src, dst) not in self.edges:
            self.edges.append((src, dst))

    def to_mermaid(self) -> str:
        lines = ["flowchart TD"] + [f'    {n}["{label}"]' for n, label in self.nodes.items()]
        return "\n".join(lines + [f"    {a} --> {b}" for a, b in self.edges]) + "\n"

    def to_dot(self) -> str:
        lines = ["digraph graph_shape {", "    rankdir=TB;"] + [f'    {n} [label="{label}"];' for n, label in self.nodes.items()]
        return "\n".join(lines + [f"    {a} -> {b};" for a, b in self.edges] + ["}"]) + "\n"


def graph_shape(graph: Graph, registry: Registry) -> Shape:
    """The agents, tools, LLM calls and interrupts reachable from `graph` (see the module doc)."""
    shape = Shape()
    root = _id("graph", graph.name)
    shape.nodes[root] = f"graph {graph.name}"
    _visit(graph.fn, root, shape, registry, seen={root})
    return shape


def _id(kind: str, name: str) -> str:
    return f"{kind}_" + "".join(c if c.isalnum() else "_" for c in name)


def _visit(fn: Any, node: str, shape: Shape, registry: Registry, seen: set[str]) -> None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return  # no source (a builtin, a REPL function): nothing to show
    scope = {**getattr(fn, "__globals__", {}), **inspect.getclosurevars(fn).nonlocals}
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Name):
            _bound(scope.get(sub.id), node, shape, registry, seen)
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            _ctx_call(sub, node, shape, registry, seen)


def _bound(value: Any, node: str, shape: Shape, registry: Registry, seen: set[str]) -> None:
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if isinstance(v, Tool):
            shape.add(node, _id("tool", v.name), f"tool {v.name}")
        elif isinstance(v, Agent):
            child = _id("agent", v.name)
            shape.add(node, child, f"agent {v.name}")
            if child not in seen:
                seen.add(child)
                _visit(v.fn, child, shape, registry, seen)


def _ctx_call(call: ast.Call, node: str, shape: Shape, registry: Registry, seen: set[str]) -> None:
    method = call.func.attr  # type: ignore[attr-defined]
    if method == "generate":
        name = next((str(k.value.value) for k in call.keywords if k.arg == "name" and isinstance(k.value, ast.Constant)), "generate")
        shape.add(node, f"{node}__llm_{_id('', name)}", f"LLM {name}")
    elif method == "interrupt":
        shape.add(node, f"{node}__interrupt", "interrupt (human input)")
    elif method == "call" and call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value in registry.tools:
        _bound(registry.tools[call.args[0].value], node, shape, registry, seen)
