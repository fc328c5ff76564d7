"""agentrt.agents.tool_loop's confirmation step, on a scripted context (no model)."""

from __future__ import annotations

from typing import Any

from agentrt.agents import tool_loop
from agentrt.sessions import Session
from agentrt.types import Generation, ToolCall, Usage


class Scripted:
    """A context whose model first calls `cancel_reservation`, then answers; the human answers `answer`."""

    def __init__(self, answer: Any) -> None:
        self.answer, self.session, self.asked, self.ran = answer, Session("s"), [], []
        self.turn = 0
        self.seen: list[Any] = []

    async def generate(self, messages: Any, **_: Any) -> Generation:
        self.seen.append(messages)
        self.turn += 1
        calls = [ToolCall("c0", "cancel_reservation", {"reservation_id": "ABC"})] if self.turn == 1 else []
        return Generation(text="done" if not calls else "", token_ids=[], tool_calls=calls, finish_reason="stop", usage=Usage())

    async def interrupt(self, payload: Any) -> Any:
        self.asked.append(payload)
        return self.answer

    async def call(self, name: str, **args: Any) -> str:
        self.ran.append(name)
        return "cancelled"

    async def call_all(self, calls: list[ToolCall]) -> list[Any]:  # a turn's calls (run in order here)
        return [await self.call(c.name, **c.arguments) for c in calls]


async def test_a_confirmed_action_runs_and_a_declined_one_is_reported_to_the_model() -> None:
    yes = Scripted({"approved": True})
    out = await tool_loop.fn(yes, [{"role": "user", "content": "cancel"}], [], confirm=("cancel_reservation",))
    assert yes.asked == [{"confirm": "cancel_reservation", "arguments": {"reservation_id": "ABC"}}]
    assert yes.ran == ["cancel_reservation"] and out["answer"] == "done"
    no = Scripted({"approved": False})
    await tool_loop.fn(no, [{"role": "user", "content": "cancel"}], [], confirm=("cancel_reservation",))
    assert no.ran == [] and "did not confirm" in no.seen[1][0]["content"]
    skipped = Scripted(None)
    await tool_loop.fn(skipped, [{"role": "user", "content": "cancel"}], [])
    assert skipped.asked == [] and skipped.ran == ["cancel_reservation"]
