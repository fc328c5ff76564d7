"""Chat templates render exactly as transformers' apply_chat_template renders them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from engine.chat import ChatFormat, ChatTemplate
from engine.config import DEFAULT_MODEL_DIR
from engine.errors import InvalidRequestError
from engine.tokenizer import render_chat

TOOLS = [{"type": "function", "function": {"name": "get_reservation_details", "description": "Get a reservation.\nMore text.",
          "parameters": {"type": "object", "properties": {"reservation_id": {"type": "string"}, "verbose": {"type": "boolean"}},
                         "required": ["reservation_id"]}}}]
CONV: list[dict[str, Any]] = [
    {"role": "system", "content": "You are an airline agent."},
    {"role": "user", "content": "Cancel ABC123 — please, héllo."},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "get_reservation_details", "arguments": '{"reservation_id": "ABC123"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"status": "confirmed"}'},
    {"role": "assistant", "content": "It is confirmed. Cancel it?"},
    {"role": "user", "content": "Yes."},
]


def hf_render(path: Path, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool, **kwargs: Any) -> str:
    """transformers' rendering of the same messages (a None content given as "", as servers pass it)."""
    messages = [{**m, "content": m["content"] if m["content"] is not None else ""} for m in messages]
    tok = hf_tokenizer(path)
    return str(tok.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs))


@functools.lru_cache(maxsize=4)
def hf_tokenizer(path: Path) -> Any:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("agp", [True, False])
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_default_model_template_renders_like_transformers_and_the_old_format(tools: Any, agp: bool) -> None:
    fmt = ChatFormat.from_model_dir(DEFAULT_MODEL_DIR)
    assert fmt is not None and fmt.family == "agentrt" and fmt.end_tokens == ("<|end|>",)
    for k in range(1, len(CONV) + 1):
        ours = fmt.render(CONV[:k], tools, add_generation_prompt=agp)
        from engine.chat.template import parse_tool_call_arguments

        assert ours == hf_render(DEFAULT_MODEL_DIR, parse_tool_call_arguments(CONV[:k]), tools, agp)
        assert ours == render_chat(CONV[:k], tools, add_generation_prompt=agp)


@pytest.mark.parametrize("thinking", [True, False])
def test_qwen3_template_with_tools_and_thinking_flag_matches_transformers(qwen3_dir: Path, thinking: bool) -> None:
    fmt = ChatFormat.from_model_dir(qwen3_dir)
    assert fmt is not None and fmt.family == "hermes" and fmt.think and fmt.end_tokens == ("<|im_end|>",)
    from engine.chat.template import parse_tool_call_arguments

    for k in range(1, len(CONV) + 1):
        ours = fmt.render(CONV[:k], TOOLS, add_generation_prompt=True, enable_thinking=thinking)
        assert ours == hf_render(qwen3_dir, parse_tool_call_arguments(CONV[:k]), TOOLS, True, enable_thinking=thinking)
    assert ("<think>\n\n</think>" in ours) is (not thinking)


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_deepseek_v3_template_matches_transformers(deepseek_dir: Path, tools: Any) -> None:
    fmt = ChatFormat.from_model_dir(deepseek_dir)
    assert fmt is not None and fmt.family == "deepseek_v3"
    for k in (2, 4, 6):
        ours = fmt.render(CONV[:k], tools, add_generation_prompt=True)
        assert ours == hf_render(deepseek_dir, [{kk: v for kk, v in m.items()} for m in CONV[:k]], tools, True)
    assert ours.startswith("<｜begin▁of▁sentence｜>You are an airline agent.<｜User｜>")
    assert "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" in ours and ours.endswith("<｜User｜>Yes.<｜Assistant｜>")


def test_harmony_renders_tools_and_the_assistant_prompt(gptoss_dir: Path, tmp_path: Path) -> None:
    import shutil

    (tmp_path / "config.json").write_text('{"model_type": "gpt_oss"}')
    shutil.copy(gptoss_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    fmt = ChatFormat.from_model_dir(tmp_path, control_tokens=["<|channel|>"])
    assert fmt is not None and fmt.family == "harmony"
    text = fmt.render(CONV[:4], TOOLS)
    assert text.startswith("<|start|>system<|message|>") and text.endswith("<|start|>assistant")
    assert "namespace functions" in text and "type get_reservation_details = " in text
    assert '<|start|>assistant to=functions.get_reservation_details<|channel|>commentary json<|message|>{"reservation_id": "ABC123"}<|call|>' in text
    assert "<|start|>functions.get_reservation_details to=assistant<|channel|>commentary<|message|>" in text


def test_templates_run_sandboxed_and_report_their_own_errors() -> None:
    bad = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(Exception, match="unsafe|attribute"):
        bad.render([{"role": "user", "content": "x"}])
    fmt = ChatFormat.from_model_dir(DEFAULT_MODEL_DIR)
    assert fmt is not None
    with pytest.raises(InvalidRequestError, match="unknown chat role 'robot'"):
        fmt.render([{"role": "robot", "content": "x"}])
