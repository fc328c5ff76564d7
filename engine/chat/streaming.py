"""Tool calls as far as a partial output goes, for streaming them (OpenAI `delta.tool_calls`).

`partial_tool_calls(family, text)` reads the raw output text so far (special tokens kept) and
returns each call the model has started: its name once the name is complete, the exact JSON text
of its arguments written so far, and whether those arguments are complete. Fed the growing text
of one generation, each call's `arguments` only grows, so a stream can send the new suffix each
time; on the finished text the arguments are the exact JSON the model wrote (`ToolCall.raw_arguments`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from engine.chat.tool_calls import CALL_CLOSE, CALL_OPEN

_DECODER = json.JSONDecoder()
DS_HEADER = re.compile(r"<｜tool▁call▁begin｜>[^<]*?<｜tool▁sep｜>(?P<name>[^\n<]+)\n```json\n")
HARMONY_ENDS = ("<|call|>", "<|end|>", "<|return|>")
HARMONY_HEADER = re.compile(r"to=functions\.(?P<name>[\w.-]+)[^<]*(?:<\|channel\|>[^<]*)?(?:<\|constrain\|>[^<]*)?<\|message\|>")


@dataclass(slots=True, frozen=True)
class PartialCall:
    name: str | None  # None until the whole name has been written
    arguments: str  # the arguments' JSON text so far
    complete: bool  # the arguments form a whole JSON value


def partial_tool_calls(family: str, text: str) -> list[PartialCall]:
    """The calls started in `text` (one family's raw output), in order. Raises ValueError for an
    unknown family."""
    if family in ("agentrt", "hermes"):
        calls, pos = [], text.find(CALL_OPEN)
        while pos != -1:
            call, after = _hermes_call(text, pos + len(CALL_OPEN))
            calls.append(call)
            pos = text.find(CALL_OPEN, after)
        return calls
    if family == "deepseek_v3":
        return [PartialCall(m["name"].strip(), *json_prefix(text, m.end(), ("\n```",))) for m in DS_HEADER.finditer(text)]
    if family == "harmony":
        return [PartialCall(m["name"], *json_prefix(text, m.end(), HARMONY_ENDS)) for m in HARMONY_HEADER.finditer(text)]
    raise ValueError(f"unknown chat family {family!r}")


def json_prefix(text: str, begin: int, stops: tuple[str, ...] = ()) -> tuple[str, bool]:
    """(the JSON value starting at `begin` after whitespace, as far as `text` has it; whether it is
    whole). A whole value ends where JSON says, so text after it (a closing marker) is left out;
    an unfinished one ends at the first of `stops` (a body that is not JSON stops growing there)."""
    start = _skip_ws(text, begin)
    try:
        _, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        cut = [i for i in (text.find(s, start) for s in stops) if i != -1]
        return text[start:min(cut, default=len(text))], False
    return text[start:end], True


def _hermes_call(text: str, begin: int) -> tuple[PartialCall, int]:
    """`{"name": ..., "arguments": ...}` after `<tool_call>` (members in any order) as written so
    far, and where the text read ends (a `<tool_call>` inside one of its strings is not a new call)."""
    name: str | None = None
    arguments, complete = "", False
    pos = _skip_ws(text, begin)
    if not text.startswith("{", pos):
        return PartialCall(None, "", False), pos
    pos += 1
    while True:
        key, end = _decode(text, _skip_ws(text, pos))
        colon = _skip_ws(text, end) if isinstance(key, str) else -1
        if colon == -1 or not text.startswith(":", colon):
            break
        start = _skip_ws(text, colon + 1)
        value, end = _decode(text, start)
        if key == "arguments":
            arguments, complete = (text[start:end], True) if end != -1 else (text[start:].split(CALL_CLOSE)[0], False)
        elif key == "name" and isinstance(value, str):
            name = value
        if end == -1:
            return PartialCall(name, arguments, complete), len(text)
        pos = _skip_ws(text, end)
        if not text.startswith(",", pos):
            break
        pos += 1
    return PartialCall(name, arguments, complete), pos


def _decode(text: str, pos: int) -> tuple[object, int]:
    """(value, end) of the JSON value at `pos`, or (None, -1) when the text there is not yet one."""
    if pos >= len(text):
        return None, -1
    try:
        value, end = _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
        return None, -1
    return value, int(end)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos

