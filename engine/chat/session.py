"""`LLM.chat`: render with the model's own chat format, generate, parse the output (vLLM's LLM.chat)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.chat.format import ChatFormat
from engine.chat.parsers import ToolCall
from engine.errors import InvalidRequestError
from engine.sequence import FinishReason, RequestOutput, SamplingParams

Message = dict[str, Any]


@dataclass(slots=True)
class ChatOutput:
    """One conversation's reply: `text` without special tokens or tool-call markup, the parsed
    `tool_calls` and `reasoning`, and the engine's raw `output` (token ids, usage)."""

    text: str
    tool_calls: list[ToolCall]
    reasoning: str | None
    finish_reason: str
    output: RequestOutput
    tool_call_errors: list[str] = field(default_factory=list)


def load_chat_format(llm: Any) -> ChatFormat:
    """The chat format of `llm`'s model. Raises InvalidRequestError when it has none."""
    if llm.tokenizer is None:
        raise InvalidRequestError("this model has no tokenizer.json: chat needs one")
    specials = tuple(t.content for t in llm.tokenizer.get_added_tokens_decoder().values() if t.special)
    fmt = ChatFormat.from_model_dir(llm.config.model_path, control_tokens=specials)
    if fmt is None:
        raise InvalidRequestError(f"model {llm.config.model_path} has no chat_template in tokenizer_config.json")
    return fmt


def select_tools(tools: Sequence[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None
                 ) -> tuple[list[dict[str, Any]] | None, str]:
    """(the tools calls may name, "auto" | "required" | "none") for an OpenAI `tool_choice`: "auto"
    (or None) lets the model choose, "required" forces one or more calls, "none" disables tools, and
    `{"type": "function", "function": {"name": N}}` forces a call of N. Raises InvalidRequestError
    for a name that is not among `tools` or an unknown choice."""
    tools = list(tools) if tools else None
    if not tools or tool_choice == "none":
        return tools, "none"
    if tool_choice is None or tool_choice in ("auto", "required"):
        return tools, str(tool_choice or "auto")
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t.get("function", t).get("name") == name]
        if not chosen:
            raise InvalidRequestError(f"tool_choice names {name!r}, which is not among the tools")
        return chosen, "required"
    raise InvalidRequestError(f"tool_choice must be none, auto, required or a function, got {tool_choice!r}")


def chat_params(llm: Any, fmt: ChatFormat, params: SamplingParams | None, tools: Sequence[dict[str, Any]] | None,
                tool_choice: str = "auto", reasoning: bool = True) -> SamplingParams:
    """`params` with the format's end-of-turn tokens as stops and, with tools (`tool_choice` "auto" or
    "required", as select_tools resolves it), the family's tool-call grammar as an xgrammar
    structural tag. A request that already carries a grammar (json_schema) keeps it."""
    p = dataclasses.replace(params) if params is not None else SamplingParams()
    ends = [llm.tokenizer.token_to_id(t) for t in fmt.end_tokens]
    p.stop_token_ids = tuple(dict.fromkeys([*p.stop_token_ids, *(i for i in ends if i is not None)]))
    if tools and tool_choice != "none" and not p.constrained:
        p.structural_tag = fmt.structural_tag(tools, required=tool_choice == "required", reasoning=reasoning)
    return p


def to_chat_output(fmt: ChatFormat, out: RequestOutput) -> ChatOutput:
    parsed = fmt.parse(out.text, partial=not out.finished)
    reason = out.finish_reason.value if out.finish_reason else "stop"
    if parsed.tool_calls and out.finish_reason is FinishReason.STOP:
        reason = "tool_calls"
    return ChatOutput(parsed.content, parsed.tool_calls, parsed.reasoning, reason, out, parsed.errors)


def is_conversation(messages: Any) -> bool:
    return isinstance(messages, Sequence) and (not messages or isinstance(messages[0], dict))


def chat(llm: Any, messages: Sequence[Message] | Sequence[Sequence[Message]], params: SamplingParams | None = None, *,
         tools: Sequence[dict[str, Any]] | None = None, tool_choice: str | dict[str, Any] | None = "auto",
         add_generation_prompt: bool = True, **template_kwargs: Any) -> list[ChatOutput]:
    """Generate one reply per conversation (`messages` is one conversation or a list of them).
    `tool_choice` as in OpenAI's API (see select_tools); with "none" the tools are not rendered."""
    fmt = llm.chat_format
    offered, mode = select_tools(tools, tool_choice)
    convs = [messages] if is_conversation(messages) else list(messages)
    shown = tools if mode != "none" else None
    prompts = [fmt.render(c, shown, add_generation_prompt=add_generation_prompt, **template_kwargs) for c in convs]
    p = chat_params(llm, fmt, params, offered, mode, reasoning=template_kwargs.get("enable_thinking") is not False)
    outs = llm.generate([llm.encode(t) for t in prompts], [p] * len(prompts))
    return [to_chat_output(fmt, o) for o in outs]
