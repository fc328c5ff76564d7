"""Hermes-style tool calls, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the default model's
and Qwen's format): every call in a text, and a message for every malformed one."""

from __future__ import annotations

import json
from typing import Any

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


def parse_tool_calls(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Every well-formed `<tool_call>{"name", "arguments"}</tool_call>` in `text`, in order.

    Malformed calls (bad JSON, missing name, non-object arguments) are skipped; see
    `find_tool_call_errors` for reporting them."""
    calls = []
    for chunk in _call_bodies(text):
        parsed = _parse_call(chunk)
        if isinstance(parsed, tuple):
            calls.append(parsed)
    return calls


def find_tool_call_errors(text: str) -> list[str]:
    """A message for every malformed tool call in `text` (for reporting back to the model)."""
    return [p for p in (_parse_call(c) for c in _call_bodies(text)) if isinstance(p, str)]


def _call_bodies(text: str) -> list[str]:
    """The body of every `<tool_call>...` in `text`. A body that starts with a JSON value ends where
    that value ends, so a `</tool_call>` inside one of its strings does not cut the call short."""
    bodies, pos = [], 0
    while (start := text.find(CALL_OPEN, pos)) != -1:
        begin = start + len(CALL_OPEN)
        end = _json_end(text, begin)
        if end is None:
            close = text.find(CALL_CLOSE, begin)
            end = close if close != -1 else len(text)
        bodies.append(text[begin:end])
        after = end + len(text[end:]) - len(text[end:].lstrip())
        pos = after + len(CALL_CLOSE) if text.startswith(CALL_CLOSE, after) else max(end, begin)
    return bodies


def _json_end(text: str, begin: int) -> int | None:
    """Where the JSON value starting at `begin` (after whitespace) ends, or None if none parses."""
    stripped = len(text[begin:]) - len(text[begin:].lstrip())
    try:
        _, end = _DECODER.raw_decode(text, begin + stripped)
    except json.JSONDecodeError:
        return None
    return int(end)


_DECODER = json.JSONDecoder()


def _parse_call(body: str) -> tuple[str, dict[str, Any]] | str:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"tool call is not valid JSON ({exc.msg} at {exc.pos}): {body[:80]!r}"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return f"tool call needs a string 'name': {body[:80]!r}"
    args = obj.get("arguments", {})
    if not isinstance(args, dict):
        return f"tool call 'arguments' must be an object: {body[:80]!r}"
    return obj["name"], args
