"""A real uvicorn server on 127.0.0.1 (a free port) over the shipped default model."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


@contextlib.contextmanager
def serve_tiny(name: str, out: Path) -> Iterator[object]:
    """An `openai.OpenAI` client of a server over a tiny random model around the real `name`
    tokenizer (engine.chat.fixtures), served as `tiny-NAME`; fails the test when the fixture is missing."""
    import openai

    from engine.chat.fixtures import FixtureMissingError, tiny_model

    try:
        model = tiny_model(name, out)
    except FixtureMissingError as exc:
        pytest.fail(str(exc))
    llm = LLM(model, device="cpu", dtype="float32", num_kv_blocks=64)
    server, thread, url = start_server(llm, f"tiny-{name}")
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120) as api:
            yield api
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
        llm.close()
