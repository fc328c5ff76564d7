"""Fixtures shared by the server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agentrt import Runtime
from agentrt.server import Server, ServerConfig
from tests.agentrt.servers import registry


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A journaled server on a free loopback port, serving the test graphs."""
    srv = Server(Runtime(registry()), ServerConfig(bind="tcp://127.0.0.1:*", journal=tmp_path / "j.sqlite", max_inflight_per_client=50))
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        yield srv
        tg.cancel_scope.cancel()
