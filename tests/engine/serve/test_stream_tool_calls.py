"""Tool calls streamed as OpenAI/vLLM stream them (`delta.tool_calls`: index, id, type and name
first, then fragments of the arguments), read back with the official `openai` client and compared
with the same request unstreamed; reasoning streams in `delta.reasoning_content`."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from engine.chat import ChatFormat
from engine.chat.fixtures import FixtureMissingError, tokenizer_dir
from engine.sequence import FinishReason, RequestOutput, Usage
from engine.serve.stream import chat_chunks
from tests.engine.chat.test_tool_grammar import TOOLS
from tests.engine.serve.conftest import Served, serve_tiny

SYSTEM = {"role": "system", "content": "# Airline Agent Policy\nYou are an airline agent."}


def streamed_calls(chunks: list[Any]) -> list[tuple[str, str, str, int]]:
    """(id, name, joined arguments, number of argument fragments) per streamed call, in index order,
    checking that only a call's first delta carries its id, type and name."""
    calls: dict[int, list[Any]] = {}
    for chunk in chunks:
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if d.index not in calls:
                assert d.id and d.type == "function" and d.function.name, d
                calls[d.index] = [d.id, d.function.name, d.function.arguments or "", 0]
            else:
                assert d.id is None and d.function.name is None and d.function.arguments, d
                calls[d.index][2] += d.function.arguments
                calls[d.index][3] += 1
    return [tuple(calls[i]) for i in sorted(calls)]  # type: ignore[misc]


def compare_streamed_and_whole(api: openai.OpenAI, **request: Any) -> list[tuple[str, str, str, int]]:
    whole = api.chat.completions.create(**request)
    chunks = list(api.chat.completions.create(**request, stream=True))
    calls = streamed_calls(chunks)
    expected = [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls or []]
    assert expected and [c[1:3] for c in calls] == expected  # ids differ: they are per request
    assert all(c[0].startswith("call_") for c in calls)
    assert whole.choices[0].finish_reason == "tool_calls" == [c for c in chunks if c.choices][-1].choices[0].finish_reason
    return calls


def test_default_model_streams_a_required_call_in_fragments(served: Served) -> None:
    assert isinstance(served.client, openai.OpenAI)
    calls = compare_streamed_and_whole(served.client, model="agentrt-default", messages=[SYSTEM, {"role": "user", "content": "Hi."}],
                                       tools=TOOLS, tool_choice="required", max_tokens=64, temperature=0)
    assert all(isinstance(json.loads(args), dict) for _, _, args, _ in calls)
    assert max(n for *_, n in calls) >= 2  # the arguments arrive as they are generated, not in one piece


def test_gpt_oss_served_streams_a_named_call(tmp_path: Path) -> None:
    with serve_tiny("gptoss", tmp_path / "gptoss") as api:
        assert isinstance(api, openai.OpenAI)
        calls = compare_streamed_and_whole(
            api, model="tiny-gptoss", messages=[{"role": "user", "content": "Seat?"}], tools=TOOLS, max_tokens=60, seed=1,
            tool_choice={"type": "function", "function": {"name": "pick_seat"}},
            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert [name for _, name, _, _ in calls] == ["pick_seat"] and set(json.loads(calls[0][2])) == {"row", "letter"}


class ScriptedEngine:
    """Streams a fixed harmony output one token-sized piece at a time (the chunking under test
    depends only on the growing text)."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    async def stream(self, ids: list[int], params: Any, request_id: str) -> AsyncIterator[RequestOutput]:
        text = ""
        for i, piece in enumerate(self.pieces):
            text += piece
            last = i == len(self.pieces) - 1
            yield RequestOutput(request_id, ids, list(range(i + 1)), text, last, FinishReason.STOP if last else None,
                                Usage(prompt_tokens=len(ids), generated_tokens=i + 1), [i], piece)


async def test_harmony_stream_sends_reasoning_then_the_call(tmp_path: Path) -> None:
    try:
        shutil.copy(tokenizer_dir("gptoss") / "tokenizer.json", tmp_path / "tokenizer.json")
    except FixtureMissingError as exc:
        pytest.fail(str(exc))
    (tmp_path / "config.json").write_text('{"model_type": "gpt_oss"}')
    fmt = ChatFormat.from_model_dir(tmp_path, control_tokens=["<|channel|>"])
    pieces = ["<|channel|>", "analysis", "<|message|>", "Two", " bags", ".", "<|end|>", "<|start|>", "assistant", "<|channel|>",
              "commentary", " to", "=functions", ".count", "_bags", " ", "<|constrain|>", "json", "<|message|>", '{"', "count",
              '": ', "2", ', "', "paid", '": ', "false", ', "', "note", '": "', "ok", '"}', "<|call|>"]

    class Req:
        stream_options = None

    chunks = [c async for c in chat_chunks(ScriptedEngine(pieces), fmt, [1, 2], None, "chatcmpl-abc", "m", Req(), lambda o: {})]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Two bags."
    assert "".join(d.get("content", "") for d in deltas) == ""
    call_deltas = [t for d in deltas for t in d.get("tool_calls", [])]
    assert call_deltas[0] == {"index": 0, "id": "call_chatcmpl-abc_0", "type": "function",
                              "function": {"name": "count_bags", "arguments": ""}}
    assert "".join(t["function"]["arguments"] for t in call_deltas[1:]) == '{"count": 2, "paid": false, "note": "ok"}'
    assert len(call_deltas) > 5 and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_qwen3_stream_sends_thinking_as_reasoning_then_the_call() -> None:
    try:
        fmt = ChatFormat.from_model_dir(tokenizer_dir("qwen3"))
    except FixtureMissingError as exc:
        pytest.fail(str(exc))
    assert fmt is not None and fmt.think
    pieces = ["<think>", "\n", "Window", " seat", ".", "\n", "</think>", "\n\n", "Sure", ".", "\n", "<tool_call>", "\n", '{"', "name",
              '": "', "pick", "_seat", '", "', "arguments", '": {"', "row", '": ', "3", ', "', "letter", '": "', "A", '"}}', "\n",
              "</tool_call>", "<|im_end|>"]

    class Req:
        stream_options = None

    chunks = [c async for c in chat_chunks(ScriptedEngine(pieces), fmt, [1], None, "chatcmpl-q", "m", Req(), lambda o: {})]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    whole = fmt.parse("".join(pieces))
    assert "".join(d.get("reasoning_content", "") for d in deltas) == whole.reasoning == "Window seat."
    assert "".join(d.get("content", "") for d in deltas) == whole.content == "Sure."
    calls = [t for d in deltas for t in d.get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "pick_seat"
    assert "".join(t["function"]["arguments"] for t in calls[1:]) == whole.tool_calls[0].raw_arguments == '{"row": 3, "letter": "A"}'
