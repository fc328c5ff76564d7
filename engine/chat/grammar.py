"""Grammar-constrained tool calls: one xgrammar structural tag per chat family.

Each tag lets the model write a call only in its family's own format, to one of the offered tools,
with arguments that follow that tool's JSON schema (properties in declared order, at most one
whitespace in a row, no string containing the closing marker, so it cannot end a call early).
Hermes/Qwen and DeepSeek-V3 mark calls with ordinary text: the tags trigger on it and exclude it
from strings. agentrt's default model and gpt-oss (harmony) mark them with special tokens, which
the tags match token by token (`{"type": "token", "token": "<|call|>"}`): engine.structured shows
only those tokens to the grammar, in a form no JSON string can contain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.chat.tool_calls import CALL_CLOSE, CALL_OPEN

# Families whose call markers are ordinary text: (trigger, begin with {name}, end).
TEXT_CALL_TAGS = {
    "hermes": ("<tool_call>", '<tool_call>\n{"name": "{name}", "arguments": ', "}\n</tool_call>"),
    "deepseek_v3": ("<｜tool▁call▁begin｜>", "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n",
                    "\n```<｜tool▁call▁end｜>"),
}
HARMONY_MARKERS = ("<|start|>", "<|channel|>", "<|constrain|>", "<|message|>", "<|end|>", "<|call|>", "<|return|>")
FAMILIES_WITH_GRAMMAR = ("agentrt", "hermes", "deepseek_v3", "harmony")


def tool_call_tag(family: str, tools: Sequence[dict[str, Any]], *, required: bool = False, think: bool = False,
                  reasoning: bool = True) -> dict[str, Any] | None:
    """The structural tag for `family` over `tools` (OpenAI function tools). `required`: the reply
    is calls only (one or more; gpt-oss: one, after optional reasoning). `think`: the template uses
    `<think>` blocks (kept out of free text). `reasoning=False` (a template's `enable_thinking=False`)
    drops gpt-oss's analysis messages. None without tools or for an unknown family."""
    if not tools or family not in FAMILIES_WITH_GRAMMAR:
        return None
    functions = [(t.get("function", t)["name"], t.get("function", t).get("parameters") or {"type": "object"}) for t in tools]
    if family == "agentrt":
        fmt = _agentrt(functions, required)
    elif family == "harmony":
        fmt = _harmony(functions, required, reasoning)
    else:
        fmt = _text_marked(family, functions, required, think)
    return {"type": "structural_tag", "format": fmt}


def _arguments(schema: dict[str, Any], excludes: Sequence[str] = ()) -> dict[str, Any]:
    out = {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": 1}
    return {**out, "excludes": list(excludes)} if excludes else out


def _const(text: str) -> dict[str, Any]:
    return {"type": "const_string", "value": text}


def _token(name: str) -> dict[str, Any]:
    return {"type": "token", "token": name}


def _seq(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "sequence", "elements": list(elements)}


def _text_marked(family: str, functions: list[tuple[str, dict[str, Any]]], required: bool, think: bool) -> dict[str, Any]:
    trigger, begin, end = TEXT_CALL_TAGS[family]
    close = end.lstrip("`}\n")  # "</tool_call>" / "<｜tool▁call▁end｜>": never inside a string
    tags = [{"type": "tag", "begin": begin.replace("{name}", name), "content": _arguments(params, [close]), "end": end}
            for name, params in functions]
    if required:  # calls only, one or more, as the family separates them
        return {"type": "tags_with_separator", "tags": tags, "separator": "\n", "at_least_one": True}
    return {"type": "triggered_tags", "triggers": [trigger], "tags": tags,
            "excludes": ["<think>", "</think>"] if think else []}


def _agentrt(functions: list[tuple[str, dict[str, Any]]], required: bool) -> dict[str, Any]:
    """`<tool_call>{"name": "NAME", "arguments": {...}}</tool_call>`, markers as special tokens; the
    end-of-turn token (the model's EOS) follows the last call."""
    tags = [{"type": "tag", "begin": _token(CALL_OPEN),
             "content": _seq(_const(f'{{"name": "{name}", "arguments": '), _arguments(params), _const("}")),
             "end": _token(CALL_CLOSE)} for name, params in functions]
    if required:
        return {"type": "tags_with_separator", "tags": tags, "separator": "", "at_least_one": True}
    return {"type": "token_triggered_tags", "trigger_tokens": [CALL_OPEN], "tags": tags, "exclude_tokens": [CALL_CLOSE]}


def _harmony(functions: list[tuple[str, dict[str, Any]]], required: bool, reasoning: bool) -> dict[str, Any]:
    """gpt-oss: analysis messages (reasoning), then one call on the commentary channel,
    `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>`, or (auto)
    a final answer ending in `<|return|>`. The prompt ends with `<|start|>assistant`; both end
    tokens are the format's stops, written out here so the grammar does not rely on the model's EOS."""
    free = {"type": "any_tokens", "exclude_tokens": list(HARMONY_MARKERS)}
    calls = [_seq(_token("<|channel|>"), _const(f"commentary to=functions.{name} "), _token("<|constrain|>"), _const("json"),
                  _token("<|message|>"), _arguments(params), _token("<|call|>"))
             for name, params in functions]
    final = _seq(_token("<|channel|>"), _const("final"), _token("<|message|>"), free, _token("<|return|>"))
    replies = calls if required else [*calls, final]
    reply = replies[0] if len(replies) == 1 else {"type": "or", "elements": replies}
    if not reasoning:
        return reply
    analysis = _seq(_token("<|channel|>"), _const("analysis"), _token("<|message|>"), free, _token("<|end|>"),
                    _token("<|start|>"), _const("assistant"))
    return _seq({"type": "star", "content": analysis}, reply)
