"""A real uvicorn server on 127.0.0.1 (a free port) over the shipped default model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from engine import LLM


@dataclass
class Served:
    url: str
    llm: LLM
    client: object  # openai.OpenAI


def start_server(llm: LLM, name: str = "agentrt-default") -> tuple[object, threading.Thread, str]:
    import uvicorn

    from engine.serve import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(llm, name), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def served() -> Iterator[Served]:
    import openai

    llm = LLM(num_kv_blocks=512)
    server, thread, url = start_server(llm)
    with openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120) as api:
        yield Served(url, llm, api)
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=10)
    llm.close()
