"""Short schema-following examples: pull named fields out of one sentence as JSON.

`ctx.generate("Extract the person from: Alice is 31.", schema=Person)` constrains the output to the
schema's grammar, but the values are the model's: it must copy "Alice" and 31 from the sentence.
These seeded examples teach that (the fields in the order the schema declares them, JSON as the
engine's grammar writes it). Names and sentence templates are split into train and eval by a hash,
so the held-out figure in docs/model.md is on names and wordings the model never saw.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import dataclass
from typing import Any

from engine.train.data import Split

FIRST_NAMES = [
    "Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kavya", "Leon", "Maya", "Nikolai",
    "Olga", "Pedro", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wes", "Ximena", "Yusuf", "Zoe", "Amara", "Boris", "Carmen",
    "Diego", "Emil", "Fatima", "Gustav", "Hana", "Ivo", "Jade", "Kofi", "Lena", "Mateo", "Nadia", "Oscar", "Priya", "Rafael",
    "Sven", "Tomas", "Uma", "Viktor", "Wanda", "Yara", "Zane", "Anika", "Bilal", "Clara", "Dario", "Esme", "Felix", "Gemma",
    "Hugo", "Ingrid", "Javier", "Keiko", "Lucia", "Marco", "Nora", "Otto", "Paula", "Ravi", "Sofia", "Theo", "Ursula", "Valentin",
]
CITIES = ["Boston", "Denver", "Seattle", "Chicago", "Miami", "Houston", "Phoenix", "Atlanta", "Dallas", "Detroit", "Orlando",
          "Newark", "Charlotte", "Philadelphia", "Minneapolis", "Las Vegas", "New York", "San Francisco", "Los Angeles"]

PERSON = ["{name} is {age}.", "{name} is {age} years old.", "My friend {name} turned {age} last month.", "Meet {name}, aged {age}.",
          "{name}, {age}, lives next door.", "The passenger is {name} and she is {age}.", "I am {name} and I am {age} years old.",
          "{name} just celebrated turning {age}.", "Our new colleague {name} is {age}.", "At {age}, {name} is the youngest in the team."]
BOOKING = ["I am {user_id}, booking {reservation_id} for {passengers} people.", "Reservation {reservation_id} under {user_id}, {passengers} travellers.",
           "User {user_id} wants {passengers} seats on booking {reservation_id}.", "Please note {passengers} passengers on {reservation_id} (account {user_id}).",
           "My id is {user_id}; the reservation {reservation_id} has {passengers} passengers.", "{user_id} here, {reservation_id}, party of {passengers}."]
TRIP = ["I fly from {origin} to {destination}.", "We are travelling from {origin} to {destination} next week.",
        "My trip goes {origin} to {destination}.", "Book me a flight out of {origin} into {destination}.",
        "Leaving {origin}, arriving in {destination}.", "I need to get from {origin} to {destination} on Friday."]
ASK = {"person": ["Extract the person from: {s}", "Extract the name and age from: {s}", "Who is described, and how old? {s}"],
       "booking": ["Extract the booking from: {s}", "Extract the booking details from: {s}"],
       "trip": ["Extract the trip from: {s}", "Extract origin and destination from: {s}"]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]},
    "booking": {"type": "object", "properties": {"user_id": {"type": "string"}, "reservation_id": {"type": "string"},
                                                 "passengers": {"type": "integer"}}, "required": ["user_id", "reservation_id", "passengers"]},
    "trip": {"type": "object", "properties": {"origin": {"type": "string"}, "destination": {"type": "string"}}, "required": ["origin", "destination"]},
}


def _in_split(item: str, split: Split) -> bool:
    """Every 5th item by hash is eval."""
    return (int(hashlib.sha256(f"extract-{item}".encode()).hexdigest(), 16) % 5 == 0) == (split == "eval")


@dataclass(slots=True, frozen=True)
class Extraction:
    kind: str
    prompt: str  # the user's message
    answer: dict[str, Any]  # the fields, in the schema's order

    @property
    def schema(self) -> dict[str, Any]:
        return SCHEMAS[self.kind]

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": json.dumps(self.answer)}]


SYLLABLES = ["ka", "lo", "mi", "ren", "zo", "ta", "vi", "shu", "dar", "el", "qua", "bri", "nox", "ul", "fe", "gor", "ith", "pa", "wen", "yu"]


def invented_name(rng: random.Random) -> str:
    """A name from random syllables: too many to memorise, so the model must copy it."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randrange(2, 4))).capitalize()


def _user_id(rng: random.Random, name: str) -> str:
    return f"{name.lower()}_{rng.choice(FIRST_NAMES).lower()}_{rng.randrange(1000, 10000)}"


def _reservation_id(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(6))


def extraction_examples(n: int, split: Split, seed: int = 0, invented: float = 0.0) -> list[Extraction]:
    """`n` seeded examples; names, cities and sentence templates are those of `split`. With
    probability `invented` a person's name is invented (`invented_name`) instead (training only)."""
    rng = random.Random(seed)
    names = [x for x in FIRST_NAMES if _in_split(x, split)]
    cities = [x for x in CITIES if _in_split(x, split)]
    # every third template is held out (eval), so both splits have wordings of every kind
    templates = {k: [t for i, t in enumerate(v) if (i % 3 == 2) == (split == "eval")] for k, v in {"person": PERSON, "booking": BOOKING, "trip": TRIP}.items()}
    out = []
    for _ in range(n):
        kind = rng.choice(("person", "person", "booking", "trip"))
        if kind == "person":
            name = invented_name(rng) if rng.random() < invented else rng.choice(names)
            answer: dict[str, Any] = {"name": name, "age": rng.randrange(18, 90)}
        elif kind == "booking":
            answer = {"user_id": _user_id(rng, rng.choice(names)), "reservation_id": _reservation_id(rng), "passengers": rng.randrange(1, 7)}
        else:
            origin, destination = rng.sample(cities, 2)
            answer = {"origin": origin, "destination": destination}
        sentence = rng.choice(templates[kind]).format(**answer)
        out.append(Extraction(kind, rng.choice(ASK[kind]).format(s=sentence), answer))
    return out
