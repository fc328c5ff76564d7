"""Streamed chat completions (SSE chunks, as OpenAI and vLLM send them): content and reasoning as
deltas of the parsed text, and each tool call as it is written: a first `delta.tool_calls` entry
with its index, id, type and name, then fragments of its arguments' JSON; the last chunk carries
the finish reason ("tool_calls" when the reply calls tools) and, if asked, the usage."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from engine.chat.session import to_chat_output
from engine.chat.streaming import PartialCall


def call_id(rid: str, index: int) -> str:
    """The id of a request's `index`-th tool call, the same in streamed and whole responses."""
    return f"call_{rid[-12:]}_{index}"


def tool_calls_json(calls: list[Any], rid: str) -> list[dict[str, Any]]:
    """OpenAI `tool_calls` of a whole response; arguments are the JSON the model wrote."""
    return [{"id": call_id(rid, i), "type": "function",
             "function": {"name": c.name, "arguments": c.raw_arguments or json.dumps(c.arguments, ensure_ascii=False)}}
            for i, c in enumerate(calls)]


class ToolCallDeltas:
    """What of each tool call a stream has sent so far; `deltas` turns the calls begun in the
    output so far into the `delta.tool_calls` entries not yet sent. A call is announced once its
    name is whole; its arguments follow as they grow (a fragment is sent only while what was sent
    stays a prefix, so the fragments join into the whole response's arguments)."""

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.sent: list[str] = []  # arguments sent, per announced call

    def deltas(self, calls: list[PartialCall]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, call in enumerate(calls):
            if i == len(self.sent):
                if call.name is None:
                    break
                out.append({"index": i, "id": call_id(self.rid, i), "type": "function",
                            "function": {"name": call.name, "arguments": ""}})
                self.sent.append("")
            sent = self.sent[i]
            if len(call.arguments) > len(sent) and call.arguments.startswith(sent):
                out.append({"index": i, "function": {"arguments": call.arguments[len(sent):]}})
                self.sent[i] = call.arguments
        return out


async def chat_chunks(llm: Any, fmt: Any, ids: list[int], params: Any, rid: str, model: str, req: Any,
                      usage: Any) -> AsyncIterator[dict[str, Any]]:
    """The chunks of one streamed chat completion (`usage(out)` gives the usage object)."""
    head = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    sent = {"content": "", "reasoning_content": ""}
    calls = ToolCallDeltas(rid)
    async for out in llm.stream(ids, params, request_id=rid):
        parsed = to_chat_output(fmt, out)
        delta: dict[str, Any] = {}
        for key, value in (("content", parsed.text), ("reasoning_content", parsed.reasoning or "")):
            if value.startswith(sent[key]) and len(value) > len(sent[key]):
                delta[key], sent[key] = value[len(sent[key]):], value
        call_deltas = calls.deltas(fmt.partial_calls(out.text))
        if call_deltas:
            delta["tool_calls"] = call_deltas
        if delta or out.finished:
            reason = parsed.finish_reason if out.finished else None
            yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        if out.finished and (req.stream_options or {}).get("include_usage"):
            yield {**head, "choices": [], "usage": usage(out)}
