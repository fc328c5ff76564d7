"""Multi-turn airline customer support on the embedded model and the airline tools.

Input: one `request`, or the `user_turns` of a conversation (e.g. a recorded tau-bench run's user
messages). Each user turn runs the tool loop on the job's own copy of the airline database; the
session keeps the conversation's KV cache between turns.

Before a booking or a cancellation the job stops at an interrupt asking the user to confirm (status
"interrupted", payload {"confirm": tool, "arguments": ...}); resume it with `{"approved": true}` to
go ahead or anything else to decline. `confirm=false` skips the question (non-interactive runs).
Note that a resumed job replays its earlier tool calls from the journal: the job's in-memory copy of
the database does not see the changes they made, so a turn that changed it before a confirmation
reads the original records afterwards.
"""

from __future__ import annotations

from typing import Any

from agentrt import graph
from agentrt.agents import tool_loop
from engine.config import data_dir
from tools.airline import TOOLS, use_database
from tools.airline_db import airline_db

SHORT_POLICY = (
    "# Airline Agent Policy\n\nThe current time is 2024-05-15 15:00:00 EST.\n\n"
    "You help users book, modify or cancel flight reservations. Ask for the user id first, "
    "confirm actions with the user, and use one tool call at a time."
)


CONFIRM = ("book_reservation", "cancel_reservation")  # actions the user confirms first


def system_prompt() -> str:
    """The tau-bench policy when the data directory has it, else a short policy of our own."""
    path = data_dir() / "tau-bench-airline" / "policy.md"
    return path.read_text() if path.exists() else SHORT_POLICY


@graph
async def airline_support(
    ctx: Any, request: str = "Hi, I want to check the status of my reservation.", user_turns: list[str] = [],  # noqa: B006
    database: str = "auto", max_steps: int = 4, max_tokens: int = 96, confirm: bool = True,
) -> dict[str, Any]:
    """Answer a customer (one request or several user turns), calling airline tools as needed."""
    db = airline_db(database).copy()
    turns = user_turns or [request]
    transcript: list[dict[str, Any]] = []
    with use_database(db):
        for i, user in enumerate(turns):
            messages = ([{"role": "system", "content": system_prompt()}] if i == 0 else []) + [{"role": "user", "content": user}]
            out = await tool_loop.fn(ctx, messages, TOOLS, max_steps=max_steps, max_tokens=max_tokens,
                                     confirm=CONFIRM if confirm else ())
            transcript.append({"user": user, **out})
            if out["stopped"] == "context":
                break
    return {"turns": transcript, "session_tokens": len(ctx.session.token_ids)}
