"""agentrt's default model's chat format: special tokens, rendering and tool-call parsing.

A conversation renders as `<|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>` with tool
results as `<|tool|>...<|end|>`. An assistant tool call is
`<tool_call>{"name": "...", "arguments": {...}}</tool_call>` inside the assistant turn. The format
is the jinja `chat_template` in the default model's tokenizer_config.json (engine.chat renders it as
transformers does); this module keeps the helpers training and tests use. Rendering is
prefix-stable: the rendering of a conversation followed by the model's output is the rendering of
the longer conversation, so each turn reuses the previous turn's KV cache.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SYSTEM, USER, ASSISTANT, TOOL, END = "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"
CALL_OPEN, CALL_CLOSE, PAD, EOS = "<tool_call>", "</tool_call>", "<|pad|>", "<|eos|>"
SPECIAL_TOKENS = [PAD, EOS, SYSTEM, USER, ASSISTANT, TOOL, END, CALL_OPEN, CALL_CLOSE]

Message = dict[str, Any]


def render_tool_call(name: str, arguments: dict[str, Any] | str) -> str:
    """One call as the default model writes it (the same text its chat template renders)."""
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    return f"{CALL_OPEN}{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}{CALL_CLOSE}"


def render_message(message: Message) -> str:
    """One turn, OpenAI message format (role, content, optional tool_calls), in the default model's
    format. Raises InvalidRequestError (a ValueError) for an unknown role."""
    return render_chat([message], add_generation_prompt=False)


def render_chat(messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None, add_generation_prompt: bool = True) -> str:
    """Render a conversation with the default model's chat template (its tokenizer_config.json);
    `tools` (OpenAI schemas) are listed at the end of the system turn."""
    return _default_format().render(messages, tools, add_generation_prompt=add_generation_prompt)


@functools.lru_cache(maxsize=1)
def _default_format() -> Any:
    from engine.chat.format import ChatFormat
    from engine.config import DEFAULT_MODEL_DIR

    return ChatFormat.from_model_dir(DEFAULT_MODEL_DIR)


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


class ChatTokenizer:
    """A `tokenizers` byte-level BPE with the chat special tokens."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        self.tok = Tokenizer.from_file(str(file))
        self.special: dict[str, int] = {t: self.tok.token_to_id(t) for t in SPECIAL_TOKENS}  # type: ignore[misc]
        missing = [t for t, i in self.special.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer {file} lacks special tokens {missing}")
        self.end_id: int = int(self.special[END])  # type: ignore[arg-type]

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def encode_chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None, add_generation_prompt: bool = True) -> list[int]:
        return self.encode(render_chat(messages, tools, add_generation_prompt))
