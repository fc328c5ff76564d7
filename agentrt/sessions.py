"""Conversation state kept across turns, as exact token ids, so each turn reuses the KV cache.

Turns render with the model's own chat template (engine.chat.ChatFormat). When the template is
prefix-stable (rendering the longer conversation starts with the text the session already holds),
a turn appends only the new text's ids: the exact ids the model generated stay in place and the
engine's cached prefix covers everything before the new messages. Many templates rewrite earlier
turns (Qwen3 drops the `<think>` block of an assistant turn once a new user turn follows); then the
whole conversation is re-encoded and the radix cache still matches the common prefix. The session
pins its ids (with a TTL) while the agent runs tools, so the next turn prefills only its new tokens.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Session:
    id: str
    token_ids: list[int] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    ttl: float | None = 30.0
    pinned: bool = False
    tools: list[dict[str, Any]] | None = None  # fixed by the first turn (templates list them up front)
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"enable_thinking": False}
    text: str = ""  # the text that `token_ids` encode
    num_incremental: int = 0  # turns appended after a prefix-stable rendering
    num_full_renders: int = 0  # turns for which the template rewrote earlier text (re-encoded)
    pin_deadline: float = 0.0  # time.monotonic() when the current pin's TTL runs out
    inflight: int = 0  # generate calls running on it now
    fork_point: tuple[int, int, int] = (0, 0, 0)  # (token ids, messages, text) before the running call's messages

    def fork(self, new_id: str) -> Session:
        """A new session holding this one's conversation as it was before its running call."""
        n_ids, n_msgs, n_text = self.fork_point
        return Session(id=new_id, token_ids=self.token_ids[:n_ids], messages=self.messages[:n_msgs], ttl=self.ttl,
                       tools=self.tools, template_kwargs=dict(self.template_kwargs), text=self.text[:n_text])

    def extend(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, encode: Any, fmt: Any) -> None:
        """Append messages (the first call may carry the system turn and the tool list)."""
        if not messages:
            return
        if not self.messages and not self.token_ids:
            self.tools = tools
        self.messages.extend(messages)
        self._sync(fmt.render(self.messages, self.tools, add_generation_prompt=False, **self.template_kwargs), encode)

    def _sync(self, full: str, encode: Any) -> None:
        if full.startswith(self.text):
            self.token_ids.extend(encode(full[len(self.text):]))
            self.num_incremental += 1
        else:
            self.token_ids = encode(full)
            self.num_full_renders += 1
        self.text = full

    def prompt(self, encode: Any, fmt: Any) -> list[int]:
        """The ids to generate the next assistant turn from (the template's generation prompt appended)."""
        return self.token_ids + encode(self.generation_prompt(fmt))

    def generation_prompt(self, fmt: Any) -> str:
        """What the template adds to open an assistant turn, e.g. `<|assistant|>` or `<|im_start|>assistant\\n`."""
        kw = self.template_kwargs
        with_prompt = fmt.render(self.messages, self.tools, add_generation_prompt=True, **kw)
        without = fmt.render(self.messages, self.tools, add_generation_prompt=False, **kw)
        if not with_prompt.startswith(without):
            raise ValueError("the chat template's generation prompt rewrites the conversation; cannot continue a session")
        return with_prompt[len(without):]

    def commit_turn(self, prompt_ids: list[int], output_ids: list[int], prompt_text: str, output_text: str,
                    message: dict[str, Any], fmt: Any, raw_message: dict[str, Any] | None = None) -> None:
        """Record the assistant turn exactly as generated (`output_ids` already closed by an end token)
        and the message later turns render: the parsed `message`, or `raw_message` (the output as plain
        content) when only that renders back to the generated text (a malformed or cut-off call)."""
        self.token_ids = prompt_ids + list(output_ids)
        self.text = prompt_text + output_text
        if raw_message is not None and not self._renders_as(message, fmt) and self._renders_as(raw_message, fmt):
            message = raw_message
        self.messages.append(message)

    def _renders_as(self, message: dict[str, Any], fmt: Any) -> bool:
        return bool(fmt.render([*self.messages, message], self.tools, add_generation_prompt=False, **self.template_kwargs) == self.text)


@dataclass(slots=True)
class ToolLatencies:
    """Each tool's latency distribution, learned online from its recent calls: the TTL of the KV pin
    an agent holds while it waits on that tool (Continuum). The TTL is the `quantile` of the last
    `window` observed latencies (p90 by default), `prior` seconds before a tool was ever seen."""

    quantile: float = 0.9
    window: int = 64
    prior: float = 30.0
    _samples: dict[str, deque[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile}")
        if self.window < 1 or self.prior <= 0:
            raise ValueError(f"window must be >= 1 and prior > 0, got {self.window}, {self.prior}")

    def observe(self, tool: str, seconds: float) -> None:
        self._samples.setdefault(tool, deque(maxlen=self.window)).append(max(0.0, seconds))

    def ttl(self, tool: str) -> float:
        """Seconds to keep the caller's KV pinned while `tool` runs."""
        xs = self._samples.get(tool)
        if not xs:
            return self.prior
        ordered = sorted(xs)
        return ordered[min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)]
