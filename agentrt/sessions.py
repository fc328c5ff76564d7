"""Conversation state kept across turns, as exact token ids, so each turn reuses the KV cache.

The session never re-tokenises what the model generated: turn N+1's prompt is turn N's prompt, the
exact generated ids, then the new messages' ids. The engine caches that prefix; the session pins it
(with a TTL) while the agent runs tools, so the next turn prefills only its new tokens.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.tokenizer import ASSISTANT, END, render_chat, render_message


@dataclass(slots=True)
class Session:
    id: str
    token_ids: list[int] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    ttl: float | None = 30.0
    pinned: bool = False
    pin_deadline: float = 0.0  # time.monotonic() when the current pin's TTL runs out

    def extend(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, encode: Any) -> None:
        """Append messages (the first call may carry the system turn and the tool list)."""
        if not messages:
            return
        text = render_chat(messages, tools, add_generation_prompt=False) if not self.token_ids else "".join(render_message(m) for m in messages)
        self.token_ids.extend(encode(text))
        self.messages.extend(messages)

    def prompt(self, encode: Any) -> list[int]:
        """The ids to generate the next assistant turn from."""
        return self.token_ids + encode(ASSISTANT)

    def commit_turn(self, prompt_ids: list[int], output_ids: list[int], end_id: int, text: str) -> None:
        """Record the assistant turn exactly as generated (closing it with <|end|> if it was cut)."""
        ids = list(output_ids)
        if not ids or ids[-1] != end_id:
            ids.append(end_id)
        self.token_ids = prompt_ids + ids
        self.messages.append({"role": "assistant", "content": text.removesuffix(END)})


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
