"""A model's chat format: its template (jinja or harmony), its tool-call family, the tokens that end
an assistant turn, and the xgrammar structural tag that constrains tool calls in that family
(built in engine.chat.grammar)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.chat.grammar import tool_call_tag
from engine.chat.harmony import HarmonyTemplate
from engine.chat.parsers import ParsedOutput, parse_output, split_reasoning
from engine.chat.streaming import PartialCall, partial_tool_calls
from engine.chat.template import (
    ChatTemplate,
    parse_tool_call_arguments,
    read_tokenizer_config,
    special_tokens_of,
)
from engine.errors import InvalidRequestError, ModelLoadError

HARMONY_CACHE = Path.home() / ".cache" / "agentrt" / "harmony"


@dataclass(slots=True)
class ChatFormat:
    """How one model renders conversations and how its output is parsed.

    `family` is "agentrt", "hermes", "deepseek_v3" or "harmony"; `think` is whether the template
    uses `<think>` blocks; `end_tokens` end an assistant turn (generation stops at any of them).
    """

    family: str
    template: ChatTemplate | HarmonyTemplate
    end_tokens: tuple[str, ...]
    think: bool = False
    control_tokens: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_model_dir(cls, path: str | Path, control_tokens: Sequence[str] = ()) -> ChatFormat | None:
        """The format of the model in `path`; None when it has neither a chat template nor harmony.

        `control_tokens`: the tokenizer's special tokens (removed from parsed content)."""
        path = Path(path)
        config = read_tokenizer_config(path)
        if _model_type(path) == "gpt_oss" or ("<|channel|>" in control_tokens and "chat_template" not in config):
            return cls("harmony", HarmonyTemplate(path, HARMONY_CACHE), ("<|return|>", "<|call|>"),
                       control_tokens=tuple(control_tokens))
        template = ChatTemplate.from_model_dir(path)
        if template is None:
            return None
        eos = special_tokens_of(config).get("eos_token")
        return cls(_family(template.source), template, (eos,) if eos else (), think="<think>" in template.source,
                   control_tokens=tuple(control_tokens))

    def render(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None, *,
               add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text. Tool-call arguments given as JSON strings become objects for the templates
        that serialise them (`tojson`); DeepSeek-V3's concatenates strings and keeps them. A None
        `content` (an OpenAI assistant turn that only calls tools) renders as "", as vLLM's server does."""
        messages = [{**m, "content": ""} if m.get("content", "") is None else m for m in messages]
        if self.family in ("agentrt", "hermes"):
            messages = parse_tool_call_arguments(messages)
        elif self.family == "deepseek_v3":
            messages = [_arguments_as_strings(m) for m in messages]
        return self.template.render(messages, tools, add_generation_prompt=add_generation_prompt, **kwargs)

    def parse(self, text: str, partial: bool = False) -> ParsedOutput:
        """Content, reasoning and tool calls of an output (`partial`: one still being generated)."""
        return parse_output(self.family, text, self.control_tokens, self.think, partial)

    def partial_calls(self, text: str) -> list[PartialCall]:
        """The tool calls begun in an output so far, arguments as written (for streaming them)."""
        if self.think and self.family != "harmony":
            _, text = split_reasoning(text, partial=True)
        return partial_tool_calls(self.family, text)

    def structural_tag(self, tools: Sequence[dict[str, Any]], required: bool = False,
                       reasoning: bool = True) -> dict[str, Any] | None:
        """The xgrammar structural tag that constrains tool calls to this family's format (see
        engine.chat.grammar); `required` allows only calls. None without tools."""
        return tool_call_tag(self.family, tools, required=required, think=self.think, reasoning=reasoning)


def _family(source: str) -> str:
    if "<｜tool▁call▁begin｜>" in source:
        return "deepseek_v3"
    if "<|assistant|>" in source and "<tool_call>" in source:
        return "agentrt"
    return "hermes"


def _model_type(path: Path) -> str | None:
    if not (path / "config.json").exists():  # a tokenizer directory without a model
        return None
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {exc}") from exc


def _arguments_as_strings(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    out = []
    for call in calls:
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        if not isinstance(args, str | dict):
            raise InvalidRequestError(f"tool call arguments must be a JSON object or string, got {args!r}")
        fn = {**fn, "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}
        out.append({"type": "function", **call, "function": fn})
    return {**message, "tool_calls": out}
