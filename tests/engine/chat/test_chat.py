"""LLM.chat on the shipped model and on a tiny random model around the real Qwen3 tokenizer;
per-family parsers on outputs in each family's format."""

from __future__ import annotations

from engine import LLM, SamplingParams
from engine.chat import parse_output
from tests.engine.chat.test_template import TOOLS


def test_hermes_output_splits_reasoning_text_and_calls() -> None:
    text = ('<think>\nThe user wants ABC123.\n</think>\n\nLet me look.<tool_call>\n{"name": "get_reservation_details", '
            '"arguments": {"reservation_id": "ABC123", "note": "a</tool_call>b"}}\n</tool_call><|im_end|>')
    out = parse_output("hermes", text, ("<|im_end|>",), think=True)
    assert out.reasoning == "The user wants ABC123." and out.content == "Let me look."
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("get_reservation_details", {"reservation_id": "ABC123", "note": "a</tool_call>b"})]


def test_deepseek_v3_tool_call_tokens_parse() -> None:
    text = ("Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_reservation_details\n```json\n"
            '{"reservation_id": "ABC123"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>think\n```json\n{}\n```'
            "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>")
    out = parse_output("deepseek_v3", text, ("<｜end▁of▁sentence｜>",))
    assert out.content == "Checking." and [c.name for c in out.tool_calls] == ["get_reservation_details", "think"]


def test_harmony_channels_parse_into_reasoning_answer_and_calls() -> None:
    text = ("<|channel|>analysis<|message|>Need details.<|end|><|start|>assistant to=functions.get_reservation_details"
            '<|channel|>commentary <|constrain|>json<|message|>{"reservation_id": "X"}<|call|>')
    out = parse_output("harmony", text)
    assert out.reasoning == "Need details." and out.content == ""
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("get_reservation_details", {"reservation_id": "X"})]
    final = parse_output("harmony", "<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>")
    assert final.content == "Done." and final.reasoning == "hm"


def test_default_model_chat_parses_its_own_format(default_llm: LLM) -> None:
    outs = default_llm.chat([{"role": "system", "content": "# Airline Agent Policy\nYou are an airline agent."},
                             {"role": "user", "content": "Please cancel reservation M05KNL."}],
                            SamplingParams(temperature=0.0, max_tokens=48), tools=TOOLS)
    out = outs[0]
    assert out.output.text.endswith("<|end|>")  # stopped at the template's end-of-turn token
    assert "<|" not in out.text and "<tool_call>" not in out.text
    assert out.tool_calls or out.text.strip(), out.output.text
    if out.tool_calls:
        assert out.finish_reason == "tool_calls" and out.tool_calls[0].name == "get_reservation_details"


def test_required_tool_call_is_grammar_constrained_in_qwen_format(tiny_qwen: LLM) -> None:
    msgs = [{"role": "user", "content": "Look up reservation ABC123."}]
    outs = tiny_qwen.chat([msgs, msgs], SamplingParams(temperature=1.0, seed=3, max_tokens=120), tools=TOOLS,
                          tool_choice="required", enable_thinking=False)
    for out in outs:  # a random model, yet every call is well formed, with properties in declared order
        assert out.tool_calls and out.tool_calls[0].name == "get_reservation_details", out.output.text
        assert list(out.tool_calls[0].arguments)[0] == "reservation_id"
        assert "<tool_call>" not in out.text and "<|im_end|>" not in out.text


def test_required_tool_call_is_grammar_constrained_in_deepseek_format(tiny_deepseek: LLM) -> None:
    tools = [{"type": "function", "function": {"name": "count_bags", "parameters": {"type": "object", "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 9}, "paid": {"type": "boolean"}}, "required": ["count", "paid"]}}}]
    out = tiny_deepseek.chat([{"role": "user", "content": "How many bags?"}],
                             SamplingParams(temperature=1.0, seed=1, max_tokens=120), tools=tools, tool_choice="required")[0]
    assert out.tool_calls and all((c.name, list(c.arguments)) == ("count_bags", ["count", "paid"]) for c in out.tool_calls), \
        out.output.text
    assert "<｜tool▁call▁begin｜>function<｜tool▁sep｜>count_bags\n```json\n" in out.output.text
