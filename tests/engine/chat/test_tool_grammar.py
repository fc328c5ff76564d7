"""Grammar-constrained tool calls in every family's format (gpt-oss harmony included) and OpenAI
`tool_choice` for LLM.chat: "auto", "required", a named function, "none"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine import LLM, SamplingParams
from engine.chat import parse_output
from engine.chat.grammar import tool_call_tag
from engine.chat.session import chat_params, select_tools
from engine.errors import InvalidRequestError
from engine.structured import GrammarFactory

BAGS = {"type": "function", "function": {"name": "count_bags", "description": "Count the checked bags.", "parameters": {
    "type": "object", "properties": {"count": {"type": "integer", "minimum": 0, "maximum": 9}, "paid": {"type": "boolean"},
                                     "note": {"type": "string", "maxLength": 6}},
    "required": ["count", "paid", "note"], "additionalProperties": False}}}
SEAT = {"type": "function", "function": {"name": "pick_seat", "description": "Pick a seat.", "parameters": {
    "type": "object", "properties": {"row": {"type": "integer", "minimum": 1, "maximum": 40},
                                     "letter": {"type": "string", "enum": ["A", "B", "C", "D"]}},
    "required": ["row", "letter"], "additionalProperties": False}}}
TOOLS = [BAGS, SEAT]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
CALL = ('<|channel|>commentary to=functions.count_bags <|constrain|>json<|message|>'
        '{"count": 2, "paid": false, "note": "ok"}<|call|>')


def assert_valid_calls(out: Any, names: set[str]) -> None:
    """Every call names one of `names`, follows its schema, with properties in declared order."""
    assert out.tool_calls and not out.tool_call_errors, out.output.text
    for call in out.tool_calls:
        assert call.name in names, out.output.text
        jsonschema.validate(call.arguments, SCHEMAS[call.name])
        assert list(call.arguments) == list(SCHEMAS[call.name]["properties"])  # all required, declared order
    assert out.finish_reason == "tool_calls" and "<|" not in out.text


@pytest.fixture(scope="module")
def harmony_grammar(gptoss_dir: Path) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(gptoss_dir / "tokenizer.json"))
    factory = GrammarFactory(tok, tok.get_vocab_size(), [tok.token_to_id("<|return|>")])

    def accepts(text: str, **kw: Any) -> bool:
        matcher = factory.matcher(None, None, tool_call_tag("harmony", TOOLS, **kw))
        return all(matcher.accept_token(i) for i in tok.encode(text, add_special_tokens=False).ids)

    return accepts


def test_harmony_grammar_takes_reasoning_then_a_call_on_the_commentary_channel(harmony_grammar: Any) -> None:
    accepts = harmony_grammar
    assert accepts("<|channel|>analysis<|message|>Two bags, unpaid.<|end|><|start|>assistant" + CALL, required=True)
    assert accepts(CALL, required=True) and accepts(CALL, required=True, reasoning=False)
    assert not accepts("<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant" + CALL, required=True, reasoning=False)
    assert not accepts("<|channel|>final<|message|>No bags.", required=True)  # required: a call, not an answer
    assert accepts("<|channel|>final<|message|>No bags.<|return|>")  # auto: either
    parsed = parse_output("harmony", "<|channel|>analysis<|message|>Two bags.<|end|><|start|>assistant" + CALL)
    assert parsed.reasoning == "Two bags." and [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("count_bags", {"count": 2, "paid": False, "note": "ok"})]


def test_harmony_grammar_holds_the_schema_and_keeps_the_call_token_out_of_strings(harmony_grammar: Any) -> None:
    accepts = harmony_grammar
    assert not accepts(CALL.replace('"ok"', '"o<|call|>k"'))  # the <|call|> token inside a string
    assert not accepts(CALL.replace('"count": 2, "paid": false', '"paid": false, "count": 2'))  # declared order
    assert not accepts(CALL.replace('"ok"', '"far too long"'))  # maxLength 6 still holds
    assert not accepts(CALL.replace('"count": 2', '"count": 12'))  # maximum 9
    assert not accepts(CALL.replace("count_bags", "cancel_all"))  # only the offered tools
    assert not accepts(CALL.replace(" <|constrain|>json", ""))  # the header as gpt-oss writes it


def test_gpt_oss_required_calls_from_a_random_model_parse_into_valid_calls(tiny_gptoss: LLM) -> None:
    assert tiny_gptoss.chat_format.family == "harmony"
    msgs = [{"role": "system", "content": "You help with luggage."}, {"role": "user", "content": "I have two bags."}]
    outs = tiny_gptoss.chat([msgs, msgs], SamplingParams(temperature=1.0, seed=5, max_tokens=60), tools=TOOLS,
                            tool_choice="required", enable_thinking=False)
    for out in outs:
        assert_valid_calls(out, {"count_bags", "pick_seat"})
        assert out.output.text.startswith("<|channel|>commentary to=functions.") and "<|constrain|>json<|message|>" in out.output.text
        assert out.output.text.endswith("<|call|>") and len(out.tool_calls) == 1


@pytest.mark.parametrize("model", ["default_llm", "tiny_qwen", "tiny_deepseek", "tiny_gptoss"])
def test_a_named_tool_choice_forces_that_tool_in_every_family(model: str, request: pytest.FixtureRequest) -> None:
    llm = request.getfixturevalue(model)
    msgs = [{"role": "system", "content": "# Airline Agent Policy\nYou are an airline agent."},
            {"role": "user", "content": "I would like a window seat please."}]
    out = llm.chat(msgs, SamplingParams(temperature=1.0, seed=2, max_tokens=80), tools=TOOLS, enable_thinking=False,
                   tool_choice={"type": "function", "function": {"name": "pick_seat"}})[0]
    assert_valid_calls(out, {"pick_seat"})


def test_required_makes_the_default_model_call_a_tool(default_llm: LLM) -> None:
    msgs = [{"role": "system", "content": "# Airline Agent Policy\nYou are an airline agent."},
            {"role": "user", "content": "Hello there."}]
    out = default_llm.chat(msgs, SamplingParams(temperature=0.0, max_tokens=64), tools=TOOLS, tool_choice="required")[0]
    assert_valid_calls(out, {"count_bags", "pick_seat"})
    assert out.output.text.endswith("</tool_call><|end|>")


def test_tool_choice_none_shows_no_tools_and_applies_no_grammar(default_llm: LLM) -> None:
    msgs = [{"role": "system", "content": "# Airline Agent Policy\nYou are an airline agent."},
            {"role": "user", "content": "Hello there."}]
    params = SamplingParams(temperature=0.0, max_tokens=16)
    with_tools, without = (default_llm.chat(msgs, params, tools=TOOLS, tool_choice=c)[0] for c in ("auto", "none"))
    no_tools = default_llm.chat(msgs, params)[0]
    assert without.output.prompt_token_ids == no_tools.output.prompt_token_ids != with_tools.output.prompt_token_ids
    assert without.output.token_ids == no_tools.output.token_ids
    tools, mode = select_tools(TOOLS, "none")
    assert mode == "none" and chat_params(default_llm, default_llm.chat_format, params, tools, mode).structural_tag is None


def test_tool_choice_is_checked_at_the_boundary() -> None:
    assert select_tools(TOOLS, {"type": "function", "function": {"name": "pick_seat"}}) == ([SEAT], "required")
    assert select_tools(TOOLS, None) == (TOOLS, "auto") and select_tools(None, "required") == (None, "none")
    with pytest.raises(InvalidRequestError, match="'fly'"):
        select_tools(TOOLS, {"type": "function", "function": {"name": "fly"}})
    with pytest.raises(InvalidRequestError, match="'sometimes'"):
        select_tools(TOOLS, "sometimes")
