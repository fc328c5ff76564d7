"""An LLM call that never finishes is aborted after the engine client's timeout (issue 18 item 5)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentrt.engine_client import EmbeddedEngine, LLMRequest
from agentrt.errors import LLMTimeoutError


class _StuckLLM:
    """Stands in for engine.LLM: its stream yields nothing, forever, and records being left."""

    tokenizer = object()

    class config:  # noqa: N801 - mirrors engine.LLM.config
        model_path = Path("stuck")

    def __init__(self) -> None:
        self.closed = False

    async def stream(self, prompt: list[int], params: Any) -> AsyncIterator[Any]:
        try:
            await anyio.sleep_forever()
            yield None
        finally:
            self.closed = True


async def test_a_hung_llm_call_times_out_and_its_stream_is_closed() -> None:
    llm = _StuckLLM()
    engine = EmbeddedEngine(llm, timeout=0.2)
    with anyio.fail_after(5), pytest.raises(LLMTimeoutError, match="longer than 0.2s"):
        await engine.generate(LLMRequest(prompt_ids=[1, 2, 3]))
    assert llm.closed
