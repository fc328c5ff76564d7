"""The test graphs and tools every server test loads (tests/agentrt/server_graphs)."""

from __future__ import annotations

from pathlib import Path

from agentrt import Registry

GRAPHS = Path(__file__).parent / "server_graphs"


def registry() -> Registry:
    reg = Registry()
    reg.load_path(GRAPHS)
    return reg
