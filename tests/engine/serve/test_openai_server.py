"""The OpenAI-compatible server, driven by the official `openai` client over real HTTP."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.engine.chat.test_template import TOOLS
from tests.engine.serve.conftest import Served

SYSTEM = {"role": "system", "content": "# Airline Agent Policy\nYou are an airline agent."}


def client(served: Served) -> openai.OpenAI:
    assert isinstance(served.client, openai.OpenAI)
    return served.client


def test_health_and_models(served: Served) -> None:
    with httpx.Client() as http:
        assert http.get(served.url + "/health").json() == {"status": "ok"}
    assert [m.id for m in client(served).models.list().data] == ["agentrt-default"]


def test_chat_with_tools_reports_calls_and_cached_prompt_tokens(served: Served) -> None:
    msgs = [SYSTEM, {"role": "user", "content": "Please cancel reservation M05KNL."}]
    first = client(served).chat.completions.create(model="agentrt-default", messages=msgs, tools=TOOLS, max_tokens=48, temperature=0)
    again = client(served).chat.completions.create(model="agentrt-default", messages=msgs, tools=TOOLS, max_tokens=48, temperature=0)
    msg = first.choices[0].message
    assert msg.tool_calls or msg.content, first
    if msg.tool_calls:
        assert first.choices[0].finish_reason == "tool_calls" and isinstance(json.loads(msg.tool_calls[0].function.arguments), dict)
    assert "<|" not in (msg.content or "")
    assert first.usage.prompt_tokens > 20 and first.usage.completion_tokens > 0
    assert again.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens // 2
    again_msg = again.choices[0].message  # greedy: the same reply
    assert again_msg.content == msg.content and [c.function for c in again_msg.tool_calls or []] == [c.function for c in msg.tool_calls or []]


def test_response_format_json_schema_is_followed_in_declared_order(served: Served) -> None:
    schema = {"type": "object", "properties": {"reasoning": {"type": "string", "maxLength": 40}, "answer": {"type": "string", "maxLength": 20}},
              "required": ["reasoning", "answer"], "additionalProperties": False}
    out = client(served).chat.completions.create(
        model="agentrt-default", messages=[SYSTEM, {"role": "user", "content": "Can I cancel a basic economy ticket?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}, max_tokens=64, temperature=0)
    assert list(json.loads(out.choices[0].message.content)) == ["reasoning", "answer"]


def test_streamed_chat_equals_the_whole_reply_and_ends_with_usage(served: Served) -> None:
    msgs = [SYSTEM, {"role": "user", "content": "Hi, I would like to change my flight."}]
    whole = client(served).chat.completions.create(model="agentrt-default", messages=msgs, max_tokens=32, temperature=0)
    chunks = list(client(served).chat.completions.create(model="agentrt-default", messages=msgs, max_tokens=32, temperature=0,
                                                         stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (whole.choices[0].message.content or "")
    calls = [c.function.name for ch in chunks if ch.choices for c in ch.choices[0].delta.tool_calls or [] if c.function.name]
    assert calls == [c.function.name for c in whole.choices[0].message.tool_calls or []]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_and_concurrent_requests(served: Served) -> None:
    def one(i: int) -> str:
        out = client(served).completions.create(model="agentrt-default", prompt=f"<|user|>My user id is mia_li_{i}.<|end|><|assistant|>",
                                                max_tokens=16, temperature=0)
        return out.choices[0].text

    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(one, range(4)))
    assert all(isinstance(t, str) for t in texts) and any(texts)


def test_bad_requests_get_a_400_naming_the_value(served: Served) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client(served).chat.completions.create(model="agentrt-default", messages=[{"role": "user", "content": "x"}], temperature=-1)
    with pytest.raises(openai.BadRequestError, match="nope"):
        client(served).chat.completions.create(model="agentrt-default", messages=[{"role": "user", "content": "x"}], tools=TOOLS,
                                               tool_choice={"type": "function", "function": {"name": "nope"}})


HOSTILE = [  # (path, body, status, words the error message must hold)
    ("chat/completions", {"messages": []}, 400, "at least one message"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "image_url"),
    ("chat/completions", {"messages": [{"role": "user"}]}, 400, "needs 'content'"),
    ("chat/completions", {"messages": [{"content": "hi"}]}, 400, "role"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"add_generation_prompt": False}},
     400, "add_generation_prompt"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "logprobs"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 100}}, 400, "logit_bias"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1.5}, 400, "presence_penalty"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}, 404, "gpt-4"),
    ("chat/completions", {"messages": "hi"}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "seed": 1e300}, 400, "seed"),
    ("completions", {"prompt": "hi", "stop_token_ids": [99999999]}, 400, "99999999"),
    ("completions", {"prompt": [10**9]}, 400, "vocabulary"),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), HOSTILE, ids=[f"{p}-{w}" for p, _, _, w in HOSTILE])
def test_hostile_requests_get_an_openai_error_naming_the_field(served: Served, path: str, body: dict, status: int, words: str) -> None:
    with httpx.Client(timeout=60) as http:
        resp = http.post(f"{served.url}/v1/{path}", json={"max_tokens": 3, **body})
        assert resp.status_code == status, resp.text
        err = resp.json()["error"]
        assert words in err["message"] and err["code"] == status
        # the inert values clients send by default are accepted, and the server still serves
        ok = http.post(f"{served.url}/v1/chat/completions", json={
            "model": "agentrt-default", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 2,
            "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_a_body_that_is_not_json_gets_a_400(served: Served) -> None:
    with httpx.Client(timeout=60) as http:
        resp = http.post(f"{served.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]


def test_client_disconnect_aborts_the_request(served: Served) -> None:
    body = {"model": "agentrt-default", "prompt": "<|user|>Tell me everything.<|end|><|assistant|>", "max_tokens": 3000,
            "temperature": 1.0, "stream": True, "ignore_eos": True}  # would run for thousands of steps
    with httpx.Client(timeout=60) as http, http.stream("POST", served.url + "/v1/completions", json=body) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break
        assert served.llm.core.has_unfinished()
    deadline = time.monotonic() + 20
    while served.llm.core.has_unfinished() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not served.llm.core.has_unfinished()


def test_a_qwen3_model_served_returns_a_named_tool_call(tmp_path: Path) -> None:
    from tests.engine.serve.conftest import serve_tiny

    tools = [{"type": "function", "function": {"name": "count_bags", "parameters": {"type": "object", "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["count"]}}}, *TOOLS]
    with serve_tiny("qwen3", tmp_path / "qwen") as api:
        assert isinstance(api, openai.OpenAI)
        out = api.chat.completions.create(model="tiny-qwen3", messages=[{"role": "user", "content": "How many bags?"}], tools=tools,
                                          tool_choice={"type": "function", "function": {"name": "count_bags"}}, max_tokens=60,
                                          seed=0, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    calls = out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "tool_calls" and calls and calls[0].function.name == "count_bags"
    assert 0 <= json.loads(calls[0].function.arguments)["count"] <= 9


def test_completions_follow_a_structural_tag_given_as_structured_outputs(served: Served) -> None:
    from tests.engine.chat.test_tool_grammar import SEAT

    fmt = served.llm.chat_format
    prompt = fmt.render([SYSTEM, {"role": "user", "content": "A window seat please."}], [SEAT])
    tag = json.dumps(fmt.structural_tag([SEAT], required=True))
    out = client(served).completions.create(model="agentrt-default", prompt=prompt, max_tokens=48, temperature=0,
                                            extra_body={"structured_outputs": {"structural_tag": tag}})
    calls = fmt.parse(out.choices[0].text).tool_calls
    assert [c.name for c in calls] == ["pick_seat"] and list(calls[0].arguments) == ["row", "letter"], out.choices[0].text
    with pytest.raises(openai.BadRequestError, match="regex"):
        client(served).completions.create(model="agentrt-default", prompt=prompt, max_tokens=4,
                                          extra_body={"structured_outputs": {"regex": "a+"}})
