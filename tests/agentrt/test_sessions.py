"""Sessions render with real chat templates: incrementally when the template is prefix-stable, by
full re-rendering when it rewrites earlier turns (and the prefix cache still matches the common part)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from agentrt.sessions import Session
from engine import LLM, SamplingParams
from engine.chat import ChatFormat
from engine.chat.fixtures import FixtureMissingError, tiny_model, tokenizer_dir
from engine.config import DEFAULT_MODEL_DIR

TOOLS = [{"type": "function", "function": {"name": "get_user_details", "description": "Get a user.",
          "parameters": {"type": "object", "properties": {"user_id": {"type": "string"}}, "required": ["user_id"]}}}]


def qwen3_dir() -> Path:
    try:
        return tokenizer_dir("qwen3")
    except FixtureMissingError as exc:
        pytest.fail(str(exc))


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def turn(sess: Session, fmt: ChatFormat, encode: Any, output: str, message: dict[str, Any]) -> list[int]:
    """One assistant turn whose generated text is `output`; returns the prompt ids it was generated from."""
    opener = sess.generation_prompt(fmt)
    prompt = sess.token_ids + encode(opener)
    sess.commit_turn(prompt, encode(output), sess.text + opener, output, message, fmt)
    return prompt


def test_default_template_appends_every_turn_incrementally() -> None:
    fmt = ChatFormat.from_model_dir(DEFAULT_MODEL_DIR)
    assert fmt is not None
    tok = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    encode = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
    sess = Session("s")
    sess.extend([{"role": "system", "content": "policy"}, {"role": "user", "content": "I am mia_li_3668."}], TOOLS, encode, fmt)
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function", "function": {
        "name": "get_user_details", "arguments": {"user_id": "mia_li_3668"}}}]}
    generated = turn(sess, fmt, encode, '<tool_call>{"name": "get_user_details", "arguments": {"user_id": "mia_li_3668"}}</tool_call><|end|>', call)
    sess.extend([{"role": "tool", "content": '{"name": "Mia"}'}], TOOLS, encode, fmt)
    assert sess.num_full_renders == 0 and sess.num_incremental == 2
    assert sess.token_ids[: len(generated)] == generated  # the generated ids stay in place
    assert sess.text == fmt.render(sess.messages, TOOLS, add_generation_prompt=False)


def test_qwen3_template_rewrites_earlier_turns_and_the_session_re_renders() -> None:
    path = qwen3_dir()
    fmt = ChatFormat.from_model_dir(path)
    assert fmt is not None
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    encode = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
    sess = Session("s")
    sess.extend([{"role": "system", "content": "policy"}, {"role": "user", "content": "Hi."}], None, encode, fmt)
    turn(sess, fmt, encode, "<think>\nGreet them.\n</think>\n\nHello!<|im_end|>",
         {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet them."})
    before = list(sess.token_ids)
    sess.extend([{"role": "user", "content": "Cancel my trip."}], None, encode, fmt)  # Qwen3 drops the old <think>
    assert sess.num_full_renders == 1
    full = fmt.render(sess.messages, None, add_generation_prompt=False)
    assert sess.text == full and sess.token_ids == encode(full)
    assert 5 < common_prefix(before, sess.token_ids) < len(before)  # the system and first user turns are shared


def test_the_radix_cache_serves_the_common_prefix_after_a_re_render(tmp_path: Path) -> None:
    qwen3_dir()
    llm = LLM(tiny_model("qwen3", tmp_path / "m"), device="cpu", dtype="float32", num_kv_blocks=64)
    fmt = llm.chat_format
    encode = llm.encode
    sess = Session("s")
    sess.extend([{"role": "system", "content": "You are an airline agent. " * 6}, {"role": "user", "content": "Hi."}], None, encode, fmt)
    first = turn(sess, fmt, encode, "<think>\nGreet.\n</think>\n\nHello!<|im_end|>", {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet."})
    llm.generate([first], SamplingParams(max_tokens=1))
    sess.extend([{"role": "user", "content": "Cancel my trip."}], None, encode, fmt)
    second = sess.prompt(encode, fmt)
    out = llm.generate([second], SamplingParams(max_tokens=1))[0]
    assert sess.num_full_renders == 1 and out.usage.cached_tokens == common_prefix(first, second) // 16 * 16 > 0
    llm.close()
