"""Structured output: properties in declared order; special tokens never inside constrained JSON."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from engine.chat.tool_calls import CALL_CLOSE, parse_tool_calls
from engine.config import DEFAULT_MODEL_DIR
from engine.errors import InvalidRequestError
from engine.structured import GrammarFactory

CALL = {"type": "object", "properties": {"name": {"const": "book"}, "arguments": {"type": "object"}},
        "required": ["name", "arguments"], "additionalProperties": False}


@pytest.fixture(scope="module")
def factory() -> GrammarFactory:
    tok = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    return GrammarFactory(tok, tok.get_vocab_size(), [6])


def test_properties_are_generated_in_declared_order(factory: GrammarFactory) -> None:
    assert factory.matcher(CALL, None).accept_string('{"name": "book", "arguments": ')
    assert not factory.matcher(CALL, None).accept_string('{"arguments"')
    answer_first = {"type": "object", "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}},
                    "required": ["reasoning", "answer"]}
    assert factory.matcher(answer_first, None).accept_string('{"reasoning": ')
    assert not factory.matcher(answer_first, None).accept_string('{"answer"')


def test_a_special_closing_tag_cannot_be_emitted_inside_a_json_string(factory: GrammarFactory) -> None:
    import xgrammar as xgr

    tok = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    close_id = tok.token_to_id(CALL_CLOSE)
    matcher = factory.matcher({"type": "object", "properties": {"note": {"type": "string"}}}, None)
    assert matcher.accept_string('{"note": "a')
    mask = xgr.allocate_token_bitmask(1, factory.vocab_size)
    matcher.fill_next_token_bitmask(mask)
    allowed = xgr.testing._get_masked_tokens_from_bitmask(mask, factory.vocab_size)
    assert close_id in allowed  # the helper lists the *rejected* ids
    assert tok.token_to_id("a") not in allowed


def test_a_closing_tag_inside_a_string_does_not_split_the_call() -> None:
    text = '<tool_call>{"name": "note", "arguments": {"text": "a</tool_call>b"}}</tool_call><tool_call>{"name": "x", "arguments": {}}</tool_call>'
    assert parse_tool_calls(text) == [("note", {"text": "a</tool_call>b"}), ("x", {})]


def test_structural_tag_markers_are_matched_as_their_special_tokens_only(factory: GrammarFactory) -> None:
    tok = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    schema = {"type": "object", "properties": {"token": {"type": "string", "maxLength": 3, "default": "x"}}, "required": ["token"]}
    tag = {"type": "structural_tag", "format": {"type": "tag", "begin": {"type": "token", "token": "<tool_call>"},
                                                "content": {"type": "json_schema", "json_schema": schema},
                                                "end": {"type": "token", "token": "</tool_call>"}}}

    def accepts(ids: list[int]) -> bool:
        matcher = factory.matcher(None, None, tag)
        return all(matcher.accept_token(i) for i in ids)

    open_id, close_id = tok.token_to_id("<tool_call>"), tok.token_to_id("</tool_call>")
    body = tok.encode('{"token": "ab"}', add_special_tokens=False).ids
    assert accepts([open_id, *body, close_id])
    spelled = tok.encode("<", add_special_tokens=False).ids + tok.encode("tool_call>", add_special_tokens=False).ids
    assert tok.decode(spelled) == "<tool_call>" and not accepts(spelled + body)  # the token, not its text
    assert not accepts([open_id, *tok.encode('{"token": "a', add_special_tokens=False).ids, close_id])  # not inside a string
    assert not accepts([open_id, *tok.encode('{"token": "abcd"}', add_special_tokens=False).ids])  # maxLength holds
    with pytest.raises(InvalidRequestError, match="<nope>"):
        factory.matcher(None, None, {"type": "structural_tag", "format": {"type": "token", "token": "<nope>"}})
