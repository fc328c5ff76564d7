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
