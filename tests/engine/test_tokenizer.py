"""Chat format: rendering, prefix stability, special tokens and tool-call parsing."""

from __future__ import annotations

from engine.chat.tool_calls import find_tool_call_errors, parse_tool_calls
from engine.config import DEFAULT_MODEL_DIR
from engine.tokenizer import ChatTokenizer, render_chat, render_tool_call

CONV = [
    {"role": "system", "content": "policy"},
    {"role": "user", "content": "cancel ABC123"},
    {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "get_reservation_details", "arguments": '{"reservation_id": "ABC123"}'}}]},
    {"role": "tool", "content": '{"status": "ok"}'},
]


def test_rendering_is_prefix_stable_across_turns() -> None:
    before = render_chat(CONV[:2])
    after = render_chat(CONV[:3], add_generation_prompt=False)
    assert after.startswith(before)


def test_tools_are_listed_in_the_system_turn() -> None:
    tools = [{"type": "function", "function": {"name": "think", "description": "Think.", "parameters": {"type": "object", "properties": {"thought": {"type": "string"}}, "required": ["thought"]}}}]
    text = render_chat(CONV[:1], tools)
    assert "think(thought: string) - Think." in text.split("<|end|>")[0]


def test_tool_calls_round_trip_through_render_and_parse() -> None:
    text = render_tool_call("book", {"a": [1, 2], "b": "x"}) + " then " + render_tool_call("think", {})
    assert parse_tool_calls(text) == [("book", {"a": [1, 2], "b": "x"}), ("think", {})]


def test_malformed_tool_calls_are_reported_not_parsed() -> None:
    text = '<tool_call>{"name": "x", "arguments": [1]}</tool_call><tool_call>{oops</tool_call><tool_call>{"arguments": {}}'
    assert parse_tool_calls(text) == []
    errors = find_tool_call_errors(text)
    assert len(errors) == 3 and "not valid JSON" in errors[1]


def test_special_tokens_encode_to_single_ids() -> None:
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    ids = tok.encode("<|user|>hi<|end|><tool_call>")
    assert ids[0] == tok.special["<|user|>"] and ids[-1] == tok.special["<tool_call>"]
    assert tok.decode(tok.encode("héllo wörld {\"a\": 1}")) == "héllo wörld {\"a\": 1}"


def test_the_default_template_renders_the_format_the_model_was_trained_on() -> None:
    tools = [{"type": "function", "function": {"name": "think", "description": "Think.\nMore.", "parameters": {
        "type": "object", "properties": {"thought": {"type": "string"}, "depth": {"type": "integer"}}, "required": ["thought"]}}}]
    expected = ('<|system|>policy\n\n# Tools\nCall a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.\n'
                'think(thought: string, depth?: integer) - Think.<|end|><|user|>cancel ABC123<|end|><|assistant|><tool_call>'
                '{"name": "get_reservation_details", "arguments": {"reservation_id": "ABC123"}}</tool_call><|end|>'
                '<|tool|>{"status": "ok"}<|end|><|assistant|>')
    assert render_chat(CONV, tools) == expected
