"""Conversation state kept across turns, as exact token ids, so each turn reuses the KV cache.

The session never re-tokenises what the model generated: turn N+1's prompt is turn N's prompt, the
exact generated ids, then the new messages' ids. The engine caches that prefix; the session pins it
(with a TTL) while the agent runs tools, so the next turn prefills only its new tokens.
"""

from __future__ import annotations

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
    inflight: int = 0  # generate calls running on it now
    fork_point: tuple[int, int] = (0, 0)  # (token ids, messages) before the running call's messages

    def fork(self, new_id: str) -> Session:
        """A new session holding this one's conversation as it was before its running call."""
        n_ids, n_msgs = self.fork_point
        return Session(new_id, self.token_ids[:n_ids], self.messages[:n_msgs], self.ttl)

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
