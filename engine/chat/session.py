"""`LLM.chat`: render with the model's own chat format, generate, parse the output (vLLM's LLM.chat)."""

from __future__ import annotations

import dataclasses
import json
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


def chat_params(llm: Any, fmt: ChatFormat, params: SamplingParams | None, tools: Sequence[dict[str, Any]] | None,
                tool_choice: str = "auto") -> SamplingParams:
    """`params` with the format's end-of-turn tokens as stops and, with tools, the family's tool-call
    grammar (xgrammar structural tag; `tool_choice="required"` forces at least one call)."""
    p = dataclasses.replace(params) if params is not None else SamplingParams()
    ends = [llm.tokenizer.token_to_id(t) for t in fmt.end_tokens]
    p.stop_token_ids = tuple(dict.fromkeys([*p.stop_token_ids, *(i for i in ends if i is not None)]))
    if tools and tool_choice != "none" and not p.constrained:
        tag = fmt.structural_tag(tools, required=tool_choice == "required")
        if tag is not None:
            import xgrammar as xgr

            p.grammar = str(xgr.Grammar.from_structural_tag(json.dumps(tag)))
    return p


def to_chat_output(fmt: ChatFormat, out: RequestOutput) -> ChatOutput:
    parsed = fmt.parse(out.text)
    reason = out.finish_reason.value if out.finish_reason else "stop"
    if parsed.tool_calls and out.finish_reason is FinishReason.STOP:
        reason = "tool_calls"
    return ChatOutput(parsed.content, parsed.tool_calls, parsed.reasoning, reason, out, parsed.errors)


def is_conversation(messages: Any) -> bool:
    return isinstance(messages, Sequence) and (not messages or isinstance(messages[0], dict))


def chat(llm: Any, messages: Sequence[Message] | Sequence[Sequence[Message]], params: SamplingParams | None = None, *,
         tools: Sequence[dict[str, Any]] | None = None, tool_choice: str = "auto", add_generation_prompt: bool = True,
         **template_kwargs: Any) -> list[ChatOutput]:
    """Generate one reply per conversation (`messages` is one conversation or a list of them)."""
    fmt = llm.chat_format
    convs = [messages] if is_conversation(messages) else list(messages)
    prompts = [fmt.render(c, tools, add_generation_prompt=add_generation_prompt, **template_kwargs) for c in convs]
    p = chat_params(llm, fmt, params, tools, tool_choice)
    outs = llm.generate([llm.encode(t) for t in prompts], [p] * len(prompts))
    return [to_chat_output(fmt, o) for o in outs]
