"""Tool-call and reasoning parsers per model family: the model's raw output text (special tokens
kept) in, the answer `content`, the `reasoning` and the `tool_calls` out.

Families: "agentrt" and "hermes" (Qwen, Hermes: `<tool_call>{"name", "arguments"}</tool_call>`),
"deepseek_v3" (`<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>`)
and "harmony" (gpt-oss channels: analysis = reasoning, final = answer, commentary to=functions.X = call).
A `<think>...</think>` block (Qwen3, DeepSeek-R1 style) is split off as reasoning.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from engine.chat.streaming import json_prefix, partial_tool_calls
from engine.chat.tool_calls import find_tool_call_errors, parse_tool_calls

FAMILIES = ("agentrt", "hermes", "deepseek_v3", "harmony")


@dataclass(slots=True, frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    raw_arguments: str = ""  # the arguments' JSON exactly as the model wrote it ("" when unknown)


@dataclass(slots=True)
class ParsedOutput:
    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # malformed calls, for reporting back to the model


def parse_output(family: str, text: str, special_tokens: tuple[str, ...] = (), think: bool = False,
                 partial: bool = False) -> ParsedOutput:
    """Split `text` into content, reasoning and tool calls by `family`'s format; `special_tokens`
    (end-of-turn and other control tokens) are removed from the content. `partial`: `text` is a
    generation still under way (an open `<think>` block is reasoning so far, not the answer, and
    trailing whitespace waits for what follows it, which may strip it: a stream sends only text
    the whole reply keeps)."""
    parsed = _parse(family, text, special_tokens, think, partial)
    if partial:
        parsed.content = parsed.content.rstrip()
        parsed.reasoning = parsed.reasoning.rstrip() if parsed.reasoning is not None else None
    return parsed


def _parse(family: str, text: str, special_tokens: tuple[str, ...], think: bool, partial: bool) -> ParsedOutput:
    if family == "harmony":
        return _with_raw_arguments(family, _parse_harmony(text), text)
    reasoning, rest = split_reasoning(text, partial) if think else (None, text)
    if family == "deepseek_v3":
        parsed = _parse_deepseek(rest)
    elif family in ("agentrt", "hermes"):
        body_start = rest.find("<tool_call>")
        calls = [ToolCall(n, a) for n, a in parse_tool_calls(rest)]
        parsed = ParsedOutput(rest if body_start == -1 else rest[:body_start], None, calls, find_tool_call_errors(rest))
    else:
        raise ValueError(f"unknown chat family {family!r}; expected one of {FAMILIES}")
    parsed.reasoning = reasoning
    parsed.content = _strip_tokens(parsed.content, special_tokens).strip() if parsed.tool_calls else \
        _strip_tokens(parsed.content, special_tokens)
    return _with_raw_arguments(family, parsed, rest)


def _with_raw_arguments(family: str, parsed: ParsedOutput, text: str) -> ParsedOutput:
    """Each call with the JSON text of its arguments as written (what a stream of the same output
    sent, fragment by fragment), matched in order to the whole calls the streaming reader finds."""
    if not parsed.tool_calls:
        return parsed
    raws = [p for p in partial_tool_calls(family, text) if p.complete]
    out, i = [], 0
    for call in parsed.tool_calls:
        while i < len(raws) and not (raws[i].name == call.name and json.loads(raws[i].arguments) == call.arguments):
            i += 1
        out.append(ToolCall(call.name, call.arguments, raws[i].arguments) if i < len(raws) else call)
        i += 1
    parsed.tool_calls = out
    return parsed


def split_reasoning(text: str, partial: bool = False) -> tuple[str | None, str]:
    """(reasoning, rest) around `</think>`; without `</think>` the whole text is the answer, unless
    the text is `partial` and opens with `<think>`: then all of it is reasoning so far."""
    end = text.find("</think>")
    if end == -1 and partial and text.lstrip().startswith("<think>"):
        return text.lstrip()[len("<think>"):].lstrip("\n"), ""
    if end == -1:
        return None, text
    reasoning = text[:end]
    start = reasoning.find("<think>")
    reasoning = reasoning[start + len("<think>"):] if start != -1 else reasoning
    return reasoning.strip("\n"), text[end + len("</think>"):].lstrip("\n")


def _strip_tokens(text: str, tokens: tuple[str, ...]) -> str:
    for tok in tokens:
        text = text.replace(tok, "")
    return text


DS_CALLS_BEGIN, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL = re.compile(r"<｜tool▁call▁begin｜>(?P<type>[^<]*?)<｜tool▁sep｜>(?P<name>[^\n]+)\n```json\n(?P<args>.*?)\n```"
                     r"<｜tool▁call▁end｜>", re.DOTALL)


def _parse_deepseek(text: str) -> ParsedOutput:
    """Calls sit inside `<｜tool▁calls▁begin｜>...`; a grammar-constrained call may start directly
    with `<｜tool▁call▁begin｜>`, so the content ends at whichever comes first."""
    found = [i for i in (text.find(DS_CALLS_BEGIN), text.find("<｜tool▁call▁begin｜>")) if i != -1]
    if not found:
        return ParsedOutput(text)
    start = min(found)
    calls: list[ToolCall] = []
    errors: list[str] = []
    for m in DS_CALL.finditer(text, start):
        args = _object_or_error(m["args"], errors)
        if args is not None:
            calls.append(ToolCall(m["name"].strip(), args))
    return ParsedOutput(text[:start], None, calls, errors)


HARMONY_MESSAGE = re.compile(
    r"(?:<\|start\|>assistant)?(?P<pre>[^<]*?)(?:<\|channel\|>(?P<channel>\w+))?(?P<header>[^<]*?)(?:<\|constrain\|>\w+)?"
    r"<\|message\|>(?P<body>.*?)(?:<\|end\|>|<\|call\|>|<\|return\|>|$)", re.DOTALL)


def _parse_harmony(text: str) -> ParsedOutput:
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    errors: list[str] = []
    pos = 0
    while pos < len(text) and (m := HARMONY_MESSAGE.search(text, pos)) is not None:
        pos = max(m.end(), pos + 1)
        recipient = re.search(r"to=functions\.([\w.-]+)", (m["pre"] or "") + (m["header"] or ""))
        if recipient:
            body, end = _json_body(text, m.start("body"), m["body"])
            pos = max(pos, end)
            args = _object_or_error(body, errors)
            if args is not None:
                calls.append(ToolCall(recipient[1], args))
        elif m["channel"] == "analysis":
            reasoning.append(m["body"])
        else:
            content.append(m["body"])
    return ParsedOutput("".join(content), "".join(reasoning) or None, calls, errors)


def _json_body(text: str, start: int, body: str) -> tuple[str, int]:
    """A call's body: the JSON value at `start` when one parses there (a `<|call|>` written inside
    one of its strings does not end it), else `body` as the message regex cut it; and where it ends."""
    value, whole = json_prefix(text, start)
    if not whole:
        return body, start + len(body)
    end = text.find(value, start) + len(value)
    return value, end


def _object_or_error(body: str, errors: list[str]) -> dict[str, Any] | None:
    try:
        args = json.loads(body) if body.strip() else {}
    except json.JSONDecodeError as exc:
        errors.append(f"tool call arguments are not valid JSON ({exc.msg}): {body[:80]!r}")
        return None
    if not isinstance(args, dict):
        errors.append(f"tool call arguments must be an object: {body[:80]!r}")
        return None
    return args
