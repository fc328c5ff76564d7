"""gpt-oss's "harmony" format, rendered by the `openai-harmony` package.

openai-harmony loads the o200k vocabulary from `$TIKTOKEN_ENCODINGS_BASE` or downloads it; nothing
may download at run time, so the vocabulary file is written from the model's own tokenizer.json
(byte-level BPE ranks; openai-harmony checks its sha256, so a wrong file is refused, not misused).
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import InvalidRequestError, ModelLoadError

VOCAB_FILE = "o200k_base.tiktoken"
NUM_BASE_TOKENS = 199998  # o200k_base's ranks; harmony adds its special tokens above


def write_tiktoken_vocab(tokenizer_json: Path, out_dir: Path) -> Path:
    """Write `o200k_base.tiktoken` (base64 token bytes and rank per line) from a tokenizer.json."""
    vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]
    byte_of = _unicode_to_byte()
    lines = []
    for token, rank in sorted(vocab.items(), key=lambda kv: kv[1]):
        if rank < NUM_BASE_TOKENS:
            lines.append(f"{base64.b64encode(bytes(byte_of[ch] for ch in token)).decode()} {rank}\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / VOCAB_FILE
    path.write_text("".join(lines))
    return path


def _unicode_to_byte() -> dict[str, int]:
    """The inverse of the GPT-2 byte-level alphabet (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@functools.lru_cache(maxsize=4)
def load_encoding(model_dir: str, cache_dir: str) -> Any:
    """The harmony encoding for a gpt-oss model directory. Raises ModelLoadError without openai-harmony."""
    try:
        import openai_harmony as oh
    except ImportError as exc:
        raise ModelLoadError("gpt-oss models need the openai-harmony package (pip install openai-harmony)") from exc
    out = Path(cache_dir)
    if not (out / VOCAB_FILE).exists():
        write_tiktoken_vocab(Path(model_dir) / "tokenizer.json", out)
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(out)  # read by openai-harmony's loader
    try:
        return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
    except oh.HarmonyError as exc:
        raise ModelLoadError(f"openai-harmony refused the vocabulary written from {model_dir}: {exc}") from exc


class HarmonyTemplate:
    """Renders OpenAI-format messages and tools as a harmony conversation (text, special tokens kept)."""

    def __init__(self, model_dir: str | Path, cache_dir: str | Path) -> None:
        self.encoding = load_encoding(str(model_dir), str(cache_dir))

    def render(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None, *,
               add_generation_prompt: bool = True, reasoning_effort: str = "medium", **_: Any) -> str:
        import openai_harmony as oh

        conv = oh.Conversation.from_messages(_harmony_messages(messages, tools, reasoning_effort))
        if add_generation_prompt:
            ids = self.encoding.render_conversation_for_completion(conv, oh.Role.ASSISTANT)
        else:
            ids = self.encoding.render_conversation(conv)
        return str(self.encoding.decode(ids))


def _harmony_messages(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
                      effort: str) -> list[Any]:
    import openai_harmony as oh

    efforts = {"low": oh.ReasoningEffort.LOW, "medium": oh.ReasoningEffort.MEDIUM, "high": oh.ReasoningEffort.HIGH}
    if effort not in efforts:
        raise InvalidRequestError(f"reasoning_effort must be low, medium or high, got {effort!r}")
    out = [oh.Message.from_role_and_content(oh.Role.SYSTEM, oh.SystemContent.new().with_reasoning_effort(efforts[effort]))]
    instructions = "\n\n".join(m.get("content") or "" for m in messages if m["role"] in ("system", "developer"))
    if instructions or tools:
        dev = oh.DeveloperContent.new().with_instructions(instructions)
        if tools:
            fns = [t.get("function", t) for t in tools]
            dev = dev.with_function_tools([oh.ToolDescription.new(f["name"], f.get("description") or "", parameters=f.get("parameters"))
                                           for f in fns])
        out.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, dev))
    call_names: dict[str, str] = {}
    for m in messages:
        out.extend(_harmony_message(m, call_names))
    return out


def _harmony_message(m: dict[str, Any], call_names: dict[str, str]) -> list[Any]:
    import openai_harmony as oh

    role, content = m["role"], m.get("content") or ""
    if role in ("system", "developer"):
        return []
    if role == "user":
        return [oh.Message.from_role_and_content(oh.Role.USER, content)]
    if role == "tool":
        name = m.get("name") or call_names.get(m.get("tool_call_id") or "", "tool")
        author = oh.Author.new(oh.Role.TOOL, f"functions.{name}")
        return [oh.Message.from_author_and_content(author, content).with_channel("commentary").with_recipient("assistant")]
    if role != "assistant":
        raise InvalidRequestError(f"unknown chat role {role!r}; expected system, developer, user, assistant or tool")
    out = []
    reasoning = m.get("reasoning_content") or m.get("reasoning")
    if reasoning:
        out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, reasoning).with_channel("analysis"))
    for call in m.get("tool_calls") or ():
        fn = call.get("function", call)
        args = fn.get("arguments") or {}
        call_names[call.get("id") or ""] = fn["name"]
        out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, args if isinstance(args, str) else json.dumps(args))
                   .with_channel("commentary").with_recipient(f"functions.{fn['name']}").with_content_type("json"))
    if content:
        out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, content).with_channel("final"))
    return out
