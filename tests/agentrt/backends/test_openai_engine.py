"""OpenAIEngine: graphs run over agentrt's own OpenAI-compatible server; retries, affinity, errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentrt import JobSpec, OpenAIEngine, Registry, Runtime
from agentrt.backends import OpenAIEngineConfig, RemoteEngineError
from agentrt.engine_client import LLMRequest
from engine import LLM
from tests.agentrt.test_runtime_engine import structured, two_turns
from tests.engine.serve.conftest import start_server


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    llm = LLM(num_kv_blocks=512)
    server, thread, url = start_server(llm)
    yield url
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=10)
    llm.close()


def runtime(engine: Any, *objs: Any) -> Runtime:
    reg = Registry()
    reg.load_path("tools")
    reg.load_path("graphs")
    for o in objs:
        reg.register(o)
    return Runtime(reg, engine)


async def test_airline_graph_runs_over_the_openai_server(server_url: str) -> None:
    engine = OpenAIEngine(server_url, "agentrt-default")
    try:
        res = await runtime(engine).run_job(JobSpec(graph="airline_support", inputs={
            "user_turns": ["Hi, I want to cancel my reservation.", "My user id is mia_li_3668."], "database": "synthetic", "max_steps": 2}))
    finally:
        await engine.aclose()
    assert res.status == "succeeded", res.error
    assert len(res.output["turns"]) == 2 and res.usage.prompt_tokens > 0 and res.usage.generated_tokens > 0


async def test_session_turns_hit_the_server_prefix_cache_and_keep_affinity(server_url: str) -> None:
    seen: list[str | None] = []
    engine = OpenAIEngine(server_url, "agentrt-default")
    post = engine._post

    async def spy(path: str, body: dict[str, Any], session: str | None) -> dict[str, Any]:
        seen.append(session)
        return await post(path, body, session)

    engine._post = spy  # type: ignore[method-assign]
    try:
        res = await runtime(engine, two_turns).run_job(JobSpec(graph="two_turns"))
    finally:
        await engine.aclose()
    first, second = res.output
    assert second["cached"] >= first["prompt"] - 16  # the server reported the previous turn as cached
    assert seen[0] is None and seen[1] is not None and "session-" in seen[1]


async def test_structured_output_over_the_server_parses(server_url: str) -> None:
    engine = OpenAIEngine(server_url, "agentrt-default")
    try:
        res = await runtime(engine, structured).run_job(JobSpec(graph="structured", inputs={"temperature": 1.0}))
    finally:
        await engine.aclose()
    assert res.status == "succeeded", res.error
    assert set(res.output) == {"user_id", "reservation_id", "passengers"}


class Flaky:
    """A tiny HTTP endpoint that answers 503 twice, then a completion."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.calls += 1
            n = self.calls
        if n <= 2:
            return httpx.Response(503, text="busy", headers={"retry-after": "0"})
        return httpx.Response(200, json={"choices": [{"text": "ok", "token_ids": [5, 6], "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 2}}})


async def test_5xx_is_retried_with_backoff_then_4xx_fails_with_the_body() -> None:
    flaky = Flaky()
    engine = OpenAIEngine(OpenAIEngineConfig("http://test", "m", backoff_s=0.001))
    engine._http = httpx.AsyncClient(base_url="http://test", transport=httpx.MockTransport(flaky.handler))
    out = await engine.generate(LLMRequest(prompt_ids=[1, 2, 3]))
    assert flaky.calls == 3 and out.token_ids == [5, 6] and out.usage.cached_tokens == 2 and out.usage.prefill_tokens_computed == 1
    await engine.aclose()
    engine._http = httpx.AsyncClient(base_url="http://test", transport=httpx.MockTransport(lambda r: httpx.Response(400, text="bad temperature")))
    with pytest.raises(RemoteEngineError, match="400: bad temperature"):
        await engine.generate(LLMRequest(prompt_ids=[1]))
    await engine.aclose()


def test_config_reads_the_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_LLM_URL", "http://127.0.0.1:9/v1")
    cfg = OpenAIEngineConfig.from_env(model="qwen")
    assert cfg is not None and cfg.base_url == "http://127.0.0.1:9" and cfg.model == "qwen"
    monkeypatch.delenv("AGENTRT_LLM_URL")
    assert OpenAIEngineConfig.from_env() is None
    with pytest.raises(ValueError, match="http"):
        OpenAIEngineConfig("localhost:8000", "m")


def test_cli_run_uses_the_endpoint_given_by_llm_url(server_url: str) -> None:
    import os
    import subprocess
    import sys

    inputs = '{"question": "What is my reservation status?", "database": "synthetic", "max_steps": 1}'
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "agentrt.cli", "run", "react", "--input", inputs, "--llm-url", server_url,
                           "--llm-model", "agentrt-default", "--json"], capture_output=True, text=True, env=env, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '"status": "succeeded"' in proc.stdout


async def test_429_and_timeouts_are_retried_and_a_dead_endpoint_fails_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    answers: list[Any] = [httpx.ReadTimeout("slow"), httpx.Response(429, text="slow down", headers={"retry-after": "0"})]

    def handler(request: httpx.Request) -> httpx.Response:
        if answers:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[no-any-return]
        return httpx.Response(200, json={"choices": [{"text": "ok", "token_ids": [7], "finish_reason": "stop"}], "usage": {}})

    engine = OpenAIEngine(OpenAIEngineConfig("http://test", "m", backoff_s=0.001, max_retries=2))
    engine._http = httpx.AsyncClient(base_url="http://test", transport=httpx.MockTransport(handler))
    assert (await engine.generate(LLMRequest(prompt_ids=[1]))).token_ids == [7] and not answers
    await engine.aclose()

    def dead(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("no route")

    engine._http = httpx.AsyncClient(base_url="http://test", transport=httpx.MockTransport(dead))
    with pytest.raises(RemoteEngineError, match=r"http://test/v1/completions failed: ConnectTimeout"):
        await engine.generate(LLMRequest(prompt_ids=[1]))
    await engine.aclose()
    with caplog.at_level("INFO", logger="agentrt.backends.openai_compat"):
        engine.pin("s1", [1, 2], ttl=None)
        engine.hint("s1", [1, 2], steps=1.0)
        engine.pin("s2", [3], ttl=None)
    assert sum("no-ops" in r.getMessage() for r in caplog.records) == 1  # pins/hints degrade to no-ops, said once
