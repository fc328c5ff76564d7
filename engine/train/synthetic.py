"""Synthetic airline conversations: the skill the demo needs, generated from the airline database.

The recorded tau-bench runs teach the domain, but 144 runs are too few for a small model to learn to
copy a user's ids into the right tool call. This module writes conversations from the airline
database (users, reservations, flights) and the policy: a user asks for something in varied wording
and names their ids (at once, or after the agent asks), the agent calls the right tool with the ids
copied exactly, reads the tool's result (the record as the tool returns it) and answers from it;
off-topic requests are declined; a request for a human is transferred; a mistyped id gets a
"not found" and a request to check it. Seeded and reproducible.

Honesty: users (and their reservations) that appear in the held-out airline tasks are never used, and
the remaining users are split by a hash of their id into `train` and `eval` (10%), so the synthetic
held-out figure in docs/model.md is on users the model never saw.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import data_file
from engine.train.data import Split, split_runs

Message = dict[str, Any]

GREETINGS = ["Hi!", "Hello.", "Hi there,", "Good morning!", "Hey,", "Hello there!", "", "Hi, hope you're well.", "Good afternoon,"]
INTENTS = {
    "cancel": ["I want to cancel my reservation", "I need to cancel a booking", "please cancel my trip",
               "I'd like to cancel one of my flights", "can you help me cancel my upcoming trip"],
    "status": ["I'd like to check my reservation", "can you tell me the details of my booking",
               "I want to review my upcoming trip", "what does my reservation look like", "I need the details of my trip"],
    "baggage": ["I want to add checked bags to my reservation", "I need to change the baggage on my booking",
                "how many bags do I have on my trip", "I'd like to add a suitcase to my flight"],
    "change": ["I want to change the flights on my reservation", "I need to move my trip to a different date",
               "can I modify my booking", "I'd like to upgrade my cabin"],
}
GIVE_BOTH = ["My user id is {u} and the reservation is {r}.", "Sure, my user ID is {u}, and the reservation ID is {r}.",
             "It's reservation {r}, user id {u}.", "User {u}, reservation {r}.", "My reservation ID is {r} and my user ID is {u}.",
             "I'm {u}; the booking is {r}.", "Sure! user id: {u}, reservation id: {r}"]
GIVE_USER = ["My user id is {u}.", "Sure, it's {u}.", "I'm {u}.", "My user ID is {u}. I don't remember the reservation ID.",
             "I don't have the reservation number with me, but my user id is {u}.", "user id {u}", "You can find me as {u}."]
GIVE_RES = ["It's {r}.", "The reservation is {r}.", "The one with ID {r}, please.", "{r}", "Reservation {r}."]
ASK_IDS = {
    "cancel": "I can help you with that. Could you please provide your user ID and the reservation ID you want to cancel?",
    "status": "Sure. Could you please provide your user ID and the reservation ID?",
    "baggage": "I can help with your baggage. Could you please share your user ID and the reservation ID?",
    "change": "I can help you modify your reservation. Could you please provide your user ID and the reservation ID?",
}
FOLLOW_UP = {
    "cancel": "To cancel it, could you tell me the reason for the cancellation (change of plan, airline cancelled flight, or other reasons)?",
    "status": "Is there anything you would like to change?",
    "baggage": "How many checked bags would you like in total, and which payment method should I use for any extra bags?",
    "change": "Which flights or cabin would you like instead? Note that basic economy flights cannot be modified.",
}
OFF_TOPIC = ["Can you write me a poem about the sea?", "What's the weather in Paris tomorrow?", "Can you recommend a hotel in Denver?",
             "Tell me a joke.", "Can you help me with my math homework?", "What's the best restaurant near JFK?"]
DECLINE = "I'm sorry, but I can only help with airline reservations: booking, modifying or cancelling flights, baggage and passenger details."
HUMAN = ["I want to talk to a human agent.", "Please transfer me to a real person.", "Can I speak with a human, please?"]
TRANSFERRED = "YOU ARE BEING TRANSFERRED TO A HUMAN AGENT. PLEASE HOLD ON."


@dataclass(slots=True)
class AirlineRecords:
    users: dict[str, Any]
    reservations: dict[str, Any]


def load_records(data_dir: str | Path | None = None) -> AirlineRecords:
    users, res = (json.loads(data_file("tau-bench-airline", f"{n}.json", override=data_dir).read_text()) for n in ("users", "reservations"))
    return AirlineRecords(users, res)


def user_split(records: AirlineRecords, data_dir: str | Path | None = None) -> dict[Split, list[str]]:
    """Users for synthetic train/eval conversations: every user named in a held-out (eval-task)
    recorded run, or owning a reservation named there, is excluded; the rest are split by hash."""
    text = json.dumps([r["traj"] for r in split_runs("eval", data_dir)])
    users = sorted(u for u, rec in records.users.items()
                   if rec["reservations"] and u not in text and not any(r in text for r in rec["reservations"]))
    ranked = sorted(users, key=lambda u: hashlib.sha256(f"user-{u}".encode()).hexdigest())
    cut = len(ranked) - max(1, len(ranked) // 10)
    return {"train": ranked[:cut], "eval": ranked[cut:]}


def _call(name: str, **arguments: Any) -> Message:
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def _tool(content: str) -> Message:
    return {"role": "tool", "content": content}


def _money(x: float) -> str:
    return f"${x:,.0f}" if float(x).is_integer() else f"${x:,.2f}"


def describe_reservation(res: dict[str, Any]) -> str:
    """A grounded one-paragraph summary of a reservation record."""
    legs = "; ".join(f"{f['flight_number']} from {f['origin']} to {f['destination']} on {f['date']}" for f in res["flights"])
    people = ", ".join(f"{p['first_name']} {p['last_name']}" for p in res["passengers"])
    trip = res["flight_type"].replace("_", " ")
    return (f"Reservation {res['reservation_id']} is a {trip} {res['cabin'].replace('_', ' ')} trip from {res['origin']} to "
            f"{res['destination']}: {legs}. Passengers: {people}. It has {res['total_baggages']} checked bags "
            f"({res['nonfree_baggages']} paid) and travel insurance is {'included' if res['insurance'] == 'yes' else 'not included'}.")


def describe_user(user: dict[str, Any], thank: bool = True) -> str:
    """A grounded reply to a user record: (thanks,) membership and reservation ids, which one?"""
    res = user["reservations"]
    thanks = f"Thank you, {user['name']['first_name']} {user['name']['last_name']}. " if thank else ""
    return (f"{thanks}I found your profile ({user['membership']} member) with {len(res)} reservation"
            f"{'s' if len(res) != 1 else ''}: {', '.join(res)}. Which reservation is this about?")


def balances(user: dict[str, Any]) -> str:
    kinds = {"gift_card": 0.0, "certificate": 0.0}
    for pm in user["payment_methods"].values():
        if pm["source"] in kinds:
            kinds[pm["source"]] += pm.get("amount", 0)
    return (f"Your gift card balance totals {_money(kinds['gift_card'])} and your certificates total "
            f"{_money(kinds['certificate'])}, so together {_money(sum(kinds.values()))}.")


class ConversationWriter:
    """Writes seeded synthetic conversations (OpenAI message lists, the system turn first).

    With probability `fresh`, a conversation's user is a copy of a real one under new ids (a new
    user id, new reservation ids): with only a few hundred real users a small model can memorise ids
    instead of learning to copy them from the conversation; unseen ids leave it only copying."""

    def __init__(self, records: AirlineRecords, users: list[str], system: str, seed: int, fresh: float = 0.6) -> None:
        self.records = AirlineRecords(dict(records.users), dict(records.reservations))  # fresh copies go in here
        self.users, self.system, self.fresh = users, system, fresh
        self.rng = random.Random(seed)
        self.names = sorted({(records.users[u]["name"]["first_name"], records.users[u]["name"]["last_name"]) for u in users})

    def _user(self) -> str:
        uid = self.rng.choice(self.users)
        if self.rng.random() >= self.fresh:
            return uid
        first, last = self.rng.choice(self.names)[0], self.rng.choice(self.names)[1]
        new_id = f"{first.lower()}_{last.lower()}_{self.rng.randrange(1000, 10000)}"
        if new_id in self.records.users:
            return uid
        user = json.loads(json.dumps(self.records.users[uid]))
        user["name"] = {"first_name": first, "last_name": last}
        user["reservations"] = []
        for rid in self.records.users[uid]["reservations"]:
            res = dict(self.records.reservations[rid], user_id=new_id)
            res["reservation_id"] = "".join(self.rng.choice(string.ascii_uppercase + string.digits) for _ in range(6))
            self.records.reservations[res["reservation_id"]] = res
            user["reservations"].append(res["reservation_id"])
        self.records.users[new_id] = user
        return new_id

    def _opening(self, intent: str) -> str:
        text = self.rng.choice(INTENTS[intent])
        greeting = self.rng.choice(GREETINGS)
        return f"{greeting} {text[0].upper()}{text[1:]}.".strip()

    def _lookup_reservation(self, rid: str, intent: str) -> list[Message]:
        res = self.records.reservations[rid]
        return [_call("get_reservation_details", reservation_id=rid), _tool(json.dumps(res)),
                {"role": "assistant", "content": f"{describe_reservation(res)} {FOLLOW_UP[intent]}"}]

    def reservation_conversation(self) -> list[Message]:
        """The user names a reservation (at once or when asked): get_reservation_details with its id."""
        uid = self._user()
        rid = self.rng.choice(self.records.users[uid]["reservations"])
        intent = self.rng.choice(sorted(INTENTS))
        ids = self.rng.choice(GIVE_BOTH).format(u=uid, r=rid)
        if self.rng.random() < 0.4:
            turns = [{"role": "user", "content": f"{self._opening(intent)} {ids}"}]
        else:
            turns = [{"role": "user", "content": self._opening(intent)}, {"role": "assistant", "content": ASK_IDS[intent]},
                     {"role": "user", "content": ids}]
        return turns + self._lookup_reservation(rid, intent)

    def user_conversation(self) -> list[Message]:
        """Only the user id: get_user_details, then the reservation the user picks."""
        uid = self._user()
        user = self.records.users[uid]
        intent = self.rng.choice(sorted(INTENTS))
        turns: list[Message] = [{"role": "user", "content": self._opening(intent)}, {"role": "assistant", "content": ASK_IDS[intent]},
                                {"role": "user", "content": self.rng.choice(GIVE_USER).format(u=uid)},
                                _call("get_user_details", user_id=uid), _tool(json.dumps(user))]
        if self.rng.random() < 0.3:
            return turns + [{"role": "assistant", "content": f"{balances(user)} {describe_user(user, thank=False)}"}]
        rid = self.rng.choice(user["reservations"])
        turns += [{"role": "assistant", "content": describe_user(user)}, {"role": "user", "content": self.rng.choice(GIVE_RES).format(r=rid)}]
        return turns + self._lookup_reservation(rid, intent)

    def other_conversation(self) -> list[Message]:
        """Off-topic (declined), a human asked for (transfer), or a mistyped user id (not found)."""
        kind = self.rng.random()
        if kind < 0.35:
            return [{"role": "user", "content": self.rng.choice(OFF_TOPIC)}, {"role": "assistant", "content": DECLINE}]
        if kind < 0.6:
            ask = self.rng.choice(HUMAN)
            return [{"role": "user", "content": ask},
                    _call("transfer_to_human_agents", summary=f"The user asked to speak with a human agent: {ask}"),
                    _tool("Transfer successful"), {"role": "assistant", "content": TRANSFERRED}]
        uid = self.rng.choice(self.users)
        typo = uid[:-1] + str((int(uid[-1]) + 1) % 10)
        if typo in self.records.users:
            return self.reservation_conversation()
        return [{"role": "user", "content": f"{self._opening('status')} {self.rng.choice(GIVE_USER).format(u=typo)}"},
                _call("get_user_details", user_id=typo), _tool("Error: user not found"),
                {"role": "assistant", "content": f"I could not find a user with the ID {typo}. Could you please double-check your user ID?"}]

    def conversation(self) -> list[Message]:
        pick = self.rng.random()
        body = (self.reservation_conversation() if pick < 0.45 else self.user_conversation() if pick < 0.85
                else self.other_conversation())
        return [{"role": "system", "content": self.system}, *body]


@functools.cache
def _records_and_users(data_dir: str | Path | None) -> tuple[AirlineRecords, dict[Split, list[str]]]:
    records = load_records(data_dir)
    return records, user_split(records, data_dir)


def synthetic_conversations(n: int, split: Split, system: str, seed: int = 0, data_dir: str | Path | None = None,
                            fresh: float = 0.6) -> list[list[Message]]:
    """`n` synthetic conversations over the users of `split` (see `user_split`); `fresh`: the
    fraction whose user is a real one's copy under new ids (see `ConversationWriter`)."""
    records, users = _records_and_users(data_dir)
    writer = ConversationWriter(records, users[split], system, seed, fresh)
    return [writer.conversation() for _ in range(n)]


def first_tool_call(conv: list[Message]) -> tuple[list[Message], str, dict[str, Any]] | None:
    """(conversation before the first tool call, tool name, arguments), or None without one."""
    for i, m in enumerate(conv):
        if m["role"] == "assistant" and m.get("tool_calls"):
            fn = m["tool_calls"][0]["function"]
            args = fn["arguments"]
            return conv[:i], fn["name"], json.loads(args) if isinstance(args, str) else args
    return None
